/**
 * Cache-aside `getOrSet` (issue #15, part 2) against real Redis, standalone and a 3+3 cluster:
 * in-process and fleet-wide single flight (4 instances, 100 callers, one loader call), loader
 * errors (E_LOADER, lock released), stale-while-revalidate, grace, timeouts, the load lock expiring
 * by its own TTL when the loading instance goes away, and the lock being invisible to iteration.
 *
 * Time-dependent cases use an injected clock (moved by hand) for the manager and its store, so
 * nothing depends on the speed of the machine; waiting is done on events, promises or `pollUntil`.
 */
import { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { PubSubCacheManager } from '../../src/cache/cache-manager.js';
import { LoaderError, RedisDictError } from '../../src/errors.js';
import { PubSubRedisDict, type PubSubRedisDictOptions } from '../../src/store/pubsub-redis-dict.js';
import { RedisDict } from '../../src/store/redis-dict.js';
import { isCluster, slotOf, type RedisClient } from '../../src/store/topology.js';
import { WriteBackCacheManager } from '../../src/write-back/manager.js';
import { pollUntil, topologies, uniqueNamespace, withClients } from '../helpers/connections.js';
import { type RedisServerHandle, startServer } from '../helpers/harness.js';
import { type PubSubCacheManagerOptions, type StaleReason } from '../../src/cache/types.js';

/** A clock the test moves by hand, starting at the real time. */
function manualClock(): { now: () => number; advance: (ms: number) => void } {
  let offset = 0;
  return { now: () => Date.now() + offset, advance: (ms) => void (offset += ms) };
}

/** A promise the test resolves or rejects by hand. */
function gate<T>(): { promise: Promise<T>; open: (value: T) => void; fail: (error: Error) => void } {
  let open!: (value: T) => void;
  let fail!: (error: Error) => void;
  const promise = new Promise<T>((resolve, reject) => {
    open = resolve;
    fail = reject;
  });
  return { promise, open, fail };
}

async function rejection(promise: Promise<unknown>): Promise<RedisDictError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(RedisDictError);
  return error as RedisDictError;
}

/** Collects `stale` events of a manager. */
function staleEvents(m: PubSubCacheManager<unknown>): [string, StaleReason][] {
  const seen: [string, StaleReason][] = [];
  m.on('stale', (key, reason) => seen.push([key, reason]));
  return seen;
}

