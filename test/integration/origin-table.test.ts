/**
 * The subscriber's per-writer sequence table is bounded (issue #13 item 6): frames from 100,000
 * distinct writer origins, built with the wire encoders and published on the namespace's channel
 * of the shared standalone server, leave at most 2 x ORIGIN_TABLE_LIMIT entries (counted through
 * `stats().trackedOrigins`, never by memory or time). A forgotten origin that sends again (its
 * number is not 1) is treated like a first-seen one: no false gap, and its change still applies;
 * a real gap of a tracked origin is still detected.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { PubSubCacheManager } from '../../src/cache/cache-manager.js';
import { encodeEntry, encodeHeader } from '../../src/protocol/messages.js';
import { PubSubRedisDict } from '../../src/store/pubsub-redis-dict.js';
import { formatStamp } from '../../src/protocol/stamp.js';
import { ORIGIN_TABLE_LIMIT, type ResyncReason, Subscriber } from '../../src/cache/subscriber.js';
import { pollUntil, standaloneClient, uniqueNamespace, withClients } from '../helpers/connections.js';
import { channelNames } from '../../src/protocol/channels.js';

describe('bounded per-origin sequence table', () => {
  const clients = withClients({ closeAfter: 'each' });
  const managers: PubSubCacheManager<unknown>[] = [];

  afterEach(async () => {
    await Promise.all(managers.splice(0).map((m) => m.close()));
  });

  /** Writer id number `i`: 16 hex characters, never a real instance's random id in practice. */
  const originOf = (i: number): string => `f${i.toString(16).padStart(15, '0')}`;

  /** An update frame from `origin` with sequence number `seq` and one entry for `key`. */
  function frame(origin: string, seq: number, key: string): Buffer {
    const stamp = formatStamp(Date.now(), 0, origin);
    return Buffer.concat([encodeHeader('u', origin, seq, 0), Buffer.from([0x91]), encodeEntry(key, stamp)]);
  }

  it('100,000 writer origins leave a bounded table; a forgotten origin is no gap, a tracked one still is', { timeout: 120_000 }, async () => {
    const ns = uniqueNamespace('origins');
    const redis = clients.track(standaloneClient());
    const publisher = clients.track(standaloneClient());
    // 100k frames take seconds to decode on a loaded machine, and the heartbeat's PONG queues behind
    // them: a generous timeout keeps that from counting as a silent partition (which would resync).
    const m = new PubSubCacheManager<unknown>(new PubSubRedisDict<unknown>(redis, ns), { heartbeatTimeoutMs: 60_000 });
    managers.push(m);
    await m.ready();
    const channel = channelNames({ namespace: ns }).update;
    const origins = 100_000;

    let maxTracked = 0;
    for (let start = 0; start < origins; start += 5_000) {
      const pipeline = publisher.pipeline();
      for (let i = start; i < Math.min(origins, start + 5_000); i++) pipeline.publish(channel, frame(originOf(i), 1, 'bulk'));
      await pipeline.exec();
      maxTracked = Math.max(maxTracked, m.stats().trackedOrigins);
    }
    // Frames from one connection arrive in order: all of them are in once the count is complete.
    await pollUntil(() => m.stats().eventsReceived === origins, { timeoutMs: 60_000, message: 'not every frame arrived' });
    maxTracked = Math.max(maxTracked, m.stats().trackedOrigins);
    expect(maxTracked).toBeLessThanOrEqual(2 * ORIGIN_TABLE_LIMIT);
    expect(m.stats().trackedOrigins).toBeGreaterThan(0);
    expect(m.stats().resyncs).toBe(0);

    // The first origin was crowded out. It sends again (seq 2): a first-seen origin, no gap, and its
    // change applies (the cached entry it makes stale is dropped).
    await m.set('x', 'cached');
    expect(m.cache.has('x')).toBe(true);
    const invalidated = new Promise<void>((resolve) => m.on('invalidate', (key) => key === 'x' && resolve()));
    await publisher.publish(channel, frame(originOf(0), 2, 'x'));
    await invalidated;
    expect(m.cache.has('x')).toBe(false);
    // A later frame (same connection, so after it) proves the check ran: still no resync.
    await publisher.publish(channel, frame(originOf(origins - 1), 2, 'bulk'));
    await pollUntil(() => m.stats().eventsReceived === origins + 2, { message: 'the frames did not arrive' });
    expect(m.stats().resyncs).toBe(0);

    // A tracked origin that skips a number is still a gap: the cache resyncs.
    const resynced = new Promise<string>((resolve) => m.once('resync', (info) => resolve(info.reason)));
    await publisher.publish(channel, frame(originOf(origins - 1), 4, 'bulk'));
    expect(await resynced).toBe('sequence-gap');
  });

  it('an origin idle for the aging period is forgotten; its next number (not 1) is no gap', async () => {
    const ns = uniqueNamespace('origins-idle');
    const redis = clients.track(standaloneClient());
    const publisher = clients.track(standaloneClient());
    const ups: (ResyncReason | 'initial')[] = [];
    let received = 0;
    const subscriber = new Subscriber(
      redis,
      {
        origin: '0123456789abcdef',
        channels: () => channelNames({ namespace: ns }),
        commandKeyPrefix: '',
        signer: undefined,
        sharded: false,
        heartbeatIntervalMs: 20,
        heartbeatTimeoutMs: 10_000,
        maxMessageBytes: 1 << 20,
        maxValueBytes: 1 << 20,
        maxEntries: 1000,
        originIdleMs: 50,
      },
      {
        onMessage: () => received++,
        onMalformed: () => {},
        onDown: () => {},
        onUp: (reason) => ups.push(reason),
        onError: () => {},
      },
    );
    subscriber.start();
    try {
      await subscriber.whenLive();
      const channel = channelNames({ namespace: ns }).update;
      await publisher.publish(channel, frame(originOf(1), 1, 'k'));
      await pollUntil(() => received === 1 && subscriber.trackedOrigins === 1, { message: 'the frame did not arrive' });
      // Two aging periods later the idle origin is gone.
      await pollUntil(() => subscriber.trackedOrigins === 0, { message: 'the idle origin was never forgotten' });
      await publisher.publish(channel, frame(originOf(1), 5, 'k'));
      await publisher.publish(channel, frame(originOf(1), 6, 'k'));
      await pollUntil(() => received === 3, { message: 'the frames did not arrive' });
      expect(ups).toEqual(['initial']);
      // Tracked again from 5: skipping 7 is a gap.
      await publisher.publish(channel, frame(originOf(1), 8, 'k'));
      await pollUntil(() => ups.length === 2, { message: 'the gap was not detected' });
      expect(ups).toEqual(['initial', 'sequence-gap']);
    } finally {
      await subscriber.close();
    }
  });
});
