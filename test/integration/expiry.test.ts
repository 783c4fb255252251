/**
 * Expiry stored in Redis (issue #15, part 1), on a standalone server and a 3+3 cluster.
 *
 * - `set(k, v, { ttlMs })` writes an expiring record (`x`) whose key Redis expires by PEXPIREAT;
 *   a record without expiry stays byte-identical to the `v` format;
 * - reads, `getMany`, `has`, iteration and `size()` never return an expired entry, and an expired
 *   key leaves no tombstone;
 * - near caches stop serving an entry at its expiry with no message in between (checked with an
 *   injected clock on the peer, and with real time), and a value read from Redis is cached only
 *   until its expiry;
 * - a write-back change keeps its expiry time through a later flush;
 * - unknown per-call options are refused with `E_INVALID_OPTION` and write nothing.
 *
 * Waiting is done on events, promises or `pollUntil` with a deadline, never by sleeping.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { PubSubCacheManager } from '../../src/cache/cache-manager.js';
import { RedisDictError } from '../../src/errors.js';
import { PubSubRedisDict, type PubSubRedisDictOptions } from '../../src/store/pubsub-redis-dict.js';
import { RedisDict } from '../../src/store/redis-dict.js';
import type { RedisClient } from '../../src/store/topology.js';
import { WriteBackCacheManager, type WriteBackCacheManagerOptions } from '../../src/write-back/manager.js';
import { pollUntil, topologies, uniqueNamespace, withClients } from '../helpers/connections.js';
import { type PubSubCacheManagerOptions } from '../../src/cache/types.js';

/** A clock the test moves by hand, starting at the real time. */
function manualClock(): { now: () => number; advance: (ms: number) => void } {
  let offset = 0;
  return { now: () => Date.now() + offset, advance: (ms) => void (offset += ms) };
}

async function expectCode(promise: Promise<unknown>, code: string): Promise<void> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(RedisDictError);
  expect((error as RedisDictError).code).toBe(code);
}

