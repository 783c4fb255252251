/**
 * What users bring along: their own `LRUCache` from another copy or version of lru-cache (here
 * lru-cache 10, the `lru-cache10` npm alias), and the figures an operator reads (evictions, resync
 * and flush durations) that the OpenTelemetry instrumentation (`redis-pubsub-dict/otel`) exports.
 *
 * Real Redis (the standalone server of the global setup), no mocks.
 */
import { Redis as Redis5 } from 'ioredis5';
import { LRUCache as LRUCache10 } from 'lru-cache10';
import { afterEach, describe, expect, it } from 'vitest';
import { PubSubCacheManager } from '../../src/cache/cache-manager.js';
import { InvalidArgumentError } from '../../src/errors.js';
import { PubSubRedisDict } from '../../src/store/pubsub-redis-dict.js';
import { WriteBackCacheManager } from '../../src/write-back/manager.js';
import { pollUntil, redisEndpoints, standaloneClient, uniqueNamespace, withClients } from '../helpers/connections.js';
import { forceResync } from '../helpers/resync.js';
import { type PubSubCacheManagerOptions } from '../../src/cache/types.js';

const clients = withClients({ closeAfter: 'each' });
const managers: PubSubCacheManager<unknown>[] = [];
/** Clients of ioredis 5 (not the suite's ioredis, so not for `clients.track`). */
const foreignClients: Redis5[] = [];

afterEach(async () => {
  await Promise.all(managers.splice(0).map((m) => m.close()));
  await Promise.all(foreignClients.splice(0).map((c) => c.quit().catch(() => c.disconnect())));
});

function manager<V>(ns: string, opts: PubSubCacheManagerOptions = {}): PubSubCacheManager<V> {
  const m = new PubSubCacheManager<V>(new PubSubRedisDict<V>(clients.track(standaloneClient()), ns), opts);
  managers.push(m as PubSubCacheManager<unknown>);
  return m;
}

describe('ioredis: a client of another copy of ioredis than the one the library imports', () => {
  it('an ioredis 5 client (the ioredis5 alias) works with the library and stays coherent with a peer on the suite ioredis', async () => {
    const ns = uniqueNamespace('interop-ioredis5');
    const foreign = new Redis5(redisEndpoints().standalone.url);
    foreignClients.push(foreign);
    const a = new PubSubCacheManager<{ n: number }>(new PubSubRedisDict<{ n: number }>(foreign, ns));
    managers.push(a as PubSubCacheManager<unknown>);
    const b = manager<{ n: number }>(ns);
    await Promise.all([a.ready(), b.ready()]);
    // Framed script calls (the library's Command subclass) sent by the foreign client.
    await a.setMany([['k1', { n: 1 }], ['k2', { n: 2 }]]);
    expect(await b.getMany(['k1', 'k2'])).toEqual([{ n: 1 }, { n: 2 }]);
    expect(await a.get('k1')).toEqual({ n: 1 });
    // Events both ways: b's cached entry is invalidated by a's write, and a's by b's.
    await a.set('k1', { n: 10 });
    await pollUntil(async () => (await b.get('k1'))?.n === 10, { timeoutMs: 5_000 });
    await b.delete('k2');
    await pollUntil(async () => (await a.get('k2')) === undefined, { timeoutMs: 5_000 });
    expect(await a.store.get('k1')).toEqual({ n: 10 });
  });
});

describe('cache option: an LRUCache from another copy or version of lru-cache', () => {
  it('accepts an lru-cache 10 instance and uses it as the storage (LRU order, evictions)', async () => {
    const lru = new LRUCache10<string, object>({ max: 3 });
    const m = manager<number>(uniqueNamespace('interop-lru10'), { cache: lru });
    await m.ready();
    await m.setMany([1, 2, 3, 4, 5].map((n) => [`k${n}`, n]));
    expect(lru.size).toBe(3);
    expect(m.cache.size).toBe(3);
    expect([...lru.keys()].sort()).toEqual(['k3', 'k4', 'k5']);
    expect(await m.get('k5')).toBe(5);
    expect(m.stats().hits).toBe(1);
    expect(await m.get('k1')).toBe(1);
    expect(m.stats().misses).toBe(1);
  });

  it('refuses, with E_INVALID_OPTION, objects that lack the methods used (a Map has no peek)', () => {
    const store = new PubSubRedisDict(clients.track(standaloneClient()), uniqueNamespace('interop-bad'));
    for (const bad of [new Map(), {}, { get() {}, set() {} }, [], () => 1]) {
      let error: unknown;
      try {
        managers.push(new PubSubCacheManager(store, { cache: bad as never }));
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(InvalidArgumentError);
      expect((error as InvalidArgumentError).code).toBe('E_INVALID_OPTION');
    }
  });
});

describe('stats and events for monitoring', () => {
  it('stats().evictions counts the entries the LRU evicted to stay within `cache`', async () => {
    const m = manager<number>(uniqueNamespace('interop-evict'), { cache: 3 });
    await m.ready();
    expect(m.stats().evictions).toBe(0);
    await m.setMany([1, 2, 3, 4, 5].map((n) => [`k${n}`, n]));
    expect(m.stats().evictions).toBe(2);
    // Replacing or deleting a cached entry is not an eviction.
    await m.set('k5', 50);
    await m.delete('k4');
    expect(m.stats().evictions).toBe(2);
    expect(m.stats().size).toBe(3); // k3, k5 and k4 as a cached miss
  });

  it("a resync's report carries its duration", async () => {
    const m = manager<string>(uniqueNamespace('interop-resync'));
    await m.ready();
    await m.set('a', 'x');
    const info = await forceResync(m as PubSubCacheManager<unknown>, clients.track(standaloneClient()), 'a');
    expect(typeof info.durationMs).toBe('number');
    expect(info.durationMs).toBeGreaterThanOrEqual(0);
    expect(Number.isFinite(info.durationMs)).toBe(true);
  });

  it("a flush's report carries its duration", async () => {
    const m = new WriteBackCacheManager<string>(new PubSubRedisDict<string>(clients.track(standaloneClient()), uniqueNamespace('interop-flush')));
    managers.push(m as PubSubCacheManager<unknown>);
    await m.ready();
    await m.set('a', 'x');
    const flushed = new Promise<number>((resolve) => m.once('flush', (report) => resolve(report.durationMs)));
    const report = await m.flush();
    expect(report.written).toEqual(['a']);
    expect(report.durationMs).toBeGreaterThanOrEqual(0);
    expect(await flushed).toBe(report.durationMs);
  });
});