describe.each(topologies())('getOrSet (%s)', (_topology, factory) => {
  const clients = withClients();
  const closers: (() => Promise<unknown>)[] = [];

  afterEach(async () => {
    await Promise.allSettled(closers.splice(0).map((close) => close()));
    await clients.closeAll();
  });

  const connect = (): RedisClient => clients.track(factory());
  const managerOf = async <V>(ns: string, opts: PubSubCacheManagerOptions = {}, storeOpts: PubSubRedisDictOptions<V> = {}): Promise<PubSubCacheManager<V>> => {
    const m = new PubSubCacheManager<V>(new PubSubRedisDict<V>(connect(), ns, storeOpts), opts);
    closers.push(() => m.close());
    await m.ready();
    return m;
  };

  it('a hit returns the cached value; a miss loads once for concurrent callers and stores with ttlMs', async () => {
    const ns = uniqueNamespace('gos-basic');
    const m = await managerOf<string>(ns);
    const redis = connect();
    const dict = new RedisDict<string>(redis, ns);
    let calls = 0;
    const loader = async (): Promise<string> => {
      calls++;
      return 'loaded';
    };
    const values = await Promise.all(Array.from({ length: 20 }, () => m.getOrSet('k', loader, { ttlMs: 60_000 })));
    expect(values).toEqual(Array(20).fill('loaded'));
    expect(calls).toBe(1);
    expect(await dict.get('k')).toBe('loaded');
    expect(await redis.pttl(dict.redisKey('k'))).toBeGreaterThan(50_000);
    const hits = m.stats().hits;
    expect(await m.getOrSet('k', loader)).toBe('loaded');
    expect(m.stats().hits).toBe(hits + 1);
    expect(calls).toBe(1);
    expect(m.stats().loads).toBe(1);
    // A value already in Redis is read, not loaded.
    await dict.set('other', 'stored');
    expect(await m.getOrSet('other', loader)).toBe('stored');
    expect(calls).toBe(1);
  });

  it('100 concurrent callers over 4 instances call the loader once', async () => {
    const ns = uniqueNamespace('gos-fleet');
    const ms = await Promise.all(Array.from({ length: 4 }, () => managerOf<number>(ns)));
    const release = gate<number>();
    let calls = 0;
    const loader = (): Promise<number> => {
      calls++;
      return release.promise;
    };
    const results = Promise.all(Array.from({ length: 100 }, (_, i) => ms[i % 4]!.getOrSet('k', loader, { ttlMs: 60_000 })));
    // Every other instance is waiting for the lock before the loader finishes.
    await pollUntil(() => ms.reduce((n, m) => n + m.stats().lockWaits, 0) === 3 && calls === 1, { message: 'instances did not all wait' });
    release.open(42);
    expect(await results).toEqual(Array(100).fill(42));
    expect(calls).toBe(1);
    expect(ms.reduce((n, m) => n + m.stats().loads, 0)).toBe(1);
    expect(await connect().exists(ms[0]!.store.lockKey('k'))).toBe(0);
  });

  it('a loader that throws rejects its callers with E_LOADER (cause kept) and releases the lock', async () => {
    const ns = uniqueNamespace('gos-error');
    const [a, b] = await Promise.all([managerOf<string>(ns), managerOf<string>(ns)]);
    const cause = new Error('database down');
    const started = gate<void>();
    const release = gate<string>();
    const failing = (): Promise<string> => {
      started.open();
      return release.promise;
    };
    const errors: string[] = [];
    a.on('loadError', (key) => errors.push(key));
    const first = Promise.all([a.getOrSet('k', failing), a.getOrSet('k', failing)].map((p) => rejection(p)));
    await started.promise;
    const waiting = b.getOrSet('k', () => 'from-b');
    await pollUntil(() => b.stats().lockWaits === 1);
    release.fail(cause);
    for (const error of await first) {
      expect(error).toBeInstanceOf(LoaderError);
      expect(error.code).toBe('E_LOADER');
      expect(error.cause).toBe(cause);
    }
    expect(errors).toEqual(['k']);
    expect(a.stats().loadErrors).toBe(1);
    // The lock was released: the waiting instance takes over and loads.
    expect(await waiting).toBe('from-b');
    expect(await a.getOrSet('k', failing)).toBe('from-b');
  });

  it('the load lock is invisible to size() and iteration, and lives in the slot of its key', async () => {
    const ns = uniqueNamespace('gos-lock');
    const m = await managerOf<string>(ns);
    const release = gate<string>();
    const loading = m.getOrSet('user:{42}:name', () => release.promise);
    const redis = connect();
    const lockKey = m.store.lockKey('user:{42}:name');
    await pollUntil(async () => (await redis.exists(lockKey)) === 1);
    if (isCluster(redis)) {
      expect(slotOf(lockKey)).toBe(slotOf(m.store.redisKey('user:{42}:name')));
      expect(slotOf(m.store.lockKey('plain'))).toBe(slotOf(m.store.redisKey('plain')));
    }
    expect(await m.size()).toBe(0);
    const keys: string[] = [];
    for await (const key of m.keys()) keys.push(key);
    expect(keys).toEqual([]);
    release.open('v');
    expect(await loading).toBe('v');
    expect(await m.size()).toBe(1);
  });

  it('the lock expires by its own TTL when the loading instance goes away mid-load', async () => {
    const ns = uniqueNamespace('gos-dead');
    const a = await managerOf<string>(ns);
    const b = await managerOf<string>(ns);
    // A's loader never finishes; A is closed mid-load (as a crashed process would stop).
    const orphan = a.getOrSet('k', () => new Promise<string>(() => undefined), { lockTtlMs: 300 });
    await pollUntil(() => a.stats().loads === 1);
    await a.close();
    expect((await rejection(orphan)).code).toBe('E_CLOSED');
    const redis = connect();
    expect(await redis.exists(b.store.lockKey('k'))).toBe(1);
    let calls = 0;
    const value = await b.getOrSet('k', () => {
      calls++;
      return 'b';
    });
    expect(value).toBe('b');
    expect(calls).toBe(1);
    expect(b.stats().lockWaits).toBe(1);
  });

  it('stale-while-revalidate: serves the previous value at once while one refresh replaces it; a failed refresh is reported and retried', async () => {
    const ns = uniqueNamespace('gos-swr');
    const clock = manualClock();
    const m = await managerOf<string>(ns, { clock: clock.now }, { clock: clock.now });
    const stale = staleEvents(m as PubSubCacheManager<unknown>);
    const opts = { ttlMs: 1_000, staleWhileRevalidateMs: 60_000 };
    expect(await m.getOrSet('k', () => 'v1', opts)).toBe('v1');
    clock.advance(1_001);
    expect(await m.get('k')).toBeUndefined(); // get() never serves an expired entry
    // A failing refresh: the stale value is served, the failure reported.
    const failed = new Promise((resolve) => m.once('loadError', resolve));
    expect(await m.getOrSet('k', () => Promise.reject(new Error('nope')), opts)).toBe('v1');
    await failed;
    // The next call serves the stale value again and refreshes again, this time successfully.
    const release = gate<string>();
    let calls = 0;
    const refresh = (): Promise<string> => {
      calls++;
      return release.promise;
    };
    expect(await m.getOrSet('k', refresh, opts)).toBe('v1');
    expect(await m.getOrSet('k', refresh, opts)).toBe('v1'); // refresh in flight: not started twice
    await pollUntil(() => calls === 1, { message: 'the refresh did not call the loader' });
    expect(await m.getOrSet('k', refresh, opts)).toBe('v1');
    release.open('v2');
    await pollUntil(async () => (await m.getOrSet('k', refresh, opts)) === 'v2', { message: 'the refresh never landed' });
    expect(calls).toBe(1);
    expect(m.stats().refreshes).toBe(2);
    expect(m.stats().loadErrors).toBe(1);
    expect(stale.filter(([, reason]) => reason === 'revalidate').length).toBeGreaterThanOrEqual(3);
    // Past the window, the stale value is no longer served: the caller waits for a load.
    clock.advance(1_001 + 60_000);
    expect(await m.getOrSet('k', () => 'v3', opts)).toBe('v3');
  });

  it('timeoutMs: rejects with E_TIMEOUT without a stale value, returns the stale value with one; the load finishes in the background', async () => {
    const ns = uniqueNamespace('gos-timeout');
    const clock = manualClock();
    const m = await managerOf<string>(ns, { clock: clock.now }, { clock: clock.now });
    const stale = staleEvents(m as PubSubCacheManager<unknown>);
    const slow = gate<string>();
    const error = await rejection(m.getOrSet('k', () => slow.promise, { timeoutMs: 50, ttlMs: 1_000 }));
    expect(error.code).toBe('E_TIMEOUT');
    slow.open('late');
    await pollUntil(async () => (await m.get('k')) === 'late', { message: 'the background load was not stored' });
    // Expired, within grace: a slow load answers with the stale value.
    clock.advance(1_001);
    const slower = gate<string>();
    const opts = { timeoutMs: 50, ttlMs: 1_000, graceMs: 60_000 };
    expect(await m.getOrSet('k', () => slower.promise, opts)).toBe('late');
    expect(stale).toEqual([['k', 'timeout']]);
    expect(m.stats().staleServed).toBe(1);
    slower.open('fresh');
    await pollUntil(async () => (await m.get('k')) === 'fresh', { message: 'the background load was not stored' });
  });

  it('graceMs: a failing loader serves the last value up to graceMs after its expiry, never longer', async () => {
    const ns = uniqueNamespace('gos-grace');
    const clock = manualClock();
    const m = await managerOf<string>(ns, { clock: clock.now }, { clock: clock.now });
    const stale = staleEvents(m as PubSubCacheManager<unknown>);
    const opts = { ttlMs: 1_000, graceMs: 5_000 };
    expect(await m.getOrSet('k', () => 'v', opts)).toBe('v');
    clock.advance(1_001);
    const failing = (): string => {
      throw new Error('source down');
    };
    expect(await m.getOrSet('k', failing, opts)).toBe('v');
    expect(stale).toEqual([['k', 'grace']]);
    clock.advance(4_000); // 5,001 ms after the write: 4,001 after expiry, still within grace
    expect(await m.getOrSet('k', failing, opts)).toBe('v');
    clock.advance(1_000); // 5,001 after expiry: past the grace
    expect((await rejection(m.getOrSet('k', failing, opts))).code).toBe('E_LOADER');
    expect(m.stats().staleServed).toBe(2);
  });

  it('refuses bad options and a loader that is not a function', async () => {
    const m = await managerOf<string>(uniqueNamespace('gos-args'));
    for (const options of [{ ttl: 1 }, { graceMs: -1 }, { timeoutMs: 0 }, { staleWhileRevalidateMs: 'x' }, { lockTtlMs: 1.5 }, null]) {
      expect((await rejection(m.getOrSet('k', () => 'v', options as never))).code).toBe('E_INVALID_OPTION');
    }
    expect((await rejection(m.getOrSet('k', 'v' as never))).code).toBe('E_INVALID_ARGUMENT');
    expect((await rejection(m.getOrSet('', () => 'v'))).code).toBe('E_INVALID_KEY');
    expect(await m.store.get('k')).toBeUndefined();
  });

  it('WriteBackCacheManager: a dirty key is a hit; a loaded value is written at once', async () => {
    const ns = uniqueNamespace('gos-wb');
    const w = new WriteBackCacheManager<string>(new PubSubRedisDict<string>(connect(), ns), { flushIntervalMs: 0 });
    closers.push(() => w.close());
    await w.ready();
    await w.set('dirty', 'local');
    expect(await w.getOrSet('dirty', () => 'loaded')).toBe('local');
    expect(await w.getOrSet('k', () => 'loaded', { ttlMs: 60_000 })).toBe('loaded');
    const dict = new RedisDict<string>(connect(), ns);
    expect(await dict.get('k')).toBe('loaded');
    expect(w.isDirty('k')).toBe(false);
  });
});

