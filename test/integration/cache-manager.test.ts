/**
 * PubSubCacheManager against real Redis: standalone, a 3+3 cluster with classic pub/sub, and the same
 * cluster with sharded pub/sub (SSUBSCRIBE/SPUBLISH).
 *
 * Every manager has its own store and its own ioredis connection, as separate service instances
 * would; instances that must see each other share a namespace, and every test has its own namespace.
 * Waiting is done on events, promises, or `pollUntil` with a deadline, never by sleeping.
 *
 * Forged messages (I4, I5) are built with the library's own wire-format encoders (`encodeHeader`,
 * `encodeEntry`) from a fake origin and published with a raw client, exactly as a foreign writer or
 * a replaying network would deliver them.
 */
import { randomBytes } from 'node:crypto';
import { Redis, type Cluster } from 'ioredis';
import { LRUCache } from 'lru-cache';
import { afterEach, describe, expect, it } from 'vitest';
import { PubSubCacheManager } from '../../src/cache/cache-manager.js';
import { InvalidArgumentError, RedisDictError } from '../../src/errors.js';
import { encodeEntry, encodeHeader, type MessageType } from '../../src/protocol/messages.js';
import { PubSubRedisDict, type PubSubRedisDictOptions } from '../../src/store/pubsub-redis-dict.js';
import { RedisDict } from '../../src/store/redis-dict.js';
import { formatStamp, parseStamp, type Stamp } from '../../src/protocol/stamp.js';
import { isCluster, slotOf, type RedisClient } from '../../src/store/topology.js';
import { pollUntil, redisEndpoints, topologies, uniqueNamespace, withClients, type ClientFactory } from '../helpers/connections.js';
import { nextEventFor } from '../helpers/events.js';
import { rawMonitor } from '../helpers/monitor.js';
import { forceResync, onceAfterStampsRead } from '../helpers/resync.js';
import { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy.js';
import { type PubSubCacheManagerOptions, type ResyncInfo } from '../../src/cache/types.js';

type Variant = [name: 'standalone' | 'cluster' | 'cluster+sharded', factory: ClientFactory, sharded: boolean];

const variants: Variant[] = topologies().flatMap(([topology, factory]): Variant[] =>
  topology === 'cluster' ? [['cluster', factory, false], ['cluster+sharded', factory, true]] : [['standalone', factory, false]],
);

/** A writer id nobody uses: the origin of forged messages. */
const fakeOrigin = (): string => randomBytes(8).toString('hex');

/** A stamp `deltaMs` away from `stamp`, made by `node`. */
const shiftedStamp = (stamp: Stamp, deltaMs: number, node: string): Stamp => formatStamp(parseStamp(stamp).ms + deltaMs, 0, node);

/** A complete wire message, built with the library's own encoders. */
function forge(type: MessageType, origin: string, seq: number, group: number, entries: [key: string, stamp: Stamp, payload?: Uint8Array][]): Buffer {
  if (entries.length > 15) throw new Error('forge: at most 15 entries');
  return Buffer.concat([
    encodeHeader(type, origin, seq, group),
    Buffer.from([0x90 + entries.length]),
    ...entries.map(([key, stamp, payload]) => encodeEntry(key, stamp, payload)),
  ]);
}


describe.each(variants)('PubSubCacheManager (%s)', (name, factory, sharded) => {
  const clients = withClients();
  const managers: PubSubCacheManager<unknown>[] = [];
  const proxies: TcpProxy[] = [];

  afterEach(async () => {
    await Promise.all(managers.splice(0).map((m) => m.close()));
    await clients.closeAll();
    await Promise.all(proxies.splice(0).map((p) => p.close()));
  });

  const connect = (opts?: Parameters<ClientFactory>[0]): RedisClient => clients.track(factory(opts));

  /** A store on its own new connection. */
  const storeOf = <V>(ns: string, opts: PubSubRedisDictOptions<V> = {}, client: RedisClient = connect()): PubSubRedisDict<V> =>
    new PubSubRedisDict<V>(client, ns, { ...opts, ...(sharded ? { shardedPubSub: true } : {}) });

  /**
   * A manager on its own store and connection, closed after the test (not yet ready).
   *
   * (Sharded managers use the default heartbeat timeout: subscribing 2 x 16384 channels has a
   * deadline of its own, see the test 'sharded: ready() resolves with a short heartbeat timeout'.)
   */
  const managerOf = <V = unknown>(ns: string, opts: PubSubCacheManagerOptions = {}, store: PubSubRedisDict<V> = storeOf<V>(ns)): PubSubCacheManager<V> => {
    const m = new PubSubCacheManager<V>(store, opts);
    managers.push(m as PubSubCacheManager<unknown>);
    return m;
  };

  /** `count` ready managers sharing namespace `ns`. */
  const peers = async <V = unknown>(ns: string, count: number, opts: PubSubCacheManagerOptions = {}): Promise<PubSubCacheManager<V>[]> => {
    const ms = Array.from({ length: count }, () => managerOf<V>(ns, opts));
    await Promise.all(ms.map((m) => m.ready()));
    return ms;
  };

  /** Publishes raw bytes the way the library would for the slot of `key` (PUBLISH or SPUBLISH). */
  async function publishRaw(raw: RedisClient, store: PubSubRedisDict<unknown>, key: string, type: MessageType, bytes: Buffer): Promise<void> {
    const slot = isCluster(raw) ? slotOf(store.redisKey(key)) : 0;
    const channels = store.channels(slot);
    const channel = type === 'u' ? channels.update : channels.delete;
    if (sharded) await (raw as Cluster).spublish(channel, bytes);
    else await raw.publish(channel, bytes);
  }

  /** The group (hash slot, or 0) a message about `key` belongs to. */
  const groupOf = (store: PubSubRedisDict<unknown>, key: string): number => (store.isCluster ? slotOf(store.redisKey(key)) : 0);

  /** A direct connection to the server holding `redisKey` (the master of its slot on a cluster). */
  async function nodeHolding(raw: RedisClient, redisKey: string): Promise<Redis> {
    await raw.ping();
    if (!isCluster(raw)) return clients.track(factory() as Redis);
    const address = raw.slots[slotOf(redisKey)]?.[0];
    if (address === undefined) throw new Error(`no master known for ${redisKey}`);
    const port = Number(address.slice(address.lastIndexOf(':') + 1));
    const host = address.slice(0, address.lastIndexOf(':'));
    return clients.track(new Redis(port, host));
  }

  /**
   * Counts the MGET commands naming `redisKey` that the server really executes during `action`, with
   * MONITOR on the node holding the key. MONITOR streams commands in execution order, so once a
   * unique ECHO sent after `action` shows up, every command of `action` has been seen. Counting by
   * key (not a global counter such as INFO commandstats) keeps tests running in parallel on the
   * shared servers from polluting the count.
   */
  async function countMgets(raw: RedisClient, redisKey: string, action: () => Promise<void>): Promise<number> {
    const node = await nodeHolding(raw, redisKey);
    const token = `sentinel-${randomBytes(8).toString('hex')}`;
    let count = 0;
    let sentinelSeen = false;
    const { host, port } = node.options;
    const monitor = await rawMonitor({ host: host ?? '127.0.0.1', port: port ?? 6379 }, (args: string[]) => {
      const [command = '', ...rest] = args;
      if (command.toLowerCase() === 'mget' && rest.includes(redisKey)) count++;
      if (command.toLowerCase() === 'echo' && rest[0] === token) sentinelSeen = true;
    });
    try {
      await action();
      await node.echo(token);
      await pollUntil(() => sentinelSeen, { timeoutMs: 10_000, message: 'MONITOR did not show the sentinel ECHO' });
      return count;
    } finally {
      monitor.stop();
    }
  }

  // ---------------------------------------------------------------- propagation

  describe.each(['invalidate', 'update'] as const)('sync: %s', (sync) => {
    it('a write on one manager is visible on every other manager (3 instances)', async () => {
      const ns = uniqueNamespace(`cm-prop-${sync}`);
      const [a, b, c] = await peers<{ n: number }>(ns, 3, { sync });
      const keys = ['k1', 'k2', 'k3', '{x}y', 'ключ'];
      await a!.setMany(keys.map((k) => [k, { n: 0 }]));
      // b and c cache every key.
      expect(await b!.getMany(keys)).toEqual(keys.map(() => ({ n: 0 })));
      expect(await c!.getMany(keys)).toEqual(keys.map(() => ({ n: 0 })));
      expect(b!.cache.size).toBe(keys.length);

      const event = sync === 'update' ? 'update' : 'invalidate';
      const seen = [b!, c!].flatMap((m) => keys.map((k) => nextEventFor(m, event, k)));
      await a!.setMany(keys.map((k) => [k, { n: 1 }]));
      await Promise.all(seen);
      for (const m of [b!, c!]) {
        const missesBefore = m.stats().misses;
        expect(await m.getMany(keys)).toEqual(keys.map(() => ({ n: 1 })));
        // In update mode the value came with the event: no read from Redis.
        if (sync === 'update') expect(m.stats().misses).toBe(missesBefore);
      }

      // A write from c reaches a and b; a delete from b reaches a and c.
      await a!.get('k1');
      const toA = nextEventFor(a!, event, 'k1');
      const toB = nextEventFor(b!, event, 'k1');
      await c!.set('k1', { n: 2 });
      await Promise.all([toA, toB]);
      expect(await a!.get('k1')).toEqual({ n: 2 });
      expect(await b!.get('k1')).toEqual({ n: 2 });

      const goneA = nextEventFor(a!, 'invalidate', 'k1');
      const goneC = nextEventFor(c!, 'invalidate', 'k1');
      expect(await b!.delete('k1')).toBe(true);
      await Promise.all([goneA, goneC]);
      expect(await a!.get('k1')).toBeUndefined();
      expect(await c!.get('k1')).toBeUndefined();
      expect(await a!.has('k1')).toBe(false);
    }, sharded ? 180_000 : undefined); // three sharded managers subscribe 3 x 2 x 16384 channels: slow on a loaded 2-core machine

    // Redundant with the test above on sharded pub/sub, where every manager costs 1-3 s to subscribe.
    it.runIf(!sharded)('a write is eventually visible to a polling reader (no event listener involved)', async () => {
      const ns = uniqueNamespace(`cm-poll-${sync}`);
      const [a, b] = await peers<string>(ns, 2, { sync });
      await a!.set('k', 'v0');
      expect(await b!.get('k')).toBe('v0');
      await a!.set('k', 'v1');
      await pollUntil(async () => (await b!.get('k')) === 'v1', { timeoutMs: 5_000, message: 'b never saw v1' });
      expect(b!.cache.peek('k')?.value).toBe('v1');
    });
  });

  it("own writes are not re-fetched and own messages are not applied", async () => {
    const ns = uniqueNamespace('cm-own');
    const [a, b] = await peers<string>(ns, 2);
    await a!.set('{own}mine', 'v1');
    // b's write is published after a's, on the same server (same slot group on a cluster), so
    // once a has received it, a has also received (and dropped) its own earlier message.
    await a!.get('{own}theirs');
    const theirs = nextEventFor(a!, 'invalidate', '{own}theirs');
    await b!.set('{own}theirs', 'x');
    await theirs;
    const stats = a!.stats();
    expect(stats.eventsReceived).toBe(1);
    expect(stats.eventsApplied).toBe(1);
    const { hits, misses } = stats;
    expect(await a!.get('{own}mine')).toBe('v1');
    expect(a!.stats().hits).toBe(hits + 1);
    expect(a!.stats().misses).toBe(misses);
    // And a real count: getting the key after the own write issues no MGET at all.
    const raw = connect();
    const reads = await countMgets(raw, a!.store.redisKey('{own}mine'), async () => {
      for (let i = 0; i < 10; i++) expect(await a!.get('{own}mine')).toBe('v1');
    });
    expect(reads).toBe(0);
  });

  it('a hit reuses one settled promise per entry; a new value gets a new one', async () => {
    const ns = uniqueNamespace('cm-settled');
    const [a, b] = await peers<{ n: number }>(ns, 2);
    await a!.set('k', { n: 1 });
    const first = a!.get('k');
    expect(await first).toEqual({ n: 1 });
    // Hits allocate nothing: the same settled promise answers every hit of the entry.
    expect(a!.get('k')).toBe(first);
    expect(a!.get('k')).toBe(first);
    // A cached miss answers undefined, also without a round trip.
    expect(await a!.get('absent')).toBeUndefined();
    const misses = a!.stats().misses;
    expect(await a!.get('absent')).toBeUndefined();
    expect(a!.stats().misses).toBe(misses);
    // A newer value (own write, then a peer's) is a new entry, never the old promise.
    await a!.set('k', { n: 2 });
    expect(await a!.get('k')).toEqual({ n: 2 });
    // b reads k first, so its clock is past a's stamp and its write is newer (same-millisecond
    // stamps of two writers are ordered by node id, not by call order).
    expect(await b!.get('k')).toEqual({ n: 2 });
    const changed = nextEventFor(a!, 'invalidate', 'k');
    await b!.set('k', { n: 3 });
    await changed;
    expect(await a!.get('k')).toEqual({ n: 3 });
    // Numeric keys take the validating path and read the same entry.
    await a!.set('7', { n: 7 });
    expect(await a!.get(7)).toEqual({ n: 7 });
  });

  it('nothing is cached before ready(); reads still answer from Redis', async () => {
    const ns = uniqueNamespace('cm-ready');
    const writer = storeOf<string>(ns);
    await writer.set('k', 'v');
    const m = managerOf<string>(ns);
    // Called synchronously after the constructor: the subscription cannot be live yet.
    expect(m.isServing).toBe(false);
    const early = m.get('k');
    const earlyMany = m.getMany(['k', 'absent']);
    expect(await early).toBe('v');
    expect(await earlyMany).toEqual(['v', undefined]);
    await m.ready();
    // Reads started before the subscription was live are never cached (they may have missed events).
    expect(m.cache.size).toBe(0);
    expect(m.isServing).toBe(true);
    expect(await m.get('k')).toBe('v');
    expect(m.cache.peek('k')?.value).toBe('v');
  });

  it.runIf(!sharded)('100 concurrent get(k) of an uncached key cost exactly one MGET', async () => {
    const ns = uniqueNamespace('cm-coalesce');
    const [a, b] = await peers<string>(ns, 2);
    await a!.set('hot', 'value');
    const raw = connect();
    let results: (string | undefined)[] = [];
    const reads = await countMgets(raw, b!.store.redisKey('hot'), async () => {
      results = await Promise.all(Array.from({ length: 100 }, () => b!.get('hot')));
    });
    expect(reads).toBe(1);
    expect(results).toEqual(Array.from({ length: 100 }, () => 'value'));
    expect(b!.stats().misses).toBe(100);
    // Now cached: another 100 reads cost nothing.
    const more = await countMgets(raw, b!.store.redisKey('hot'), async () => {
      await Promise.all(Array.from({ length: 100 }, () => b!.get('hot')));
    });
    expect(more).toBe(0);
    expect(b!.stats().hits).toBe(100);
  });

  /**
   * Regression (fixed in src/cache/subscriber.ts, `heartbeat()`): while the link was not live, the watchdog meant
   * for a handshake swallowed by a partition calls `conn.disconnect(true)` once `heartbeatTimeoutMs`
   * has passed since the link went down, even when the connection is ready and merely busy
   * subscribing. With sharded pub/sub that subscription was 2 x 16384 SSUBSCRIBE channels (1-3 s),
   * so with a short heartbeat timeout it is aborted and restarted forever and ready() never
   * resolves (with the default 2 s it does so only on a loaded machine, where ready() took 46-90 s
   * in our runs, with an 'error' event "No sharded subscriber for slot: 0" per attempt).
   */
  it.runIf(sharded)('sharded: ready() resolves with a short heartbeat timeout', async () => {
    const ns = uniqueNamespace('cm-sharded-hb');
    const m = managerOf(ns, { heartbeatIntervalMs: 100, heartbeatTimeoutMs: 300 });
    const errors: string[] = [];
    m.on('error', (error) => errors.push(error.message));
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), 8_000);
    });
    const outcome = await Promise.race([m.ready().then(() => 'ready' as const), deadline]);
    clearTimeout(timer);
    expect(outcome, `ready() did not resolve within 8 s; errors: ${[...new Set(errors)].join(' | ')}`).toBe('ready');
  });

  it.runIf(sharded)('sharded: one channel per slot carries updates and deletes (16,384 channels subscribed in all)', async () => {
    const ns = uniqueNamespace('cm-sharded-one');
    const [a, b] = await peers<string>(ns, 2);
    const raw = connect() as Cluster;
    await a!.set('k', 'v1');
    await b!.get('k');
    const deleted = nextEventFor(b!, 'invalidate', 'k');
    await a!.delete('k');
    await deleted;
    expect(await b!.get('k')).toBeUndefined();
    // Every master holds the channels of its own slots; two managers subscribe the same 16,384.
    let channels = 0;
    for (const node of raw.nodes('master')) channels += ((await node.call('PUBSUB', 'SHARDCHANNELS', `${ns}/*`)) as string[]).length;
    expect(channels).toBe(16_384);
  });

  // ---------------------------------------------------------------- misses, TTL, storage
  // Tests of purely local behaviour (TTL, storage, options) run on the standalone server only: the
  // topology changes nothing for them. Sharded pub/sub runs the tests whose path differs (SPUBLISH,
  // per-slot channels, the sharded subscriber's lifecycle): every sharded manager costs 1-3 s to
  // subscribe its 16384 channels, and CI has 2 cores.

  it.runIf(!sharded)('caches misses; has() is never true for a cached miss; a remote set invalidates the miss', async () => {
    const ns = uniqueNamespace('cm-miss');
    const [a, b] = await peers<string>(ns, 2);
    expect(await b!.get('ghost')).toBeUndefined();
    expect(b!.cache.has('ghost')).toBe(true);
    expect(b!.cache.peek('ghost')).toMatchObject({ present: false, value: undefined, stamp: '' });
    expect([...b!.cache.entries()]).toEqual([]);
    const { hits, misses } = b!.stats();
    expect(await b!.has('ghost')).toBe(false);
    expect(await b!.get('ghost')).toBeUndefined();
    expect(b!.stats()).toMatchObject({ hits: hits + 2, misses });

    const invalidated = nextEventFor(b!, 'invalidate', 'ghost');
    await a!.set('ghost', 'boo');
    await invalidated;
    expect(b!.cache.has('ghost')).toBe(false);
    expect(await b!.has('ghost')).toBe(true);
    expect(await b!.get('ghost')).toBe('boo');

    // A remote delete turns it back into a miss; has() answers false again.
    const deleted = nextEventFor(b!, 'invalidate', 'ghost');
    await a!.delete('ghost');
    await deleted;
    expect(await b!.has('ghost')).toBe(false);
    expect(await b!.get('ghost')).toBeUndefined();
  });

  it.runIf(name === 'standalone')('cacheMisses: false does not cache misses', async () => {
    const ns = uniqueNamespace('cm-nomiss');
    const [m] = await peers<string>(ns, 1, { cacheMisses: false });
    expect(await m!.get('ghost')).toBeUndefined();
    expect(await m!.has('ghost')).toBe(false);
    expect(m!.cache.size).toBe(0);
    expect(m!.stats().misses).toBe(2);
  });

  it.runIf(name === 'standalone')('ttlMs expires entries by the injected clock, without sleeping', async () => {
    const ns = uniqueNamespace('cm-ttl');
    let now = 1_000_000;
    const [m] = await peers<string>(ns, 1, { ttlMs: 1_000, clock: () => now });
    await m!.set('written', 'w');
    expect(m!.cache.peek('written')?.expiresAt).toBe(now + 1_000);
    expect(await m!.get('read')).toBeUndefined();
    now += 999;
    expect(await m!.get('written')).toBe('w');
    expect(await m!.get('read')).toBeUndefined();
    expect(m!.stats()).toMatchObject({ hits: 2, misses: 1 });
    now += 1;
    expect(await m!.get('written')).toBe('w');
    expect(await m!.get('read')).toBeUndefined();
    expect(m!.stats()).toMatchObject({ hits: 2, misses: 3 });
    // Re-read entries got a fresh expiry.
    expect(m!.cache.peek('written')?.expiresAt).toBe(now + 1_000);
  });

  it.runIf(name === 'standalone')('cache: a number is an LRU of that many entries', async () => {
    const ns = uniqueNamespace('cm-lru');
    const [m] = await peers<number>(ns, 1, { cache: 2 });
    await m!.setMany([
      ['a', 1],
      ['b', 2],
      ['c', 3],
    ]);
    expect(m!.cache.size).toBe(2);
    expect([...m!.cache.keys()].sort()).toEqual(['b', 'c']);
    expect(await m!.get('b')).toBe(2); // b becomes the most recent
    expect(await m!.get('a')).toBe(1); // evicts c
    expect([...m!.cache.keys()].sort()).toEqual(['a', 'b']);
    // An evicted entry is simply read again.
    const { misses } = m!.stats();
    expect(await m!.get('c')).toBe(3);
    expect(m!.stats().misses).toBe(misses + 1);
  });

  it.runIf(name === 'standalone')('cache: an LRUCache instance is used as the storage', async () => {
    const ns = uniqueNamespace('cm-own-lru');
    const lru = new LRUCache<string, object>({ max: 3 });
    const [m] = await peers<number>(ns, 1, { cache: lru });
    await m!.setMany([1, 2, 3, 4, 5].map((n) => [`k${n}`, n]));
    expect(lru.size).toBe(3);
    expect(m!.cache.size).toBe(3);
    expect([...lru.keys()].sort()).toEqual(['k3', 'k4', 'k5']);
    expect(await m!.get('k5')).toBe(5);
    expect(m!.stats().hits).toBe(1);
  });

  it.runIf(name !== 'cluster+sharded')("cache: 'unbounded' keeps every entry", async () => {
    const ns = uniqueNamespace('cm-unbounded');
    const [m] = await peers<number>(ns, 1, { cache: 'unbounded' });
    const keys = Array.from({ length: 300 }, (_, i) => `k${i}`);
    await m!.setMany(keys.map((k, i) => [k, i]));
    expect(m!.cache.size).toBe(300);
    expect(await m!.getMany(keys)).toEqual(keys.map((_, i) => i));
    expect(m!.stats()).toMatchObject({ hits: 300, misses: 0, size: 300 });
  });

  it.runIf(!sharded)('stats() reports every counter', async () => {
    const ns = uniqueNamespace('cm-stats');
    const [a, b] = await peers<string>(ns, 2);
    expect(b!.stats()).toEqual({
      hits: 0,
      misses: 0,
      hitRatio: 0,
      eventsReceived: 0,
      eventsApplied: 0,
      eventsIgnored: 0,
      malformed: 0,
      resyncs: 0,
      evictions: 0,
      unverified: 0,
      gapResyncsDeferred: 0,
      size: 0,
      trackedOrigins: 0,
      loads: 0,
      loadErrors: 0,
      staleServed: 0,
      refreshes: 0,
      lockWaits: 0,
    });
    await a!.set('{s}k', 'v'); // not cached by b yet: ignored
    expect(await b!.get('{s}k')).toBe('v');
    expect(await b!.get('{s}k')).toBe('v');
    // Same slot group, so the second message cannot overtake the first on a cluster.
    const invalidated = nextEventFor(b!, 'invalidate', '{s}k');
    await a!.set('{s}k', 'v2'); // cached by b: applied
    await invalidated;
    await a!.set('{s}other', 'x'); // not cached by b: ignored
    await pollUntil(() => b!.stats().eventsReceived === 3, { timeoutMs: 5_000 });
    expect(b!.stats()).toEqual({
      hits: 1,
      misses: 1,
      hitRatio: 0.5,
      eventsReceived: 3,
      eventsApplied: 1,
      eventsIgnored: 2,
      malformed: 0,
      resyncs: 0,
      evictions: 0,
      unverified: 0,
      gapResyncsDeferred: 0,
      size: 0,
      trackedOrigins: 1, // a, one slot group
      loads: 0,
      loadErrors: 0,
      staleServed: 0,
      refreshes: 0,
      lockWaits: 0,
    });
  });

  it.runIf(!sharded)('clear() empties Redis and every peer; iteration and size() read Redis', async () => {
    const ns = uniqueNamespace('cm-clear');
    const [a, b] = await peers<number>(ns, 2);
    const keys = Array.from({ length: 20 }, (_, i) => `k${i}`);
    await a!.setMany(keys.map((k, i) => [k, i]));
    expect(await b!.getMany(keys)).toEqual(keys.map((_, i) => i));
    expect(await b!.size()).toBe(20);
    const seen: string[] = [];
    for await (const k of b!.keys()) seen.push(k);
    expect(seen.sort()).toEqual([...keys].sort());
    const values: number[] = [];
    for await (const v of b!.values()) values.push(v);
    expect(values.sort((x, y) => x - y)).toEqual(keys.map((_, i) => i));
    const entries = new Map<string, number>();
    for await (const [k, v] of b!) entries.set(k, v);
    expect(entries.size).toBe(20);

    const gone = keys.map((k) => nextEventFor(b!, 'invalidate', k));
    await a!.clear();
    await Promise.all(gone);
    expect(a!.cache.size).toBe(0);
    expect(await b!.size()).toBe(0);
    expect(await b!.getMany(keys)).toEqual(keys.map(() => undefined));
  });

  // ---------------------------------------------------------------- lifecycle and options

  it('close() is idempotent, later calls reject with E_CLOSED, the caller keeps its connection', async () => {
    const ns = uniqueNamespace('cm-close');
    const tag = `cm-close-${randomBytes(4).toString('hex')}`;
    const client = connect({ connectionName: tag });
    const m = managerOf<string>(ns, {}, storeOf<string>(ns, {}, client));
    await m.ready();
    await m.set('k', 'v');
    const raw = connect();
    const nodes = isCluster(raw) ? (await raw.ping(), raw.nodes('all')) : [raw as Redis];
    /** Number of pub/sub connections named `tag` on the server(s). */
    const subscribers = async (): Promise<number> => {
      let n = 0;
      for (const node of nodes) {
        const list = String(await node.call('CLIENT', 'LIST', 'TYPE', 'pubsub'));
        // Sharded subscriber connections (one per master) carry the client's connectionName too.
        n += list.split('\n').filter((line) => line.includes(tag)).length;
      }
      return n;
    };
    expect(await subscribers()).toBeGreaterThan(0);

    await m.close();
    await m.close();
    await m[Symbol.asyncDispose]();
    expect(m.isServing).toBe(false);
    expect(m.cache.size).toBe(0);
    const closed = { code: 'E_CLOSED' };
    await expect(m.get('k')).rejects.toMatchObject(closed);
    await expect(m.has('k')).rejects.toMatchObject(closed);
    await expect(m.getMany(['k'])).rejects.toMatchObject(closed);
    await expect(m.set('k', 'x')).rejects.toMatchObject(closed);
    await expect(m.setMany([['k', 'x']])).rejects.toMatchObject(closed);
    await expect(m.delete('k')).rejects.toMatchObject(closed);
    await expect(m.deleteMany(['k'])).rejects.toMatchObject(closed);
    await expect(m.size()).rejects.toMatchObject(closed);
    await expect(m.clear()).rejects.toMatchObject(closed);
    const drain = async (it: () => AsyncIterable<unknown>): Promise<void> => {
      for await (const _ of it()) void _;
    };
    await expect(drain(() => m.keys())).rejects.toMatchObject(closed);
    await expect(drain(() => m.values())).rejects.toMatchObject(closed);
    await expect(drain(() => m.entries())).rejects.toMatchObject(closed);
    await expect(m.get('k')).rejects.toBeInstanceOf(RedisDictError);

    // The caller's connection is untouched and Redis still holds the value; the subscription is gone.
    expect(await client.ping()).toBe('PONG');
    expect(await new RedisDict(client, ns).get('k')).toBe('v');
    await pollUntil(async () => (await subscribers()) === 0, { timeoutMs: 5_000, message: 'the subscriber connection was not closed' });
    // The store can be given to a new manager once the old one is closed.
    const again = managerOf<string>(ns, {}, m.store);
    await again.ready();
    expect(await again.get('k')).toBe('v');
  });

  it.runIf(name !== 'cluster+sharded')('refuses unknown and invalid options, and a second manager on one store, with E_INVALID_OPTION', async () => {
    const ns = uniqueNamespace('cm-options');
    const store = storeOf<string>(ns);
    const bad: unknown[] = [
      { bogus: 1 },
      { cache: 0 },
      { cache: -5 },
      { cache: 'lru' },
      { cache: new Map() },
      { sync: 'push' },
      { ttlMs: -1 },
      { cacheMisses: 'yes' },
      { onReconnect: 'ignore' },
      { serveStaleWhileDisconnected: 1 },
      { heartbeatIntervalMs: 0 },
      { heartbeatTimeoutMs: 1.5 },
      { heartbeatTimeoutMs: 1000 }, // not above the default interval
      { heartbeatIntervalMs: 500, heartbeatTimeoutMs: 400 },
      { maxMessageBytes: 0 },
      { clock: 5 },
      'options',
      null,
    ];
    for (const options of bad) {
      let error: unknown;
      try {
        managers.push(new PubSubCacheManager(store, options as PubSubCacheManagerOptions));
      } catch (e) {
        error = e;
      }
      expect(error, JSON.stringify(options)).toBeInstanceOf(InvalidArgumentError);
      expect(error).toMatchObject({ code: 'E_INVALID_OPTION' });
    }
    // None of the refused managers claimed the store.
    const first = managerOf<string>(ns, {}, store);
    expect(() => managerOf<string>(ns, {}, store)).toThrow(expect.objectContaining({ code: 'E_INVALID_OPTION' }));
    expect(() => new PubSubCacheManager({} as PubSubRedisDict<string>)).toThrow(expect.objectContaining({ code: 'E_INVALID_OPTION' }));
    await first.ready();
    await first.set('k', 'v');
    expect(await first.get('k')).toBe('v');
  });

  // ---------------------------------------------------------------- I4: no regression

  it('I4: forged older stamps, duplicates and reordered sequence numbers change nothing', async () => {
    const ns = uniqueNamespace('cm-i4');
    const [a, b] = await peers<{ v: string }>(ns, 2, { sync: 'update' });
    const raw = connect();
    const key = '{i4}k';
    await a!.set(key, { v: 'real' });
    expect(await b!.get(key)).toEqual({ v: 'real' });
    const cached = b!.cache.peek(key)!;
    expect(cached.present).toBe(true);
    const store = b!.store as PubSubRedisDict<unknown>;
    const group = groupOf(store, key);
    const evil = store.encodeValue(key, { v: 'evil' });
    const resyncs: ResyncInfo[] = [];
    b!.on('resync', (info) => resyncs.push(info));
    const invalidations: string[] = [];
    b!.on('invalidate', (k) => invalidations.push(k));
    b!.on('update', (k) => invalidations.push(k));

    const fake = fakeOrigin();
    const older = shiftedStamp(cached.stamp as Stamp, -1_000, fake);
    const messages: [MessageType, Buffer][] = [
      // an older write and an older delete from a fake origin
      ['u', forge('u', fake, 1, group, [[key, older, evil]])],
      ['d', forge('d', fake, 2, group, [[key, older]])],
      // the very stamp of the cached entry, with another value (a replay with a tampered value)
      ['u', forge('u', fake, 3, group, [[key, cached.stamp as Stamp, evil]])],
      // duplicates
      ['u', forge('u', fake, 3, group, [[key, cached.stamp as Stamp, evil]])],
      ['u', forge('u', fake, 1, group, [[key, older, evil]])],
      // reordered: 6 before 5 and 4
      ['u', forge('u', fake, 6, group, [[key, older, evil]])],
      ['d', forge('d', fake, 5, group, [[key, older]])],
      ['u', forge('u', fake, 4, group, [[key, older, evil]])],
      // a replay of the real writer's first message (its origin, its seq 1, the cached stamp)
      ['u', forge('u', a!.store.clock.nodeId, 1, group, [[key, cached.stamp as Stamp, evil]])],
    ];
    const before = b!.stats();
    for (const [type, bytes] of messages) await publishRaw(raw, store, key, type, bytes);
    await pollUntil(() => b!.stats().eventsReceived === before.eventsReceived + messages.length, { timeoutMs: 5_000 });
    // A sequence number past the next one (seq 6 after 3) looks like a gap and starts a resync
    // (revalidation): wait for it to finish.
    await pollUntil(() => b!.isServing, { timeoutMs: 10_000, message: 'b did not finish resyncing' });

    const after = b!.stats();
    expect(after.eventsIgnored - before.eventsIgnored).toBe(messages.length);
    expect(after.eventsApplied).toBe(before.eventsApplied);
    expect(after.malformed).toBe(0);
    expect(invalidations).toEqual([]);
    expect(b!.cache.peek(key)).toEqual(cached);
    // Every resync found the entry still current in Redis: nothing dropped.
    for (const info of resyncs) expect(info).toMatchObject({ reason: 'sequence-gap', dropped: 0 });
    const { hits } = b!.stats();
    expect(await b!.get(key)).toEqual({ v: 'real' });
    expect(b!.stats().hits).toBe(hits + 1);

    // A genuinely newer write still gets through afterwards.
    const updated = nextEventFor(b!, 'update', key);
    await a!.set(key, { v: 'newer' });
    await updated;
    expect(await b!.get(key)).toEqual({ v: 'newer' });
  });

  it('a write that completes while a resync revalidates does not leave the older entry cached', async () => {
    const ns = uniqueNamespace('cm-resync-write');
    const [b] = await peers<string>(ns, 1);
    const key = '{rw}k';
    await b!.set(key, 'v1');
    expect(b!.cache.peek(key)?.value).toBe('v1');
    const during = onceAfterStampsRead(b!.store as PubSubRedisDict<unknown>, key, () => b!.isServing, () => b!.set(key, 'v2'));
    expect(await forceResync(b!, connect(), key)).toMatchObject({ reason: 'sequence-gap' });
    expect(during.observed()).toBe(false); // the write replied while the cache was not serving
    expect(b!.cache.peek(key)?.value).not.toBe('v1');
    expect(await b!.get(key)).toBe('v2');
  });

  // ---------------------------------------------------------------- I5: read racing an event

  /**
   * I5 made deterministic: b's data connection is parked behind a BLPOP, so the MGET of `b.get(k)`
   * waits inside Redis; meanwhile a newer event for k (forged: Redis is not changed) reaches b
   * through its subscriber connection. When the BLPOP is released, the read returns the older
   * value, which must not be cached. The control run (no event) shows that the same read is cached
   * otherwise, so the first assertion is not vacuous.
   */
  it('I5: a read that an event newer than its result overtook is not cached', async () => {
    const ns = uniqueNamespace('cm-i5');
    const tag = `i5-${randomBytes(3).toString('hex')}`;
    const key = `{${tag}}k`;
    const blockKey = `${ns}-block{${tag}}`; // same slot as the entry, outside the namespace
    const a = managerOf<string>(ns);
    const bClient = connect();
    const b = managerOf<string>(ns, {}, storeOf<string>(ns, {}, bClient));
    await Promise.all([a.ready(), b.ready()]);
    const raw = connect();
    const store = b.store as PubSubRedisDict<unknown>;
    await a.set(key, 'old');

    const raceOnce = async (withEvent: boolean): Promise<string | undefined> => {
      const blocked = bClient.blpop(blockKey, 0);
      const read = b.get(key);
      if (withEvent) {
        const before = b.stats().eventsReceived;
        const newer = formatStamp(Date.now() + 60_000, 0, fakeOrigin());
        await publishRaw(raw, store, key, 'd', forge('d', newer.slice(18), 1, groupOf(store, key), [[key, newer]]));
        await pollUntil(() => b.stats().eventsReceived === before + 1, { timeoutMs: 5_000, message: 'the forged event did not arrive' });
      }
      await raw.lpush(blockKey, 'go');
      await blocked;
      return read;
    };

    // Control: nothing raced the read, it is cached.
    expect(await raceOnce(false)).toBe('old');
    expect(b.cache.peek(key)?.value).toBe('old');
    // Drop it (a local delete would write Redis): a newer forged delete for a cached key invalidates it.
    const dropped = nextEventFor(b, 'invalidate', key);
    const newer = formatStamp(Date.now() + 60_000, 0, fakeOrigin());
    await publishRaw(raw, store, key, 'd', forge('d', newer.slice(18), 1, groupOf(store, key), [[key, newer]]));
    await dropped;
    expect(b.cache.has(key)).toBe(false);

    // The race: the read answers 'old' (what Redis holds), but an event newer than it arrived meanwhile.
    expect(await raceOnce(true)).toBe('old');
    expect(b.cache.has(key)).toBe(false);
  });

  /**
   * I5 with a real write (standalone): b's data connection goes through a TCP proxy that is
   * stalled (it stops reading from the server), b's subscriber connects directly. Redis executes the
   * read (MGET then EXISTS, seen as `cmd=exists` in CLIENT LIST for b's connection) and its reply is held in the proxy;
   * then a writes a new value, whose event reaches b first. The read then delivers the value it
   * read before the write: it must not be cached.
   */
  it.runIf(name === 'standalone')('I5: a real write racing a read whose reply is delayed in the network', async () => {
    const target = redisEndpoints().standalone;
    const proxy = await startTcpProxy(target);
    proxies.push(proxy);
    const ns = uniqueNamespace('cm-i5-real');
    const bClient = clients.track(new Redis(proxy.port, proxy.host));
    // The subscriber is a duplicate of the data client: send it straight to Redis.
    const duplicate = bClient.duplicate.bind(bClient);
    bClient.duplicate = (override) => duplicate({ ...override, host: target.host, port: target.port });
    const a = managerOf<string>(ns);
    const b = managerOf<string>(ns, {}, storeOf<string>(ns, {}, bClient));
    await Promise.all([a.ready(), b.ready()]);
    const raw = connect() as Redis;
    const id = Number(await bClient.call('CLIENT', 'ID'));
    const lastCommandOfB = async (): Promise<string | undefined> =>
      /\bcmd=(\S+)/.exec(String(await raw.call('CLIENT', 'LIST', 'ID', String(id))))?.[1];

    const raceOnce = async (withWrite: string | undefined): Promise<string | undefined> => {
      await bClient.ping();
      proxy.setMode('stall');
      const read = b.get('k');
      // A read is MGET then EXISTS of the same keys, pipelined: EXISTS last means both ran.
      await pollUntil(async () => (await lastCommandOfB()) === 'exists', { timeoutMs: 5_000, message: 'Redis did not run the read (MGET, EXISTS)' });
      if (withWrite !== undefined) {
        const before = b.stats().eventsReceived;
        await a.set('k', withWrite);
        await pollUntil(() => b.stats().eventsReceived === before + 1, { timeoutMs: 5_000, message: 'the event did not arrive' });
      }
      proxy.setMode('pass');
      return read;
    };

    await a.set('k', 'v1');
    // Control: no write raced the read, it is cached.
    expect(await raceOnce(undefined)).toBe('v1');
    expect(b.cache.peek('k')?.value).toBe('v1');
    const invalidated = nextEventFor(b, 'invalidate', 'k');
    await a.set('k', 'v2');
    await invalidated;

    // The race: Redis answered v2 before a wrote v3; v3's event arrived before the v2 reply.
    expect(await raceOnce('v3')).toBe('v2');
    expect(b.cache.has('k')).toBe(false);
    expect(await b.get('k')).toBe('v3');
    expect(b.cache.peek('k')?.value).toBe('v3');
  });
});
