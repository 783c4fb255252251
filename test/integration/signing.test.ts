/**
 * Message authentication (issue #16, item 2), against real Redis.
 *
 * The forger is a real ACL user that may only PUBLISH/SPUBLISH (no key rights). It publishes
 * forged frames (values, deletes, empty frames with sequence gaps, a far-future stamp) and genuine
 * frames captured on another tenant's channel or replayed on their own. A signed fleet must apply
 * none of the forgeries (counting each), stay coherent, and be unchanged by replays (I4).
 *
 * "Nothing arrived" is observed without sleeping: after the forged frames, a genuine writer of the
 * fleet writes a marker of the same hash slot; once a receiver has the marker's event, every frame
 * published before it has been handled (one connection, published in order).
 */
import { randomBytes } from 'node:crypto';
import { type ClusterOptions, Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PubSubCacheManager } from '../../src/cache/cache-manager.js';
import { InvalidArgumentError } from '../../src/errors.js';
import { encodeEntry, encodeHeader, type MalformedMessageError, type MessageType } from '../../src/protocol/messages.js';
import { PubSubRedisDict, type PubSubRedisDictOptions } from '../../src/store/pubsub-redis-dict.js';
import { FrameSigner, TAG_BYTES } from '../../src/protocol/signing.js';
import { formatStamp, parseStamp, type Stamp } from '../../src/protocol/stamp.js';
import { slotOf } from '../../src/store/topology.js';
import { WriteBackCacheManager } from '../../src/write-back/manager.js';
import { clusterClient, hasCluster, pollUntil, redisEndpoints, standaloneClient, uniqueNamespace, withClients } from '../helpers/connections.js';
import { markerSeen } from '../helpers/events.js';
import { type PubSubCacheManagerOptions } from '../../src/cache/types.js';

const KEY1 = 'k1-0123456789abcdef0123456789abcdef';
const KEY2 = 'k2-fedcba9876543210fedcba9876543210';
const KEY3 = Buffer.alloc(32, 7);

const fakeOrigin = (): string => randomBytes(8).toString('hex');

function frame(type: MessageType, origin: string, seq: number, group: number, entries: [string, Stamp, Uint8Array?][], signed = false): Buffer {
  return Buffer.concat([
    encodeHeader(type, origin, seq, group, signed),
    Buffer.from([0x90 + entries.length]),
    ...entries.map(([key, stamp, payload]) => encodeEntry(key, stamp, payload)),
  ]);
}