describe.each(topologies())('expiry (%s)', (_topology, factory) => {
  const clients = withClients();
  const closers: (() => Promise<unknown>)[] = [];

  afterEach(async () => {
    await Promise.allSettled(closers.splice(0).map((close) => close()));
    await clients.closeAll();
  });

  const connect = (): RedisClient => clients.track(factory());
  const storeOf = <V>(ns: string, opts: PubSubRedisDictOptions<V> = {}): PubSubRedisDict<V> => new PubSubRedisDict<V>(connect(), ns, opts);
  const managerOf = async <V>(ns: string, opts: PubSubCacheManagerOptions = {}, storeOpts: PubSubRedisDictOptions<V> = {}): Promise<PubSubCacheManager<V>> => {
    const m = new PubSubCacheManager<V>(storeOf<V>(ns, storeOpts), opts);
    closers.push(() => m.close());
    await m.ready();
    return m;
  };
  const writeBackOf = async <V>(ns: string, opts: WriteBackCacheManagerOptions<V> = {}, storeOpts: PubSubRedisDictOptions<V> = {}): Promise<WriteBackCacheManager<V>> => {
    const m = new WriteBackCacheManager<V>(storeOf<V>(ns, storeOpts), { flushIntervalMs: 0, ...opts });
    closers.push(() => m.close());
    await m.ready();
    return m;
  };

  it('stores an expiring record that Redis expires, and keeps records without expiry in the `v` format', async () => {
    const redis = connect();
    const dict = new RedisDict<string>(redis, uniqueNamespace('exp-format'));
    await dict.set('plain', 'a');
    await dict.set('timed', 'b', { ttlMs: 60_000 });
    const plain = (await redis.getBuffer(dict.redisKey('plain')))!;
    const timed = (await redis.getBuffer(dict.redisKey('timed')))!;
    // Without expiry: `v`, the stamp, the payload, and no TTL, exactly as before.
    expect(plain.toString('latin1', 0, 1)).toBe('v');
    expect(plain.length).toBe(35 + dict.codec.encode('a').length);
    expect(await redis.pttl(dict.redisKey('plain'))).toBe(-1);
    // With expiry: `x`, the stamp, 16 digits of the expiry time, the payload; Redis expires the key then.
    expect(timed.toString('latin1', 0, 1)).toBe('x');
    const expiresAt = Number(timed.toString('latin1', 35, 51));
    const pexpiretime = Number(await redis.call('PEXPIRETIME', dict.redisKey('timed')));
    expect(pexpiretime).toBe(expiresAt);
    expect(expiresAt).toBeGreaterThan(Date.now() + 50_000);
    expect(await dict.get('timed')).toBe('b');
    // An overwrite without ttlMs removes the expiry.
    await dict.set('timed', 'c');
    expect(await redis.pttl(dict.redisKey('timed'))).toBe(-1);
  });

  it('never returns an expired entry, and an expired key leaves no tombstone', async () => {
    const redis = connect();
    const dict = new RedisDict<number>(redis, uniqueNamespace('exp-read'));
    await dict.setMany(
      [
        ['a', 1],
        ['b', 2],
      ],
      { ttlMs: 300 },
    );
    await dict.set('c', 3);
    expect(await dict.getMany(['a', 'b', 'c'])).toEqual([1, 2, 3]);
    await pollUntil(async () => (await dict.get('a')) === undefined, { message: 'a never expired' });
    expect(await dict.getMany(['a', 'b', 'c'])).toEqual([undefined, undefined, 3]);
    expect(await dict.has('b')).toBe(false);
    expect(await dict.size()).toBe(1);
    const entries: [string, number][] = [];
    for await (const entry of dict) entries.push(entry);
    expect(entries).toEqual([['c', 3]]);
    // Expired, not deleted: nothing is left in Redis, not even a tombstone.
    expect(await redis.exists(dict.redisKey('a'))).toBe(0);
    expect(await redis.exists(dict.redisKey('b'))).toBe(0);
  });

  it('stops returning an entry at its expiry by its own clock, before Redis expires the key', async () => {
    const clock = manualClock();
    const redis = connect();
    const ns = uniqueNamespace('exp-skew');
    const writer = new RedisDict<string>(redis, ns);
    const reader = new RedisDict<string>(redis, ns, { clock: clock.now });
    await writer.set('k', 'v', { ttlMs: 60_000 });
    expect(await reader.get('k')).toBe('v');
    clock.advance(60_001);
    expect(await reader.get('k')).toBeUndefined();
    expect(await reader.getMany(['k'])).toEqual([undefined]);
    expect(await reader.has('k')).toBe(false);
    // Redis, by its own clock, still holds it.
    expect(await writer.get('k')).toBe('v');
  });

  it('applies defaultTtlMs to writes without ttlMs; ttlMs: 0 means no expiry', async () => {
    const redis = connect();
    const dict = new RedisDict<string>(redis, uniqueNamespace('exp-default'), { defaultTtlMs: 60_000 });
    await dict.set('d', 'x');
    await dict.set('none', 'x', { ttlMs: 0 });
    await dict.set('own', 'x', { ttlMs: 120_000 });
    expect(await redis.pttl(dict.redisKey('d'))).toBeGreaterThan(50_000);
    expect(await redis.pttl(dict.redisKey('d'))).toBeLessThanOrEqual(60_000);
    expect(await redis.pttl(dict.redisKey('none'))).toBe(-1);
    expect(await redis.pttl(dict.redisKey('own'))).toBeGreaterThan(60_000);
  });

  it('refuses unknown per-call options and bad ttlMs with E_INVALID_OPTION, writing nothing', async () => {
    const redis = connect();
    const ns = uniqueNamespace('exp-options');
    const dict = new RedisDict<string>(redis, ns);
    const m = await managerOf<string>(uniqueNamespace('exp-options-m'));
    const w = await writeBackOf<string>(uniqueNamespace('exp-options-w'));
    const bad: unknown[] = [{ ttl: 5 }, { ttlMs: -1 }, { ttlMs: 1.5 }, { ttlMs: '5' }, { ttlMs: Number.MAX_SAFE_INTEGER }, 'ttl', null];
    for (const options of bad) {
      for (const target of [dict, m, w] as const) {
        await expectCode(target.set('k', 'v', options as never), 'E_INVALID_OPTION');
        await expectCode(target.setMany([['k', 'v']], options as never), 'E_INVALID_OPTION');
      }
    }
    expect(await dict.get('k')).toBeUndefined();
    expect(await m.get('k')).toBeUndefined();
    expect(w.dirtyCount).toBe(0);
    expect(() => new RedisDict(redis, ns, { defaultTtlMs: -5 })).toThrow(/defaultTtlMs/);
  });

  it('a peer stops serving a cached value at its expiry, with no message in between (update and invalidate)', async () => {
    for (const sync of ['update', 'invalidate'] as const) {
      const ns = uniqueNamespace(`exp-peer-${sync}`);
      const clock = manualClock();
      const a = await managerOf<string>(ns, { sync });
      const b = await managerOf<string>(ns, { sync, clock: clock.now }, { clock: clock.now });
      await a.set('k', 'old');
      await pollUntil(() => b.stats().eventsReceived >= 1);
      expect(await b.get('k')).toBe('old');
      const event = new Promise((resolve) => b.once(sync === 'update' ? 'update' : 'invalidate', resolve));
      await a.set('k', 'v', { ttlMs: 60_000 });
      // update: installed from the message; invalidate: dropped, then read from Redis.
      await event;
      expect(await b.get('k')).toBe('v');
      const hits = b.stats().hits;
      expect(await b.get('k')).toBe('v');
      expect(b.stats().hits).toBe(hits + 1);
      expect(b.cache.peek('k')?.expiresAt).toBe(a.cache.peek('k')?.expiresAt);
      const received = b.stats().eventsReceived;
      clock.advance(60_001);
      // Expired by B's clock: not served from the cache, and the record read from Redis is expired too.
      expect(await b.get('k')).toBeUndefined();
      expect(b.stats().eventsReceived).toBe(received);
      expect(b.cache.peek('k')?.present ?? false).toBe(false);
    }
  });

  it('caches a value read from Redis only until its expiry', async () => {
    const ns = uniqueNamespace('exp-read-cache');
    const clock = manualClock();
    const dict = new RedisDict<string>(connect(), ns);
    const m = await managerOf<string>(ns, {}, { clock: clock.now });
    await dict.set('k', 'v', { ttlMs: 30_000 });
    expect(await m.get('k')).toBe('v');
    const entry = m.cache.peek('k')!;
    expect(entry.expiresAt).toBeGreaterThan(Date.now() + 20_000);
    expect(entry.expiresAt).toBeLessThanOrEqual(Date.now() + 30_000);
    const misses = m.stats().misses;
    clock.advance(30_001);
    expect(await m.get('k')).toBeUndefined();
    expect(m.stats().misses).toBe(misses + 1);
  });

  it('in real time: a peer serves the value until it expires, then nothing, with no message', async () => {
    const ns = uniqueNamespace('exp-real');
    const a = await managerOf<string>(ns, { sync: 'update' });
    const b = await managerOf<string>(ns, { sync: 'update' });
    await a.set('k', 'old');
    await pollUntil(() => b.stats().eventsReceived >= 1);
    expect(await b.get('k')).toBe('old');
    const event = new Promise((resolve) => b.once('update', resolve));
    await a.set('k', 'v', { ttlMs: 400 });
    await event;
    expect(await b.get('k')).toBe('v');
    const received = b.stats().eventsReceived;
    await pollUntil(async () => (await b.get('k')) === undefined, { message: 'peer kept serving an expired entry' });
    expect(b.stats().eventsReceived).toBe(received);
    expect(await a.get('k')).toBeUndefined();
  });

  it('write-back: the expiry time is fixed by set() and kept through a later flush', async () => {
    const ns = uniqueNamespace('exp-wb');
    const clock = manualClock();
    const w = await writeBackOf<string>(ns, { clock: clock.now }, { clock: clock.now });
    const redis = connect();
    const store = new RedisDict<string>(redis, ns);
    const before = clock.now();
    await w.set('k', 'v', { ttlMs: 60_000 });
    const after = clock.now();
    clock.advance(10_000);
    await w.flush();
    const pexpiretime = Number(await redis.call('PEXPIRETIME', store.redisKey('k')));
    expect(pexpiretime).toBeGreaterThanOrEqual(before + 60_000);
    expect(pexpiretime).toBeLessThanOrEqual(after + 60_000);
    expect(w.cache.peek('k')?.expiresAt).toBe(pexpiretime);
    expect(await store.get('k')).toBe('v');
  });

  it('write-back: a dirty change stops being served at its expiry (not the older clean value), and its flush leaves nothing', async () => {
    const ns = uniqueNamespace('exp-wb-dirty');
    const redis = connect();
    const store = new RedisDict<string>(redis, ns);
    await store.set('k', 'old');
    const w = await writeBackOf<string>(ns);
    expect(await w.get('k')).toBe('old');
    await w.set('k', 'new', { ttlMs: 300 });
    expect(await w.get('k')).toBe('new');
    await pollUntil(async () => (await w.get('k')) === undefined, { message: 'the expired change was still served' });
    expect(w.isDirty('k')).toBe(true);
    expect(await w.getMany(['k'])).toEqual([undefined]);
    // The flush writes the change with its past expiry time: Redis drops the key at once.
    await w.flush();
    expect(await redis.exists(store.redisKey('k'))).toBe(0);
    expect(await store.get('k')).toBeUndefined();
  });
  it('write-back: a pending change to a key whose remote value expired meanwhile is written without conflict (both policies)', async () => {
    for (const conflictPolicy of ['last-writer-wins', 'discard-on-remote-update'] as const) {
      const ns = uniqueNamespace(`exp-wb-policy-${conflictPolicy}`);
      const a = await managerOf<string>(ns);
      const w = await writeBackOf<string>(ns, { conflictPolicy });
      const conflicts: unknown[] = [];
      w.on('conflict', (c) => conflicts.push(c));
      await a.set('k', 'remote', { ttlMs: 300 });
      await pollUntil(() => w.stats().eventsReceived >= 1);
      await w.set('k', 'local'); // after the remote write: not concurrent with it
      const redis = connect();
      await pollUntil(async () => (await redis.exists(a.store.redisKey('k'))) === 0, { message: 'the remote value never expired' });
      const report = await w.flush();
      expect(report.written).toEqual(['k']);
      expect(report.conflicts).toEqual([]);
      expect(conflicts).toEqual([]);
      expect(await a.store.get('k')).toBe('local');
      expect(await redis.pttl(a.store.redisKey('k'))).toBe(-1);
    }
  });
});
