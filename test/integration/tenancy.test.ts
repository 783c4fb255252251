/**
 * Tenants share nothing (issue #16, item 1): two services with the same namespace on one Redis,
 * scoped apart by the database index, by the client's `keyPrefix` (standalone, and a Cluster with
 * classic or sharded pub/sub), never hear each other: no value, no invalidation, no conflict, no
 * resync crosses over.
 *
 * How "nothing arrived" is observed without sleeping: after the other tenant's writes have
 * resolved (so their PUBLISH has run), a peer of the same tenant writes a marker key of the same
 * hash slot; messages of one slot reach a subscriber in the order Redis published them (classic:
 * one connection; sharded: one channel per slot), so once the marker's event is in, anything the
 * other tenant published would have been received before it.
 */
import { randomBytes } from 'node:crypto';
import type { Cluster, Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { PubSubCacheManager } from '../../src/cache/cache-manager.js';
import { InvalidArgumentError } from '../../src/errors.js';
import { encodeEntry, encodeHeader } from '../../src/protocol/messages.js';
import { PubSubRedisDict, type PubSubRedisDictOptions } from '../../src/store/pubsub-redis-dict.js';
import { ZERO_STAMP } from '../../src/protocol/stamp.js';
import { isCluster, slotOf, type RedisClient } from '../../src/store/topology.js';
import { WriteBackCacheManager } from '../../src/write-back/manager.js';
import { clusterClient, hasCluster, pollUntil, standaloneClient, uniqueNamespace, withClients } from '../helpers/connections.js';
import { markerSeen } from '../helpers/events.js';

interface Kind {
  name: string;
  /** Clients of tenant A and tenant B (each call a new connection). */
  a: () => RedisClient;
  b: () => RedisClient;
  sharded: boolean;
}

const kinds: Kind[] = [
  { name: 'databases 0 and 1', a: () => standaloneClient({ db: 0 }), b: () => standaloneClient({ db: 1 }), sharded: false },
  { name: 'key prefixes, standalone', a: () => standaloneClient({ keyPrefix: 'tA:' }), b: () => standaloneClient({ keyPrefix: 'tB:' }), sharded: false },
];
if (hasCluster()) {
  kinds.push(
    { name: 'key prefixes, cluster', a: () => clusterClient({ keyPrefix: 'tA:' }), b: () => clusterClient({ keyPrefix: 'tB:' }), sharded: false },
    { name: 'key prefixes, cluster, sharded', a: () => clusterClient({ keyPrefix: 'tA:' }), b: () => clusterClient({ keyPrefix: 'tB:' }), sharded: true },
  );
}

describe.each(kinds)('tenants apart: $name', ({ a, b, sharded }) => {
  const clients = withClients();
  const managers: PubSubCacheManager<unknown>[] = [];
  afterEach(async () => {
    await Promise.all(managers.splice(0).map((m) => m.close()));
    await clients.closeAll();
  });

  const storeOf = <V>(client: () => RedisClient, ns: string, opts: PubSubRedisDictOptions<V> = {}): PubSubRedisDict<V> =>
    new PubSubRedisDict<V>(clients.track(client()), ns, { ...opts, ...(sharded ? { shardedPubSub: true } : {}) });

  async function managed<M extends PubSubCacheManager<string>>(m: M): Promise<M> {
    managers.push(m as unknown as PubSubCacheManager<unknown>);
    await m.ready();
    return m;
  }

  /** Keys of one hash slot: their events share a channel and an order. */
  const tag = `{${randomBytes(3).toString('hex')}}`;
  const key = (name: string): string => `${tag}${name}`;

  /** Writes a marker through `writer` and waits until `m` has received its event. */
  const marker = (writer: PubSubCacheManager<string>, m: PubSubCacheManager<string>): Promise<void> => markerSeen(writer, m, 'marker', key);

  it('the channels differ', () => {
    const ns = uniqueNamespace('tenancy-names');
    const sa = storeOf(a, ns);
    const sb = storeOf(b, ns);
    expect(sa.channels(5).update).not.toBe(sb.channels(5).update);
    expect(sa.channels(5).delete).not.toBe(sb.channels(5).delete);
  });

  it.each(['invalidate', 'update'] as const)('no value or invalidation crosses over (sync: %s)', async (sync) => {
    const ns = uniqueNamespace('tenancy-values');
    const [a1, a2] = await Promise.all([managed(new PubSubCacheManager<string>(storeOf(a, ns), { sync })), managed(new PubSubCacheManager<string>(storeOf(a, ns), { sync }))]);
    const b1 = await managed(new PubSubCacheManager<string>(storeOf(b, ns), { sync }));
    await a1.set(key('alice'), 'a0');
    await a1.set(key('carol'), 'c0');
    await pollUntil(() => a1.isServing, { timeoutMs: 10_000 });
    expect(a1.cache.peek(key('alice'))?.value).toBe('a0');
    const before = a1.stats();

    await b1.set(key('alice'), 'b1');
    await b1.delete(key('carol'));
    await b1.setMany([[key('dave'), 'd1']]);
    await marker(a2, a1);

    expect(a1.cache.peek(key('alice'))?.value).toBe('a0');
    expect(a1.cache.peek(key('carol'))?.value).toBe('c0');
    expect(await a1.get(key('alice'))).toBe('a0');
    expect(await a1.store.get(key('alice'))).toBe('a0');
    expect(await b1.store.get(key('alice'))).toBe('b1');
    const after = a1.stats();
    // Only the marker's event arrived; nothing of tenant B was received, refused or resynced on.
    expect(after.eventsReceived - before.eventsReceived).toBe(1);
    expect(after.malformed).toBe(before.malformed);
    expect(after.resyncs).toBe(before.resyncs);
  });

  it('no conflict crosses over (write-back, discard-on-remote-update)', async () => {
    const ns = uniqueNamespace('tenancy-conflict');
    const wa = await managed(new WriteBackCacheManager<string>(storeOf(a, ns), { flushIntervalMs: 0, conflictPolicy: 'discard-on-remote-update' }));
    const a2 = await managed(new PubSubCacheManager<string>(storeOf(a, ns)));
    // B's clock runs ahead, so that its write is newer than A's change whatever the millisecond.
    const b1 = await managed(new PubSubCacheManager<string>(storeOf<string>(b, ns, { clock: () => Date.now() + 60_000 })));
    const conflicts: unknown[] = [];
    wa.on('conflict', (c) => conflicts.push(c));
    await wa.set(key('bob'), 'mine');
    await b1.set(key('bob'), 'theirs');
    await marker(a2, wa);
    expect(conflicts).toEqual([]);
    const report = await wa.flush();
    expect(report.conflicts).toEqual([]);
    expect(report.written).toEqual([key('bob')]);
    expect(await a2.store.get(key('bob'))).toBe('mine');
    expect(await b1.store.get(key('bob'))).toBe('theirs');
  });

  it('no resync crosses over (a sequence gap on the other tenant)', async () => {
    const ns = uniqueNamespace('tenancy-gap');
    const a1 = await managed(new PubSubCacheManager<string>(storeOf(a, ns)));
    const a2 = await managed(new PubSubCacheManager<string>(storeOf(a, ns)));
    const sb = storeOf<string>(b, ns);
    const b1 = await managed(new PubSubCacheManager<string>(sb));
    const resyncs: unknown[] = [];
    a1.on('resync', (info) => resyncs.push(info));
    const bResynced = new Promise((resolve) => b1.once('resync', resolve));
    // Messages 1 and 5 of one origin on tenant B's channel of the slot: a gap for B, nothing for A.
    const raw = clients.track(b());
    const origin = randomBytes(8).toString('hex');
    const slot = isCluster(raw) ? slotOf(`tB:${sb.redisKey(key('x'))}`) : 0;
    const channel = sb.channels(slot).update;
    for (const seq of [1, 5]) {
      const bytes = Buffer.concat([encodeHeader('u', origin, seq, slot), Buffer.from([0x91]), encodeEntry(key('x'), ZERO_STAMP)]);
      // ioredis adds a client's keyPrefix to SPUBLISH channels (not to PUBLISH ones): publish the name as is.
      if (sharded) await (raw as Cluster).call('spublish', channel.slice('tB:'.length), bytes);
      else await (raw as Redis).publish(channel, bytes);
    }
    await bResynced;
    await marker(a2, a1);
    expect(resyncs).toEqual([]);
    expect(a1.stats().resyncs).toBe(0);
  });
});

describe('channel names', () => {
  const clients = withClients({ closeAfter: 'each' });

  it('carry the key prefix, the database and the channel prefix', () => {
    const ns = uniqueNamespace('names');
    const plain = new PubSubRedisDict(clients.track(standaloneClient()), ns);
    expect(plain.channels()).toEqual({ update: `${ns}/update`, delete: `${ns}/delete` });
    const db = new PubSubRedisDict(clients.track(standaloneClient({ db: 3 })), ns);
    expect(db.channels()).toEqual({ update: `${ns}/update@3`, delete: `${ns}/delete@3` });
    const prefixed = new PubSubRedisDict(clients.track(standaloneClient({ db: 2, keyPrefix: 'app:' })), ns, { channelPrefix: 'blue.' });
    expect(prefixed.channels()).toEqual({ update: `app:blue.${ns}/update@2`, delete: `app:blue.${ns}/delete@2` });
  });

  it('follow a SELECT made before the dictionary is created', async () => {
    const ns = uniqueNamespace('names-select');
    const client = clients.track(standaloneClient());
    await client.select(4);
    expect(new PubSubRedisDict(client, ns).channels().update).toBe(`${ns}/update@4`);
  });

  it.each<[unknown, string]>([['', 'empty'], ['a b', 'a space'], ['a{b', 'a brace'], ['x'.repeat(129), 'too long'], [7, 'a number']])('channelPrefix %j is refused (%s)', (value) => {
    const client = clients.track(standaloneClient({ lazyConnect: true }));
    expect(() => new PubSubRedisDict(client, 'ns', { channelPrefix: value as string })).toThrow(InvalidArgumentError);
  });

  it.runIf(hasCluster())('sharded: a key prefix with an unclosed hash tag is refused, a closed one is kept', () => {
    const open = clients.track(clusterClient({ keyPrefix: 'a{', lazyConnect: true }));
    expect(() => new PubSubRedisDict(open, 'ns', { shardedPubSub: true })).toThrow(InvalidArgumentError);
    const closed = clients.track(clusterClient({ keyPrefix: '{tenant}:', lazyConnect: true }));
    const store = new PubSubRedisDict(closed, 'ns', { shardedPubSub: true });
    const slot = slotOf(`{tenant}:${store.redisKey('k')}`);
    expect(slotOf(store.channels(slot).update)).toBe(slot);
    expect(slotOf(store.channels(0).update)).toBe(slot);
    expect(store.channels(slot).update.startsWith('{tenant}:ns/changes')).toBe(true);
    // One channel per slot carries both kinds of message.
    expect(store.channels(slot).delete).toBe(store.channels(slot).update);
  });
});