describe('getOrSet with Redis down', () => {
  let server: RedisServerHandle | undefined;
  const closers: (() => Promise<unknown>)[] = [];

  afterEach(async () => {
    await Promise.allSettled(closers.splice(0).map((close) => close()));
    await server?.stop();
    server = undefined;
  });

  it('graceMs: with the server killed, serves the last known value within the grace, then fails', async () => {
    server = await startServer();
    const clock = manualClock();
    const redis = new Redis(server.port, server.host, { enableOfflineQueue: false, maxRetriesPerRequest: 0, retryStrategy: () => 100 });
    redis.on('error', () => undefined);
    closers.push(async () => redis.disconnect());
    const m = new PubSubCacheManager<string>(new PubSubRedisDict<string>(redis, uniqueNamespace('gos-down'), { clock: clock.now }), { clock: clock.now });
    m.on('error', () => undefined);
    closers.push(() => m.close());
    await m.ready();
    const stale = staleEvents(m as PubSubCacheManager<unknown>);
    const opts = { ttlMs: 1_000, graceMs: 10_000 };
    expect(await m.getOrSet('k', () => 'v', opts)).toBe('v');
    const down = new Promise((resolve) => m.once('down', resolve));
    await server.kill();
    await down;
    let calls = 0;
    const loader = (): string => {
      calls++;
      return 'never';
    };
    // Not expired yet, but the cache is not serving while the link is down: grace serves it.
    expect(await m.getOrSet('k', loader, opts)).toBe('v');
    clock.advance(1_001);
    expect(await m.getOrSet('k', loader, opts)).toBe('v');
    expect(stale).toEqual([
      ['k', 'grace'],
      ['k', 'grace'],
    ]);
    expect(m.stats().staleServed).toBe(2);
    clock.advance(10_000); // past the grace
    const error = await m.getOrSet('k', loader, opts).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(Error);
    expect(calls).toBe(0); // Redis could not even be read: the loader is never called blind
  });
});