describe('signed messages (standalone)', () => {
  const clients = withClients();
  const managers: PubSubCacheManager<unknown>[] = [];
  const user = `forger-${randomBytes(4).toString('hex')}`;
  let admin: Redis;
  let forger: Redis;

  beforeAll(async () => {
    admin = new Redis(redisEndpoints().standalone.url);
    await admin.call('ACL', 'SETUSER', user, 'on', '>pw', 'resetkeys', '&*', '-@all', '+publish', '+spublish');
    forger = new Redis(redisEndpoints().standalone.url, { username: user, password: 'pw' });
    // The forger really has no key rights.
    await expect(forger.get('anything')).rejects.toThrow(/NOPERM/);
  });
  afterAll(async () => {
    forger.disconnect();
    await admin.call('ACL', 'DELUSER', user);
    admin.disconnect();
  });
  afterEach(async () => {
    await Promise.all(managers.splice(0).map((m) => m.close()));
    await clients.closeAll();
  });

  const storeOf = <V>(ns: string, opts: PubSubRedisDictOptions<V> = {}): PubSubRedisDict<V> => new PubSubRedisDict<V>(clients.track(standaloneClient()), ns, opts);
  async function managed<M extends PubSubCacheManager<string>>(m: M): Promise<M> {
    managers.push(m as unknown as PubSubCacheManager<unknown>);
    await m.ready();
    return m;
  }
  const cacheOf = (
    ns: string,
    keys: readonly (string | Uint8Array)[] | undefined,
    opts: PubSubCacheManagerOptions = {},
    storeOpts: PubSubRedisDictOptions<string> = {},
  ): Promise<PubSubCacheManager<string>> => managed(new PubSubCacheManager<string>(storeOf<string>(ns, { ...storeOpts, ...(keys ? { signingKeys: keys } : {}) }), opts));

  /** Writes a marker through `writer` and waits until `m` has its event. */
  const marker = (writer: PubSubCacheManager<string>, m: PubSubCacheManager<string>): Promise<void> => markerSeen(writer, m, 'marker');

  /** Every frame published on `channels` from now on. */
  async function capture(channels: string[]): Promise<{ frames: [string, Buffer][]; close: () => void }> {
    const sub = clients.track(standaloneClient());
    const frames: [string, Buffer][] = [];
    sub.on('messageBuffer', (channel: Buffer, message: Buffer) => frames.push([channel.toString(), message]));
    await sub.subscribe(...channels);
    return { frames, close: () => sub.disconnect() };
  }

  it('signingKeys is validated and never echoed', () => {
    const client = clients.track(standaloneClient({ lazyConnect: true }));
    for (const bad of [[], ['short-secret'], [Buffer.alloc(31)], [42], 'x'.repeat(40), Array(9).fill(KEY1)]) {
      let error: unknown;
      try {
        new PubSubRedisDict(client, 'ns', { signingKeys: bad as string[] });
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(InvalidArgumentError);
      expect((error as InvalidArgumentError).code).toBe('E_INVALID_OPTION');
      expect((error as Error).message).not.toContain('short-secret');
    }
    expect(() => new PubSubRedisDict(client, 'ns', { signingKeys: [KEY1, KEY3] })).not.toThrow();
  });

  it('forged values, deletes, gaps and a far-future stamp change nothing and are counted', async () => {
    const ns = uniqueNamespace('sign-forge');
    const [a, b] = await Promise.all([cacheOf(ns, [KEY1], { sync: 'update' }), cacheOf(ns, [KEY1], { sync: 'update' })]);
    await a.set('alice', 'a0');
    await b.set('bob', 'b0');
    expect(await b.get('alice')).toBe('a0');
    expect(await a.get('bob')).toBe('b0');
    const reasons: string[] = [];
    a.on('malformed', (error: MalformedMessageError) => reasons.push(error.reason));
    const { update, delete: del } = a.store.channels();
    const origin = fakeOrigin();
    const far = formatStamp(Date.now() + 23 * 3600_000, 0, origin);
    const soon = formatStamp(Date.now() + 1000, 0, origin);
    const payload = a.store.codec.encode('forged');
    const sent: [string, Buffer][] = [
      [update, frame('u', origin, 1, 0, [['alice', soon, payload]])],
      [update, frame('u', origin, 2, 0, [['alice', far, payload]])],
      [del, frame('d', origin, 3, 0, [['bob', soon]])],
      [update, frame('u', origin, 10, 0, [])],
      [update, frame('u', origin, 20, 0, [])],
      // Claims to be signed, with a tag made with another key.
      [update, Buffer.concat([frame('u', origin, 30, 0, [['alice', soon, payload]], true), forgedTag(update, frame('u', origin, 30, 0, [['alice', soon, payload]], true))])],
      // A well-formed signed frame with a garbage MAC.
      [update, Buffer.concat([frame('u', origin, 31, 0, [['alice', soon, payload]], true), Buffer.from([0xc4, 21, 0x61]), Buffer.alloc(20)])],
    ];
    for (const [channel, bytes] of sent) expect(await forger.publish(channel, bytes)).toBeGreaterThan(0);
    await marker(b, a);

    expect(a.stats().unverified).toBe(sent.length);
    expect(reasons).toHaveLength(sent.length);
    expect(new Set(reasons)).toEqual(new Set(['unsigned message (signing keys are configured)', 'signed with an unknown key']));
    expect(a.cache.peek('alice')?.value).toBe('a0');
    expect(a.cache.peek('bob')?.value).toBe('b0');
    expect(await a.get('alice')).toBe('a0');
    expect(a.stats().resyncs).toBe(0);
    expect(a.isServing).toBe(true);
    // The clock did not move to the forged stamp.
    expect(parseStamp(a.store.clock.now()).ms).toBeLessThan(Date.now() + 3600_000);
  });

  it('a genuine frame replayed on another tenant does not verify; replayed on its own it changes nothing (I4)', async () => {
    const nsX = uniqueNamespace('sign-x');
    const nsY = uniqueNamespace('sign-y');
    const x = await cacheOf(nsX, [KEY1], { sync: 'update' });
    const [y1, y2] = await Promise.all([cacheOf(nsY, [KEY1], { sync: 'update' }), cacheOf(nsY, [KEY1], { sync: 'update' })]);
    const wb = await managed(new WriteBackCacheManager<string>(storeOf<string>(nsY, { signingKeys: [KEY1] }), { flushIntervalMs: 0, conflictPolicy: 'discard-on-remote-update', sync: 'update' }));
    await y2.set('alice', 'y0');
    expect(await y1.get('alice')).toBe('y0');
    // Capture genuine frames of tenant X (same keys, same signing key) and of tenant Y.
    const capX = await capture([x.store.channels().update, x.store.channels().delete]);
    const capY = await capture([y1.store.channels().update]);
    await x.set('alice', 'x-later');
    await x.delete('bob');
    await y2.set('alice', 'y1');
    await pollUntil(() => capX.frames.length === 2 && capY.frames.length === 1, { timeoutMs: 10_000 });
    await y2.set('alice', 'y2');
    await pollUntil(() => y1.cache.peek('alice')?.value === 'y2', { timeoutMs: 10_000 });
    // A pending write-back change of tenant Y.
    await wb.set('bob', 'pending');
    const conflicts: unknown[] = [];
    wb.on('conflict', (c) => conflicts.push(c));
    const before = y1.stats();

    for (const [channel, bytes] of capX.frames) {
      const kind = channel.endsWith('/delete') ? 'delete' : 'update';
      await forger.publish(y1.store.channels()[kind], bytes);
    }
    // A replay of Y's own genuine (older) frame, on its own channel.
    await forger.publish(capY.frames[0]![0], capY.frames[0]![1]);
    await marker(y2, y1);
    await marker(y2, wb);

    const after = y1.stats();
    expect(after.unverified - before.unverified).toBe(2);
    expect(y1.cache.peek('alice')?.value).toBe('y2');
    expect(await y1.get('alice')).toBe('y2');
    expect(after.resyncs).toBe(before.resyncs);
    expect(conflicts).toEqual([]);
    const report = await wb.flush();
    expect(report.written).toEqual(['bob']);
    expect(await y1.store.get('bob')).toBe('pending');
  });

  it('a signed fleet of three stays coherent (invalidate, update, write-back), partly refused batches included', async () => {
    const ns = uniqueNamespace('sign-fleet');
    const inv = await cacheOf(ns, [KEY1]);
    // upd's clock runs ahead: its write to 'b' is newer than wb's change whatever the millisecond.
    const upd = await cacheOf(ns, [KEY1], { sync: 'update' }, { clock: () => Date.now() + 60_000 });
    const wb = await managed(new WriteBackCacheManager<string>(storeOf<string>(ns, { signingKeys: [KEY1] }), { flushIntervalMs: 0, conflictPolicy: 'discard-on-remote-update', sync: 'update' }));
    for (const m of [inv, upd, wb]) for (const k of ['a', 'b', 'c']) expect(await m.get(k)).toBeUndefined();
    await inv.setMany([
      ['a', 'a1'],
      ['b', 'b1'],
    ]);
    await pollUntil(async () => (await upd.get('a')) === 'a1' && (await wb.get('b')) === 'b1', { timeoutMs: 10_000 });
    for (const m of [inv, wb]) expect(await m.get('a')).toBe('a1');
    // A value published by an update-mode writer is installed by update-mode peers, dropped by the others.
    const updates: string[] = [];
    wb.on('update', (key: string) => updates.push(key));
    await upd.set('a', 'a2');
    await pollUntil(() => updates.includes('a') && !inv.cache.has('a'), { timeoutMs: 10_000 });
    expect(wb.cache.peek('a')?.value).toBe('a2');

    // Write-back: a local change to 'b' (dirty since before inv's next write), and one to 'c'.
    await wb.set('b', 'wb-b');
    await wb.set('c', 'wb-c');
    const conflicts: { key: string; outcome: string }[] = [];
    wb.on('conflict', (c) => conflicts.push({ key: c.key, outcome: c.outcome }));
    await upd.set('b', 'upd-b');
    // A signed message decides the conflict at once (discard-on-remote-update).
    await pollUntil(() => conflicts.length === 1, { timeoutMs: 10_000 });
    expect(conflicts[0]).toEqual({ key: 'b', outcome: 'remote' });

    await wb.set('d', 'wb-d');
    expect(await upd.get('c')).toBeUndefined();
    expect(await upd.get('d')).toBeUndefined();
    const report = await wb.flush();
    expect(report.written.sort()).toEqual(['c', 'd']);
    await pollUntil(async () => (await upd.get('c')) === 'wb-c' && (await inv.get('d')) === 'wb-d', { timeoutMs: 10_000 });
    for (const m of [inv, upd, wb]) {
      expect(await m.get('a')).toBe('a2');
      expect(await m.get('b')).toBe('upd-b');
      expect(m.stats().unverified).toBe(0);
      expect(m.stats().malformed).toBe(0);
    }
  });

  it('a batch with a refused change is published whole, flagged partial; receivers only drop', async () => {
    const ns = uniqueNamespace('sign-partial');
    const writer = storeOf<string>(ns, { signingKeys: [KEY1], publishValues: true });
    const upd = await cacheOf(ns, [KEY1], { sync: 'update' });
    await writer.set('x', 'x1');
    await writer.set('y', 'y1');
    expect(await upd.get('x')).toBe('x1');
    expect(await upd.get('y')).toBe('y1');
    const cap = await capture([writer.channels().update]);
    const stored = await writer.readVersioned(['x']);
    // 'x' is refused (its stamp is older than the stored one), 'y' is written.
    const old = formatStamp(parseStamp(stored[0]!.stamp).ms - 1000, 0, writer.clock.nodeId);
    const outcomes = await writer.writeVersioned([
      { key: 'x', stamp: old, deleted: false, value: 'stale' },
      { key: 'y', stamp: writer.clock.now(), deleted: false, value: 'y2' },
    ]);
    expect(outcomes.map((o) => o.status)).toEqual(['conflict', 'written']);
    await pollUntil(() => cap.frames.length === 1, { timeoutMs: 10_000 });
    const bytes = cap.frames[0]![1];
    expect(bytes[bytes.length - TAG_BYTES + 2]).toBe(0x70); // 'p'
    await pollUntil(() => !upd.cache.has('y'), { timeoutMs: 10_000 });
    expect(upd.cache.has('x')).toBe(false);
    expect(await upd.get('x')).toBe('x1');
    expect(await upd.get('y')).toBe('y2');
    expect(upd.stats().unverified).toBe(0);
  });

  it('rotation: restarted one by one with [old, new], [new, old], then [new]; no genuine message is refused', async () => {
    const ns = uniqueNamespace('sign-rotate');
    const fleet = await Promise.all([0, 1, 2].map(() => cacheOf(ns, [KEY1])));
    const refused: number[] = [];
    let round = 0;
    // Every instance writes once; every other one must have applied the event (dropped its entry).
    const check = async (): Promise<void> => {
      round++;
      for (const [i, writer] of fleet.entries()) {
        for (const m of fleet) expect(await m.get('k')).toBeDefined();
        const value = `r${round}-${i}`;
        await writer.set('k', value);
        for (const m of fleet) if (m !== writer) await pollUntil(() => m.cache.peek('k') === undefined, { timeoutMs: 10_000 });
        for (const m of fleet) expect(await m.get('k')).toBe(value);
      }
      refused.push(...fleet.map((m) => m.stats().unverified + m.stats().malformed));
    };
    await fleet[0]!.set('k', 'start');
    await check();
    for (const keys of [[KEY1, KEY2], [KEY2, KEY1], [KEY2]]) {
      for (let i = 0; i < fleet.length; i++) {
        await fleet[i]!.close();
        fleet[i] = await cacheOf(ns, keys);
        await check();
      }
    }
    expect(refused).toHaveLength(10 * 3);
    expect(refused.every((n) => n === 0)).toBe(true);
  });

  it('a flood of gaps makes one resync at once and one when the interval ends (unsigned)', async () => {
    const ns = uniqueNamespace('sign-gaps');
    const intervalMs = 5000;
    const [m, writer] = await Promise.all([cacheOf(ns, undefined, { gapResyncIntervalMs: intervalMs }), cacheOf(ns, undefined)]);
    await writer.set('k', 'v');
    expect(await m.get('k')).toBe('v');
    const resyncs: string[] = [];
    m.on('resync', (info) => resyncs.push(info.reason));
    const origin = fakeOrigin();
    const { update } = m.store.channels();
    const flood = 200;
    const pipeline = forger.pipeline();
    for (let i = 0; i < flood; i++) pipeline.publish(update, frame('u', origin, 1 + 2 * i, 0, []));
    await pipeline.exec();
    // The marker is published after the flood: once it is in, every gap was noticed.
    // (The cache does not serve, hence caches nothing, until the deferred resync: count events.)
    const received = m.stats().eventsReceived;
    await writer.set('marker', 'x');
    await pollUntil(() => m.stats().eventsReceived === received + 1, { timeoutMs: 10_000 });
    // 199 gaps: one resync at once, the others deferred; not served until the deferred resync.
    expect(m.stats().gapResyncsDeferred).toBe(flood - 2);
    expect(m.stats().resyncs).toBe(1);
    expect(m.isServing).toBe(false);
    await pollUntil(() => m.stats().resyncs === 2 && m.isServing, { timeoutMs: 30_000 });
    // The deferred resync covers every gap of the flood (the first one's event was superseded).
    expect(resyncs).toEqual(['sequence-gap']);
    expect(m.stats().resyncs).toBe(2);
    expect(await m.get('k')).toBe('v');
    expect(m.cache.peek('k')?.value).toBe('v');
  });

  it('with signing keys, forged gaps are refused: no resync at all', async () => {
    const ns = uniqueNamespace('sign-gaps-signed');
    const [m, writer] = await Promise.all([cacheOf(ns, [KEY1]), cacheOf(ns, [KEY1])]);
    const origin = fakeOrigin();
    for (let i = 0; i < 50; i++) await forger.publish(m.store.channels().update, frame('u', origin, 1 + 2 * i, 0, []));
    await marker(writer, m);
    expect(m.stats().resyncs).toBe(0);
    expect(m.stats().unverified).toBe(50);
    expect(m.isServing).toBe(true);
  });
});

describe.runIf(hasCluster())('signed messages (cluster, sharded)', () => {
  const clients = withClients();
  const managers: PubSubCacheManager<unknown>[] = [];
  afterEach(async () => {
    await Promise.all(managers.splice(0).map((m) => m.close()));
    await clients.closeAll();
  });

  it('a signed sharded fleet exchanges values and verifies its heartbeat probes', async () => {
    const ns = uniqueNamespace('sign-sharded');
    const ms = [0, 1].map(() => {
      const m = new PubSubCacheManager<string>(new PubSubRedisDict<string>(clients.track(clusterClient()), ns, { shardedPubSub: true, signingKeys: [KEY1] }), {
        sync: 'update',
      });
      managers.push(m as PubSubCacheManager<unknown>);
      return m;
    });
    await Promise.all(ms.map((m) => m.ready()));
    const [a, b] = ms as [PubSubCacheManager<string>, PubSubCacheManager<string>];
    await pollUntil(() => a.isServing && b.isServing, { timeoutMs: 60_000 });
    await b.set('{t}k', 'v1');
    expect(await a.get('{t}k')).toBe('v1');
    await b.set('{t}k', 'v2');
    // Applied (installed, or dropped if a heartbeat hiccup stopped serving meanwhile), not refused.
    await pollUntil(() => a.cache.peek('{t}k')?.value !== 'v1', { timeoutMs: 30_000 });
    expect(await a.get('{t}k')).toBe('v2');
    expect(slotOf(a.store.channels(slotOf(a.store.redisKey('{t}k'))).update)).toBe(slotOf(a.store.redisKey('{t}k')));
    // Heartbeat probes (sent through every shard each heartbeat) are signed: catch one on the
    // channel of slot 0 and verify it with the fleet's key.
    const raw = clients.track(clusterClient({ shardedSubscribers: true } as ClusterOptions));
    const probe = new Promise<[Buffer, Buffer]>((resolve) => raw.on('smessageBuffer', (channel: Buffer, message: Buffer) => message[21] === 0xcf && resolve([channel, message])));
    await raw.ssubscribe(a.store.channels(0).update);
    const [channel, bytes] = await probe;
    expect(FrameSigner.fromOption('test', [KEY1])!.verify(channel, bytes)).toEqual({ partial: false });
    await pollUntil(() => a.isServing && b.isServing, { timeoutMs: 10_000 });
    for (const m of ms) expect(m.stats().unverified).toBe(0);
  }, 180_000);
});

/** A tag for `bytes` on `channel`, made with a key the fleet does not have. */
function forgedTag(channel: string, bytes: Buffer): Buffer {
  const other = FrameSigner.fromOption('test', [Buffer.alloc(32, 9)])!;
  return other.tags(Buffer.from(channel), [bytes]).subarray(0, TAG_BYTES);
}
