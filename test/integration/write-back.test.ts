/**
 * WriteBackCacheManager against real Redis, on the standalone server and on the 3+3 cluster:
 * local writes and dirty tracking, batched flushes, automatic flushes, I6 (eviction), I7 (a change
 * during an in-flight flush), backpressure, the three conflict policies with two and three
 * instances, and I3 (no silent loss) over a seeded sequence of writes.
 *
 * Stamp order between instances is made deterministic with the store's injected wall clock
 * (`new PubSubRedisDict(redis, ns, { clock })`): an instance whose clock reads 2000 writes newer
 * stamps than one whose clock reads 1000 (until it observes a newer stamp, as a hybrid clock must).
 * Every test uses its own namespace; raw `RedisDict`s on their own connections check what Redis
 * really holds (a plain `RedisDict` publishes nothing, which is how a "remote write whose message
 * was not delivered" is made).
 */
import { setImmediate as nextMacrotask } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { BackpressureError, FlushError } from '../../src/errors.js';
import { PubSubRedisDict } from '../../src/store/pubsub-redis-dict.js';
import { RedisDict } from '../../src/store/redis-dict.js';
import { parseStamp } from '../../src/protocol/stamp.js';
import type { RedisClient } from '../../src/store/topology.js';
import type { ConflictResolver } from '../../src/write-back/conflict.js';
import { CloseFlushError, WriteBackCacheManager, type WriteBackCacheManagerOptions } from '../../src/write-back/manager.js';
import { closeClient, pollUntil, topologies, uniqueNamespace, withClients } from '../helpers/connections.js';
import { NO_AUTO_FLUSH, rejection, sorted } from '../helpers/assertions.js';
import { startServer } from '../helpers/harness.js';
import { forceResync, onceAfterStampsRead } from '../helpers/resync.js';
import { type Conflict, type FlushReport } from '../../src/cache/types.js';
import { type OutcomeListener, type VersionedChange, type WriteOutcome } from '../../src/store/types.js';

/** A wall clock stuck at `ms` (the hybrid clock still hands out strictly increasing stamps). */
const at = (ms: number) => (): number => ms;

/** Deterministic PRNG (mulberry32) for the seeded I3 run. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}


/** `INFO commandstats` calls of `command` (0 when never called). */
async function commandCalls(redis: Redis, command: string): Promise<number> {
  const info = await redis.info('commandstats');
  const match = new RegExp(`^cmdstat_${command}:calls=(\\d+)`, 'm').exec(info);
  return match ? Number(match[1]) : 0;
}

describe.each(topologies())('WriteBackCacheManager (%s)', (topology, factory) => {
  const clients = withClients();
  const managers = new Set<{ close(): Promise<void> }>();

  afterEach(async () => {
    // Tests close what they assert on; what is left is closed here. A manager left with changes it
    // could not write rejects with CloseFlushError by design.
    const open = [...managers];
    managers.clear();
    await Promise.all(
      open.map((m) =>
        m.close().catch((error: unknown) => {
          if (!(error instanceof CloseFlushError)) throw error;
        }),
      ),
    );
    await clients.closeAll();
  });

  const connect = (): RedisClient => clients.track(factory());

  /** A write-back manager on its own connection and store; automatic flushes off unless asked. */
  async function wb<V>(ns: string, options: WriteBackCacheManagerOptions<V> & { clock?: () => number } = {}): Promise<WriteBackCacheManager<V>> {
    const { clock, ...managerOptions } = options;
    const store = new PubSubRedisDict<V>(connect(), ns, clock ? { clock } : undefined);
    const m = new WriteBackCacheManager<V>(store, { flushIntervalMs: 0, ...managerOptions });
    managers.add(m);
    await m.ready();
    return m;
  }

  /** A plain (publish-less) dictionary on its own connection: what Redis really holds. */
  const raw = <V>(ns: string, clock?: () => number): RedisDict<V> => new RedisDict<V>(connect(), ns, clock ? { clock } : undefined);

  /** Every conflict `m` reports, in order. */
  function conflictsOf<V>(m: WriteBackCacheManager<V>): Conflict<V>[] {
    const seen: Conflict<V>[] = [];
    m.on('conflict', (c) => seen.push(c));
    return seen;
  }

  const nextConflict = <V>(m: WriteBackCacheManager<V>): Promise<Conflict<V>> => new Promise((resolve) => m.once('conflict', resolve));
  const nextFlush = <V>(m: WriteBackCacheManager<V>): Promise<FlushReport<V>> => new Promise((resolve) => m.once('flush', resolve));

  // ------------------------------------------------------------------ local writes and flush

  describe('local writes, dirty tracking and flush', () => {
    it('keeps sets and deletes local until flush, then Redis holds all of them', async () => {
      const ns = uniqueNamespace('wb-local');
      const reader = raw<unknown>(ns);
      await reader.set('gone', 'old');
      const m = await wb<unknown>(ns);

      await m.set('a', 1);
      await m.set('b', { x: [1, 2] });
      await m.set(7, 'seven');
      expect(await m.delete('gone')).toBe(true);
      expect(await m.delete('never-there')).toBe(false);

      // Nothing reached Redis yet.
      expect(await reader.getMany(['a', 'b', '7', 'never-there'])).toEqual([undefined, undefined, undefined, undefined]);
      expect(await reader.get('gone')).toBe('old');
      expect(await reader.size()).toBe(1);

      // Dirty tracking.
      expect(sorted(m.dirtyKeys())).toEqual(['7', 'a', 'b', 'gone', 'never-there']);
      expect(m.dirtyCount).toBe(5);
      expect(m.isDirty('a')).toBe(true);
      expect(m.isDirty(7)).toBe(true);
      expect(m.isDirty('gone')).toBe(true);
      expect(m.isDirty('other')).toBe(false);
      expect(m.stats()).toMatchObject({ dirty: 5, flushes: 0, flushedKeys: 0, conflicts: 0, flushErrors: 0 });

      const events: FlushReport<unknown>[] = [];
      m.on('flush', (r) => events.push(r));
      const report = await m.flush();
      expect(sorted(report.written)).toEqual(['7', 'a', 'b', 'gone', 'never-there']);
      expect(report.conflicts).toEqual([]);
      expect(report.failed).toEqual([]);
      expect(events).toEqual([report]);

      expect(await reader.getMany(['a', 'b', '7', 'gone', 'never-there'])).toEqual([1, { x: [1, 2] }, 'seven', undefined, undefined]);
      expect(await reader.size()).toBe(3);
      expect(m.dirtyKeys()).toEqual([]);
      expect(m.isDirty('a')).toBe(false);
      expect(m.stats()).toMatchObject({ dirty: 0, flushes: 1, flushedKeys: 5, conflicts: 0, flushErrors: 0 });

      // A flush with nothing dirty writes nothing.
      expect(await m.flush()).toEqual({ written: [], conflicts: [], failed: [], durationMs: expect.any(Number) });
    });

    it('coalesces repeated changes of a key into one write', async () => {
      const ns = uniqueNamespace('wb-coalesce');
      const reader = raw<unknown>(ns);
      const m = await wb<unknown>(ns);
      for (let i = 0; i < 10; i++) await m.set('k', i);
      await m.set('x', 1);
      await m.delete('x');
      await m.set('y', 'first');
      await m.delete('y');
      await m.set('y', 'last');
      expect(m.dirtyCount).toBe(3);

      const report = await m.flush();
      expect(sorted(report.written)).toEqual(['k', 'x', 'y']);
      expect(await reader.getMany(['k', 'x', 'y'])).toEqual([9, undefined, 'last']);
      expect(m.stats().flushedKeys).toBe(3);
    });

    it('reads its own writes, whatever Redis holds', async () => {
      const ns = uniqueNamespace('wb-ryw');
      const reader = raw<string>(ns);
      await reader.setMany([
        ['remote', 'from-redis'],
        ['shadowed', 'from-redis'],
        ['doomed', 'from-redis'],
      ]);
      const m = await wb<string>(ns);

      expect(await m.get('remote')).toBe('from-redis');
      await m.set('shadowed', 'local');
      await m.set('new', 'local-new');
      expect(await m.delete('doomed')).toBe(true);

      expect(await m.get('shadowed')).toBe('local');
      expect(await m.get('new')).toBe('local-new');
      expect(await m.get('doomed')).toBeUndefined();
      expect(await m.has('doomed')).toBe(false);
      expect(await m.has('new')).toBe(true);
      expect(await m.getMany(['remote', 'shadowed', 'new', 'doomed', 'missing'])).toEqual(['from-redis', 'local', 'local-new', undefined, undefined]);
      // Redis is untouched until the flush.
      expect(await reader.getMany(['shadowed', 'new', 'doomed'])).toEqual(['from-redis', undefined, 'from-redis']);

      await m.flush();
      expect(await reader.getMany(['remote', 'shadowed', 'new', 'doomed'])).toEqual(['from-redis', 'local', 'local-new', undefined]);
      // After the flush the written values are served from the cache.
      const { misses } = m.stats();
      expect(await m.getMany(['shadowed', 'new', 'doomed'])).toEqual(['local', 'local-new', undefined]);
      expect(m.stats().misses).toBe(misses);
    });

    it('its cache view holds clean entries: a dirty key keeps its clean entry until the flush replaces it', async () => {
      const ns = uniqueNamespace('wb-view');
      const reader = raw<string>(ns);
      await reader.setMany([
        ['k', 'from-redis'],
        ['gone', 'from-redis'],
      ]);
      const m = await wb<string>(ns);
      expect(await m.getMany(['k', 'gone'])).toEqual(['from-redis', 'from-redis']);
      const clean = m.cache.peek('k');
      expect(clean).toMatchObject({ value: 'from-redis', present: true });

      await m.set('k', 'local');
      await m.delete('gone');
      await m.set('new', 'local-new');
      // Reads see the local changes; the view still shows what Redis holds.
      expect(await m.getMany(['k', 'gone', 'new'])).toEqual(['local', undefined, 'local-new']);
      expect(m.cache.peek('k')).toEqual(clean);
      expect(m.cache.peek('gone')?.value).toBe('from-redis');
      expect(m.cache.has('new')).toBe(false);

      await m.flush();
      expect(m.cache.peek('k')).toMatchObject({ value: 'local', present: true });
      expect(m.cache.peek('k')!.stamp > clean!.stamp).toBe(true);
      expect(m.cache.peek('gone')).toMatchObject({ value: undefined, present: false });
      expect(m.cache.peek('new')).toMatchObject({ value: 'local-new', present: true });
      const { misses } = m.stats();
      expect(await m.getMany(['k', 'gone', 'new'])).toEqual(['local', undefined, 'local-new']);
      expect(m.stats().misses).toBe(misses);
    });

    it('a flush that completes while a resync revalidates does not leave the older clean entry cached', async () => {
      const ns = uniqueNamespace('wb-resync-flush');
      const key = '{rw}k';
      await raw<string>(ns).set(key, 'v1');
      const m = await wb<string>(ns);
      expect(await m.get(key)).toBe('v1');
      // The clean entry stays under the change until the flush replaces it; here the flush replies
      // after the resync read the stamps and before it compares them.
      await m.set(key, 'v2');
      const during = onceAfterStampsRead(m.store as PubSubRedisDict<unknown>, key, () => m.isServing, () => m.flush());
      expect(await forceResync(m as WriteBackCacheManager<unknown>, connect(), key)).toMatchObject({ reason: 'sequence-gap' });
      expect(during.observed()).toBe(false);
      expect(m.isDirty(key)).toBe(false);
      expect(m.cache.peek(key)?.value).not.toBe('v1');
      expect(await m.get(key)).toBe('v2');
    });

    it('writes deletes as stamped tombstones with a TTL that an older write cannot overwrite', async () => {
      const ns = uniqueNamespace('wb-tomb');
      const redis = connect();
      const reader = raw<string>(ns);
      await reader.set('t', 'v');
      const m = await wb<string>(ns);
      expect(await m.delete('t')).toBe(true);
      expect(await redis.type(`${ns}/t`)).toBe('string');

      const report = await m.flush();
      expect(report.written).toEqual(['t']);
      expect(await redis.type(`${ns}/t`)).toBe('hash');
      const ttl = await redis.pttl(`${ns}/t`);
      expect(ttl).toBeGreaterThan(0);
      expect(ttl).toBeLessThanOrEqual(m.store.tombstoneTtlMs);
      expect(await reader.get('t')).toBeUndefined();
      expect(await reader.has('t')).toBe(false);

      // A delayed write with an older stamp does not resurrect the key.
      const late = raw<string>(ns, at(1));
      await late.set('t', 'resurrected');
      expect(await reader.get('t')).toBeUndefined();
      expect(await redis.type(`${ns}/t`)).toBe('hash');
    });

    it.runIf(topology === 'standalone')('flushes 200 keys in one script call and one message, not one per key', async () => {
      // Own server: INFO commandstats counts every client, and other test files share the global one.
      const server = await startServer();
      const redis = new Redis(server.url);
      const stats = new Redis(server.url);
      try {
        const store = new PubSubRedisDict<number>(redis, uniqueNamespace('wb-batch'));
        const m = new WriteBackCacheManager<number>(store, { flushIntervalMs: 0 });
        await m.ready();
        // Warm-up: the first call loads the script (EVALSHA answers NOSCRIPT, then EVAL).
        await m.set('warm', 0);
        await m.flush();

        const calls = async (): Promise<number> => (await commandCalls(stats, 'evalsha')) + (await commandCalls(stats, 'eval'));
        const scriptsBefore = await calls();
        const publishBefore = await commandCalls(stats, 'publish');
        await m.setMany(Array.from({ length: 200 }, (_, i) => [`k${i}`, i] as const));
        const report = await m.flush();
        expect(report.written).toHaveLength(200);
        expect((await calls()) - scriptsBefore).toBe(1);
        expect((await commandCalls(stats, 'publish')) - publishBefore).toBe(1);
        await m.close();

        // With batchSize 50: four calls.
        const small = new WriteBackCacheManager<number>(new PubSubRedisDict<number>(redis, uniqueNamespace('wb-batch'), { batchSize: 50 }), { flushIntervalMs: 0 });
        await small.ready();
        await small.setMany(Array.from({ length: 200 }, (_, i) => [`k${i}`, i] as const));
        const before = await calls();
        expect((await small.flush()).written).toHaveLength(200);
        expect((await calls()) - before).toBe(4);
        await small.close();
      } finally {
        await closeClient(redis);
        await closeClient(stats);
        await server.stop();
      }
    });
  });

  // ------------------------------------------------------------------ automatic flushes

  describe('automatic flushes', () => {
    it('flushes every flushIntervalMs', async () => {
      const ns = uniqueNamespace('wb-interval');
      const reader = raw<number>(ns);
      const m = await wb<number>(ns, { flushIntervalMs: 50 });
      const flushed = nextFlush(m);
      await m.set('a', 1);
      await m.set('b', 2);
      const report = await flushed;
      expect(sorted(report.written)).toEqual(['a', 'b']);
      expect(await reader.getMany(['a', 'b'])).toEqual([1, 2]);
      expect(m.dirtyCount).toBe(0);
    });

    it('flushes when maxDirty keys are dirty', async () => {
      const ns = uniqueNamespace('wb-maxdirty');
      const reader = raw<number>(ns);
      const m = await wb<number>(ns, { maxDirty: 10 });
      const flushSpy = vi.spyOn(m, 'flush');
      for (let i = 0; i < 9; i++) await m.set(`k${i}`, i);
      await m.set('k0', 100); // a change of a dirty key adds no dirty key
      expect(flushSpy).not.toHaveBeenCalled();
      expect(m.dirtyCount).toBe(9);

      const flushed = nextFlush(m);
      await m.set('k9', 9);
      expect(flushSpy).toHaveBeenCalledTimes(1);
      const report = await flushed;
      expect(report.written).toHaveLength(10);
      expect(await reader.get('k0')).toBe(100);
      expect(await reader.get('k9')).toBe(9);
    });

    it('onIdle() resolves once everything is written', async () => {
      const ns = uniqueNamespace('wb-idle');
      const reader = raw<number>(ns);
      const m = await wb<number>(ns);
      await m.onIdle(); // nothing dirty: resolves at once
      await m.setMany(Array.from({ length: 30 }, (_, i) => [`k${i}`, i] as const));
      await m.delete('k29');
      await m.onIdle();
      expect(m.dirtyCount).toBe(0);
      const values = await reader.getMany(Array.from({ length: 30 }, (_, i) => `k${i}`));
      expect(values).toEqual([...Array.from({ length: 29 }, (_, i) => i), undefined]);
    });
  });

  // ------------------------------------------------------------------ I7 and I6

  describe.each(['last-writer-wins', 'discard-on-remote-update'] as const)('I7 in-flight flush (%s)', (policy) => {
    it('keeps a key changed while its flush is in flight dirty with the newer change', async () => {
      const ns = uniqueNamespace('wb-i7');
      const redis = connect();
      const other = connect();
      const reader = raw<string>(ns);
      const store = new PubSubRedisDict<string>(redis, ns);
      const m = new WriteBackCacheManager<string>(store, { flushIntervalMs: 0, conflictPolicy: policy });
      managers.add(m);
      await m.ready();

      // The keys and the blocker share a hash tag, hence one slot and one connection on a cluster.
      const [k1, k2, blocker] = ['{i7}k1', '{i7}k2', `${ns}/{i7}blocker`];
      await redis.exists(blocker); // connected to the node before the BLPOP
      await m.set(k1, 'v1');
      await m.set(k2, 'v1');

      // BLPOP holds the data connection: the flush's script call waits behind it, in flight.
      const blocked = redis.blpop(blocker, 0);
      const flushing = m.flush();
      await nextMacrotask(); // the flush has taken its snapshot and sent its script call
      await m.set(k1, 'v2');
      expect(await m.delete(k2)).toBe(true);
      await other.lpush(blocker, 'go');
      await blocked;

      const report = await flushing;
      expect(sorted(report.written)).toEqual([k1, k2]);
      expect(report.conflicts).toEqual([]);
      expect(await reader.getMany([k1, k2])).toEqual(['v1', 'v1']);
      // The newer changes are still dirty and still served.
      expect(sorted(m.dirtyKeys())).toEqual([k1, k2]);
      expect(await m.get(k1)).toBe('v2');
      expect(await m.get(k2)).toBeUndefined();

      // The next flush writes them; our own first write is not a conflict, whatever the policy.
      const next = await m.flush();
      expect(sorted(next.written)).toEqual([k1, k2]);
      expect(next.conflicts).toEqual([]);
      expect(await reader.getMany([k1, k2])).toEqual(['v2', undefined]);
      expect(m.dirtyCount).toBe(0);
    });

    it('a key settled early in a large flush and changed while later chunks are in flight is dirty again, then written', async () => {
      const ns = uniqueNamespace('wb-i7-chunks');
      const reader = raw<string>(ns);
      // A store that tells the test when the manager has settled each key of the flush.
      const settledKeys = new Set<number>();
      let afterSettle: (index: number) => void = () => {};
      class Observed extends PubSubRedisDict<string> {
        override writeVersioned(changes: readonly VersionedChange<string>[], onOutcome?: OutcomeListener<string>): Promise<WriteOutcome<string>[]> {
          return super.writeVersioned(changes, (index, outcome) => {
            onOutcome?.(index, outcome);
            settledKeys.add(index);
            afterSettle(index);
          });
        }
      }
      const m = new WriteBackCacheManager<string>(new Observed(connect(), ns), { flushIntervalMs: 0, conflictPolicy: policy });
      managers.add(m);
      await m.ready();
      // 1,200 keys of one slot: three script calls of 500, sent and answered chunk by chunk.
      const keys = Array.from({ length: 1200 }, (_, i) => `{i7c}k${i}`);
      await m.setMany(keys.map((k) => [k, 'v1']));
      const [first, last] = [keys[0]!, keys[1199]!];
      let lastPendingWhenFirstSettled: boolean | undefined;
      afterSettle = (index) => {
        if (index !== 0) return;
        lastPendingWhenFirstSettled = !settledKeys.has(1199);
        // The first key is clean again; the last one is still in flight (the classic I7 case).
        expect(m.isDirty(first)).toBe(false);
        void m.set(first, 'v2');
        void m.set(last, 'v2');
      };
      const report = await m.flush();
      afterSettle = () => {};
      expect(lastPendingWhenFirstSettled).toBe(true);
      expect(report.written).toHaveLength(1200);
      expect(report.conflicts).toEqual([]);
      expect(await reader.getMany([first, last])).toEqual(['v1', 'v1']);
      expect(sorted(m.dirtyKeys())).toEqual(sorted([first, last]));
      expect(await m.getMany([first, last])).toEqual(['v2', 'v2']);

      const next = await m.flush();
      expect(sorted(next.written)).toEqual(sorted([first, last]));
      expect(next.conflicts).toEqual([]);
      expect(await reader.getMany([first, last, keys[600]!])).toEqual(['v2', 'v2', 'v1']);
      expect(m.dirtyCount).toBe(0);
    });
  });

  describe('I6 eviction', () => {
    it('keeps dirty keys readable and flushed with an LRU of 2, and re-reads evicted clean entries', async () => {
      const ns = uniqueNamespace('wb-i6');
      const reader = raw<number>(ns);
      const m = await wb<number>(ns, { cache: 2 });
      const keys = Array.from({ length: 50 }, (_, i) => `k${i}`);
      for (const [i, k] of keys.entries()) await m.set(k, i);
      // Reads of other keys churn the LRU meanwhile.
      await reader.setMany([
        ['c0', -1],
        ['c1', -2],
        ['c2', -3],
      ]);
      expect(await m.getMany(['c0', 'c1', 'c2'])).toEqual([-1, -2, -3]);
      expect(m.cache.size).toBeLessThanOrEqual(2);

      for (const [i, k] of keys.entries()) expect(await m.get(k)).toBe(i);
      expect(await m.getMany(keys)).toEqual(keys.map((_, i) => i));
      expect(m.dirtyCount).toBe(50);

      const report = await m.flush();
      expect(sorted(report.written)).toEqual(sorted(keys));
      expect(await reader.getMany(keys)).toEqual(keys.map((_, i) => i));
      expect(m.cache.size).toBe(2);

      // Clean entries were evicted; they are read again from Redis.
      const { misses } = m.stats();
      expect(await m.getMany(keys)).toEqual(keys.map((_, i) => i));
      expect(m.stats().misses - misses).toBeGreaterThanOrEqual(48);
    });
  });

  // ------------------------------------------------------------------ backpressure

  describe('backpressure', () => {
    it("refuses a change of a new key at maxPending with E_BACKPRESSURE ('reject') and changes nothing", async () => {
      const ns = uniqueNamespace('wb-bp');
      const reader = raw<number>(ns);
      await reader.set('g', -7);
      const m = await wb<number>(ns, { maxPending: 5, ...NO_AUTO_FLUSH });
      for (const [i, k] of ['a', 'b', 'c', 'd', 'e'].entries()) await m.set(k, i);

      const error = await rejection(m.set('f', 6));
      expect(error).toBeInstanceOf(BackpressureError);
      expect(error.code).toBe('E_BACKPRESSURE');
      expect((error as BackpressureError).pending).toBe(5);
      expect(m.isDirty('f')).toBe(false);
      expect(await m.get('f')).toBeUndefined();

      // A batch with one new key is refused whole.
      expect((await rejection(m.setMany([['a', 100], ['g', 7]]))).code).toBe('E_BACKPRESSURE');
      expect(await m.get('a')).toBe(0);
      expect(await m.get('g')).toBe(-7);
      expect((await rejection(m.delete('g'))).code).toBe('E_BACKPRESSURE');
      expect(await m.get('g')).toBe(-7);
      expect(m.dirtyCount).toBe(5);

      // Changing a key that is already dirty needs no room.
      await m.set('a', 100);
      await m.delete('b');
      expect(await m.get('a')).toBe(100);

      await m.flush();
      await m.set('f', 6);
      expect(m.dirtyKeys()).toEqual(['f']);
      expect(await reader.getMany(['a', 'b', 'c', 'd', 'e', 'f', 'g'])).toEqual([100, undefined, 2, 3, 4, undefined, -7]);
    });

    it("makes a change of a new key wait for a flush at maxPending ('wait')", async () => {
      const ns = uniqueNamespace('wb-bp-wait');
      const reader = raw<number>(ns);
      const m = await wb<number>(ns, { maxPending: 5, onBackpressure: 'wait', ...NO_AUTO_FLUSH });
      for (const [i, k] of ['a', 'b', 'c', 'd', 'e'].entries()) await m.set(k, i);

      let done = false;
      const sixth = m.set('f', 5).then(() => {
        done = true;
      });
      await Promise.resolve();
      expect(done).toBe(false); // a flush needs a round trip
      expect(m.isDirty('f')).toBe(false);
      await sixth;
      expect(m.stats().flushes).toBeGreaterThanOrEqual(1);
      expect(await reader.getMany(['a', 'b', 'c', 'd', 'e'])).toEqual([0, 1, 2, 3, 4]);
      expect(m.isDirty('f')).toBe(true);
      expect(await m.get('f')).toBe(5);
      expect(m.dirtyCount).toBe(1);
    });

    it('without a timer, flushes by size before maxPending refuses changes (maxDirty defaults to at most maxPending)', async () => {
      const ns = uniqueNamespace('wb-bp-notimer');
      const reader = raw<number>(ns);
      const m = await wb<number>(ns, { maxPending: 3, flushIntervalMs: 0 });
      for (const [i, k] of ['a', 'b', 'c'].entries()) await m.set(k, i);
      await m.onIdle(); // the size trigger fired at the third key
      expect(await reader.getMany(['a', 'b', 'c'])).toEqual([0, 1, 2]);
      await m.set('d', 3); // used to be refused until a manual flush
      expect(m.dirtyKeys()).toEqual(['d']);
    });

    it('refuses invalid options and inconsistent limits with E_INVALID_OPTION', async () => {
      const ns = uniqueNamespace('wb-options');
      const bad: unknown[] = [
        { bogus: 1 },
        { conflictPolicy: 'newest' },
        { flushIntervalMs: -1 },
        { maxDirty: 0 },
        { maxPending: 1.5 },
        { onBackpressure: 'drop' },
        { retryDelayMs: 0 },
        { maxPending: 3, maxDirty: 4, flushIntervalMs: 0 }, // nothing would flush before changes are refused
        { heartbeatIntervalMs: 500, heartbeatTimeoutMs: 500 },
      ];
      const store = new PubSubRedisDict<number>(connect(), ns);
      for (const options of bad) {
        let error: unknown;
        try {
          managers.add(new WriteBackCacheManager<number>(store, options as WriteBackCacheManagerOptions<number>));
        } catch (e) {
          error = e;
        }
        expect(error, JSON.stringify(options)).toMatchObject({ code: 'E_INVALID_OPTION' });
      }
      expect(String((() => {
        try {
          new WriteBackCacheManager<number>(store, { maxPending: 3, maxDirty: 4, flushIntervalMs: 0 });
        } catch (e) {
          return (e as Error).message;
        }
        return '';
      })())).toMatch(/maxDirty.*at most `maxPending` \(3\)/);
    });

    it("refuses at once a batch with more new keys than maxPending, even with 'wait'", async () => {
      const ns = uniqueNamespace('wb-bp-big');
      const m = await wb<number>(ns, { maxPending: 5, onBackpressure: 'wait', ...NO_AUTO_FLUSH });
      await m.set('a', 0);
      const batch = Array.from({ length: 6 }, (_, i) => [`k${i}`, i] as const);
      // Waiting could never make room for 6 new keys (it used to loop on empty flushes and starve the event loop).
      expect((await rejection(m.setMany(batch))).code).toBe('E_BACKPRESSURE');
      expect((await rejection(m.deleteMany(batch.map(([k]) => k)))).code).toBe('E_BACKPRESSURE');
      expect(m.dirtyKeys()).toEqual(['a']);
      // Five new keys fit once a flush has written 'a'.
      await m.setMany(batch.slice(0, 5));
      expect(m.dirtyCount).toBe(5);
    });

    it("never holds more than maxPending dirty keys when many changes wait at once ('wait')", async () => {
      const ns = uniqueNamespace('wb-bp-many');
      const reader = raw<number>(ns);
      const m = await wb<number>(ns, { maxPending: 5, onBackpressure: 'wait', ...NO_AUTO_FLUSH });
      let highWater = 0;
      const markDirty = (): void => {
        highWater = Math.max(highWater, m.dirtyCount);
      };
      const keys = Array.from({ length: 20 }, (_, i) => `k${i}`);
      await Promise.all(
        keys.map(async (k, i) => {
          await m.set(k, i);
          markDirty();
        }),
      );
      expect(highWater).toBeLessThanOrEqual(5);
      expect(m.dirtyCount).toBeLessThanOrEqual(5);
      await m.onIdle();
      expect(await reader.getMany(keys)).toEqual(keys.map((_, i) => i));
    });
  });

  // ------------------------------------------------------------------ conflict policies

  describe('last-writer-wins', () => {
    it.each(['invalidate', 'update'] as const)('discards a local change when a newer remote write arrives by message (sync: %s)', async (sync) => {
      const ns = uniqueNamespace('wb-lww-msg');
      const reader = raw<string>(ns);
      const a = await wb<string>(ns, { clock: at(1000), sync });
      const b = await wb<string>(ns, { clock: at(2000), sync });
      await a.set('k', 'a');
      await b.set('k', 'b');

      const conflict = nextConflict(a);
      expect((await b.flush()).written).toEqual(['k']);
      const c = await conflict;
      expect(c).toMatchObject({
        key: 'k',
        policy: 'last-writer-wins',
        outcome: 'remote',
        stamp: undefined,
        detectedBy: 'message',
        local: { value: 'a', deleted: false },
        remote: { deleted: false, known: sync === 'update', value: sync === 'update' ? 'b' : undefined },
      });
      expect(parseStamp(c.local.stamp).ms).toBe(1000);
      expect(parseStamp(c.remote.stamp).ms).toBe(2000);
      expect(a.isDirty('k')).toBe(false);
      expect(await a.get('k')).toBe('b');

      // The conflict is in the next flush report, which writes nothing.
      const report = await a.flush();
      expect(report.written).toEqual([]);
      expect(report.conflicts).toEqual([c]);
      expect(a.stats().conflicts).toBe(1);
      expect(await reader.get('k')).toBe('b');
      expect(await b.get('k')).toBe('b');
    });

    it('discards a local change when a newer write is found in Redis at flush time', async () => {
      const ns = uniqueNamespace('wb-lww-flush');
      const a = await wb<string>(ns, { clock: at(1000) });
      const rawB = raw<string>(ns, at(2000)); // publishes nothing: a never gets a message
      const seen = conflictsOf(a);
      await a.set('k', 'a');
      await rawB.set('k', 'b');

      const report = await a.flush();
      expect(report.written).toEqual([]);
      expect(report.conflicts).toHaveLength(1);
      expect(report.conflicts[0]).toMatchObject({
        key: 'k',
        outcome: 'remote',
        detectedBy: 'flush',
        local: { value: 'a', deleted: false },
        remote: { value: 'b', deleted: false, known: true },
      });
      expect(seen).toEqual(report.conflicts);
      expect(a.isDirty('k')).toBe(false);
      // The remote value is now cached.
      const { misses } = a.stats();
      expect(await a.get('k')).toBe('b');
      expect(a.stats().misses).toBe(misses);
      expect(await rawB.get('k')).toBe('b');
    });

    it('ignores an older remote write and writes the local change', async () => {
      const ns = uniqueNamespace('wb-lww-old');
      const reader = raw<string>(ns);
      const a = await wb<string>(ns, { clock: at(2000) });
      const b = await wb<string>(ns, { clock: at(1000) });
      const seen = conflictsOf(a);
      await a.set('k', 'a');
      await a.delete('gone');
      await b.setMany([
        ['k', 'b'],
        ['gone', 'b'],
      ]);
      expect(sorted((await b.flush()).written)).toEqual(['gone', 'k']);
      await pollUntil(() => a.stats().eventsReceived >= 2, { message: "a did not receive b's message" });
      expect(seen).toEqual([]);
      expect(a.isDirty('k')).toBe(true);
      expect(await a.get('k')).toBe('a');

      const report = await a.flush();
      expect(sorted(report.written)).toEqual(['gone', 'k']);
      expect(report.conflicts).toEqual([]);
      expect(await reader.getMany(['k', 'gone'])).toEqual(['a', undefined]);
      // b's cache converges through a's message.
      await pollUntil(async () => (await b.get('k')) === 'a' && (await b.get('gone')) === undefined, { message: 'b did not converge' });
    });

    it('three instances: the highest stamp wins in Redis and in every cache, every loser is reported', async () => {
      const ns = uniqueNamespace('wb-lww-3');
      const reader = raw<string>(ns);
      const a = await wb<string>(ns, { clock: at(1000) });
      const b = await wb<string>(ns, { clock: at(2000) });
      const c = await wb<string>(ns, { clock: at(3000) });
      const [seenA, seenB, seenC] = [conflictsOf(a), conflictsOf(b), conflictsOf(c)];
      const keys = ['k1', 'k2', 'k3'];
      for (const [m, name] of [
        [a, 'A'],
        [b, 'B'],
        [c, 'C'],
      ] as const) {
        for (const k of keys) await m.set(k, `${name}-${k}`);
      }

      // B flushes first: a's older changes lose by message, c's newer ones ignore it.
      expect(sorted((await b.flush()).written)).toEqual(keys);
      await pollUntil(() => seenA.length === 3 && c.stats().eventsReceived >= 3, { message: "b's message did not arrive" });
      expect(seenA.map((x) => [x.key, x.outcome, x.detectedBy, x.local.value]).sort()).toEqual(keys.map((k) => [k, 'remote', 'message', `A-${k}`]));
      expect(c.dirtyCount).toBe(3);

      // C's changes are newer than what B wrote.
      expect(sorted((await c.flush()).written)).toEqual(keys);
      // A has nothing left to write.
      const reportA = await a.flush();
      expect(reportA.written).toEqual([]);
      expect(sorted(reportA.conflicts.map((x) => x.key))).toEqual(keys);

      expect(await reader.getMany(keys)).toEqual(keys.map((k) => `C-${k}`));
      for (const m of [a, b, c]) {
        await pollUntil(async () => JSON.stringify(await m.getMany(keys)) === JSON.stringify(keys.map((k) => `C-${k}`)), {
          message: 'a cache did not converge',
        });
      }
      expect(seenB).toEqual([]);
      expect(seenC).toEqual([]);
    });
  });

  describe('discard-on-remote-update', () => {
    it('discards a pending change when a remote write newer than the moment it became dirty arrives by message', async () => {
      const ns = uniqueNamespace('wb-discard-msg');
      const reader = raw<string>(ns);
      let clockA = 1000;
      const a = await wb<string>(ns, { conflictPolicy: 'discard-on-remote-update', clock: () => clockA });
      const b = await wb<string>(ns, { conflictPolicy: 'discard-on-remote-update', clock: at(2000) });
      await a.set('k', 'a1'); // dirty since 1000
      clockA = 3000;
      await a.set('k', 'a2'); // stamp 3000: newer than b's write, still discarded
      await b.set('k', 'b');

      const conflict = nextConflict(a);
      await b.flush();
      const c = await conflict;
      expect(c).toMatchObject({
        key: 'k',
        policy: 'discard-on-remote-update',
        outcome: 'remote',
        detectedBy: 'message',
        local: { value: 'a2', deleted: false },
      });
      expect(c.remote.stamp < c.local.stamp).toBe(true);
      expect(a.isDirty('k')).toBe(false);
      expect(await a.get('k')).toBe('b');
      const report = await a.flush();
      expect(report.written).toEqual([]);
      expect(report.conflicts).toEqual([c]);
      expect(await reader.get('k')).toBe('b');
    });

    it('discards a pending change when a newer write is found in Redis at flush time (no message delivered)', async () => {
      const ns = uniqueNamespace('wb-discard-flush');
      const reader = raw<string>(ns);
      let clockA = 1000;
      const a = await wb<string>(ns, { conflictPolicy: 'discard-on-remote-update', clock: () => clockA });
      const rawB = raw<string>(ns, at(2000)); // publishes nothing
      const seen = conflictsOf(a);
      await a.set('k', 'a1');
      await rawB.set('k', 'b');
      clockA = 3000;
      await a.set('k', 'a2'); // newer than b's write: last-writer-wins would write it

      const report = await a.flush();
      expect(report.written).toEqual([]);
      expect(report.conflicts).toHaveLength(1);
      expect(report.conflicts[0]).toMatchObject({
        key: 'k',
        policy: 'discard-on-remote-update',
        outcome: 'remote',
        detectedBy: 'flush',
        local: { value: 'a2' },
        remote: { value: 'b', known: true },
      });
      expect(seen).toEqual(report.conflicts);
      expect(await a.get('k')).toBe('b');
      expect(await reader.get('k')).toBe('b');
    });

    it('keeps a pending change when the remote write is older than the moment it became dirty', async () => {
      const ns = uniqueNamespace('wb-discard-old');
      const reader = raw<string>(ns);
      const a = await wb<string>(ns, { conflictPolicy: 'discard-on-remote-update', clock: at(2000) });
      const b = await wb<string>(ns, { conflictPolicy: 'discard-on-remote-update', clock: at(1000) });
      const seen = conflictsOf(a);
      await a.set('k', 'a');
      await b.set('k', 'b');
      await b.flush();
      await pollUntil(() => a.stats().eventsReceived >= 1, { message: "a did not receive b's message" });
      const report = await a.flush();
      expect(report.written).toEqual(['k']);
      expect(seen).toEqual([]);
      expect(await reader.get('k')).toBe('a');
    });
  });

  describe('custom resolver', () => {
    const union: ConflictResolver<string[]> = (local, remote) => ({
      value: [...new Set([...(local.value ?? []), ...(remote.value ?? [])])].sort(),
    });

    it('three instances: merged values get a fresh stamp above both sides, are written and converge', async () => {
      const ns = uniqueNamespace('wb-merge-3');
      const reader = raw<string[]>(ns);
      const a = await wb<string[]>(ns, { conflictPolicy: union, clock: at(1000) });
      const b = await wb<string[]>(ns, { conflictPolicy: union, clock: at(2000) });
      const c = await wb<string[]>(ns, { conflictPolicy: union, clock: at(3000) });
      const [seenA, seenB, seenC] = [conflictsOf(a), conflictsOf(b), conflictsOf(c)];
      await a.set('k', ['a']);
      await b.set('k', ['b']);
      await c.set('k', ['c']);

      expect((await c.flush()).written).toEqual(['k']);
      await b.flush();
      await b.onIdle();
      expect(seenB).toHaveLength(1);
      const mergedB = seenB[0]!;
      expect(mergedB).toMatchObject({ key: 'k', policy: 'custom', outcome: 'merged', local: { value: ['b'] }, remote: { value: ['c'], known: true } });
      expect(mergedB.stamp! > mergedB.remote.stamp && mergedB.stamp! > mergedB.local.stamp).toBe(true);
      expect(await reader.get('k')).toEqual(['b', 'c']);
      expect((await reader.readVersioned(['k']))[0]?.stamp).toBe(mergedB.stamp);

      await a.flush();
      await a.onIdle();
      expect(seenA).toHaveLength(1);
      expect(seenA[0]).toMatchObject({ outcome: 'merged', local: { value: ['a'] }, remote: { value: ['b', 'c'] } });
      expect(await reader.get('k')).toEqual(['a', 'b', 'c']);
      expect((await reader.readVersioned(['k']))[0]?.stamp).toBe(seenA[0]!.stamp);

      for (const m of [a, b, c]) {
        await pollUntil(async () => JSON.stringify(await m.get('k')) === '["a","b","c"]', { message: 'a cache did not converge' });
        expect(m.dirtyCount).toBe(0);
      }
      expect(seenC).toEqual([]);
    });

    it('merges on a message that carries the remote value (sync: update), written by the next flush', async () => {
      const ns = uniqueNamespace('wb-merge-msg');
      const reader = raw<string[]>(ns);
      const a = await wb<string[]>(ns, { conflictPolicy: union, clock: at(1000), sync: 'update' });
      const b = await wb<string[]>(ns, { conflictPolicy: union, clock: at(2000), sync: 'update' });
      await a.set('k', ['a']);
      await b.set('k', ['b']);
      const conflict = nextConflict(a);
      await b.flush();
      const c = await conflict;
      expect(c).toMatchObject({ outcome: 'merged', detectedBy: 'message', local: { value: ['a'] }, remote: { value: ['b'], known: true } });
      expect(c.stamp! > c.remote.stamp).toBe(true);
      expect(a.isDirty('k')).toBe(true);
      expect(await a.get('k')).toEqual(['a', 'b']);
      expect(await reader.get('k')).toEqual(['b']);

      const report = await a.flush();
      expect(report.written).toEqual(['k']);
      expect(report.conflicts).toEqual([c]);
      expect(await reader.get('k')).toEqual(['a', 'b']);
      await pollUntil(async () => JSON.stringify(await b.get('k')) === '["a","b"]', { message: 'b did not converge' });
    });

    it("'local' keeps the local value, which wins in Redis and in every cache", async () => {
      const ns = uniqueNamespace('wb-keep-local');
      const a = await wb<string>(ns, { conflictPolicy: () => 'local', clock: at(1000) });
      const peer = await wb<string>(ns);
      const rawB = raw<string>(ns, at(2000));
      await a.set('k', 'a');
      await rawB.set('k', 'b');
      expect(await peer.get('k')).toBe('b');

      const seen = conflictsOf(a);
      await a.flush();
      await a.onIdle();
      expect(seen).toHaveLength(1);
      expect(seen[0]).toMatchObject({ policy: 'custom', outcome: 'local', detectedBy: 'flush', local: { value: 'a' }, remote: { value: 'b' } });
      expect(seen[0]!.stamp! > seen[0]!.remote.stamp).toBe(true);
      expect(await rawB.get('k')).toBe('a');
      expect((await rawB.readVersioned(['k']))[0]?.stamp).toBe(seen[0]!.stamp);
      expect(await a.get('k')).toBe('a');
      await pollUntil(async () => (await peer.get('k')) === 'a', { message: 'the peer did not converge' });
    });

    it('a resolver that throws keeps the local change (nothing lost) and reports the error', async () => {
      const ns = uniqueNamespace('wb-throw');
      let failing = true;
      const boom = new Error('resolver failed');
      const resolver: ConflictResolver<string> = () => {
        if (failing) throw boom;
        return 'local';
      };
      const a = await wb<string>(ns, { conflictPolicy: resolver, clock: at(1000) });
      const errors: Error[] = [];
      a.on('error', (e) => errors.push(e));
      const rawB = raw<string>(ns, at(2000));
      await a.set('k', 'a');
      await rawB.set('k', 'b');

      // The key could not be written: the flush says so (and retries it with back-off).
      const error = await rejection(a.flush());
      expect(error).toBeInstanceOf(FlushError);
      expect(error.code).toBe('E_FLUSH');
      expect((error as FlushError).failed).toEqual([{ key: 'k', error: boom }]);
      expect(errors).toContain(boom);
      expect(a.isDirty('k')).toBe(true);
      expect(await a.get('k')).toBe('a');
      expect(await rawB.get('k')).toBe('b');

      failing = false;
      await a.onIdle();
      expect(await rawB.get('k')).toBe('a');
      expect(a.dirtyCount).toBe(0);
    });

    it('a resolver that keeps throwing does not make onIdle() spin: attempts back off', async () => {
      const ns = uniqueNamespace('wb-throw-spin');
      const calls: number[] = [];
      let failing = true;
      const resolver: ConflictResolver<string> = () => {
        calls.push(Date.now());
        if (failing) throw new Error('resolver failed');
        return 'local';
      };
      const retryDelayMs = 20;
      const a = await wb<string>(ns, { conflictPolicy: resolver, clock: at(1000), retryDelayMs });
      a.on('error', () => {});
      const rawB = raw<string>(ns, at(2000));
      await a.set('k', 'a');
      await rawB.set('k', 'b');

      const idle = a.onIdle();
      await pollUntil(() => calls.length >= 4, { message: 'the resolver was not asked again' });
      // With back-off the retries come 20, 40 and 80 ms apart; a loop of immediate re-flushes (what
      // onIdle() used to do) makes them all within a few ms.
      expect(calls[1]! - calls[0]!).toBeGreaterThanOrEqual(retryDelayMs - 2);
      expect(calls[3]! - calls[0]!).toBeGreaterThanOrEqual(7 * retryDelayMs - 3);
      failing = false;
      await idle;
      expect(await rawB.get('k')).toBe('a');
    });
  });

  // ------------------------------------------------------------------ I3

  it('I3: every local change is written by a flush or reported as a conflict (seeded, 3 instances)', async () => {
    const seed = 0x5eed1;
    const rand = mulberry32(seed);
    const ns = uniqueNamespace('wb-i3');
    const reader = raw<string>(ns);
    let now = 10_000;
    const skews = [0, 6, -4];
    const names = ['a', 'b', 'c'];
    const keys = ['k0', 'k1', 'k2', 'k3', 'k4', 'k5'];
    const instances = await Promise.all(skews.map((skew) => wb<string>(ns, { clock: () => now + skew })));
    type Change = { value: string | undefined; deleted: boolean };
    /** Per instance: the latest local change of each key, not yet written nor reported. */
    const pending = instances.map(() => new Map<string, Change>());
    const problems: string[] = [];
    let written = 0;
    let conflicted = 0;

    instances.forEach((m, i) =>
      m.on('conflict', (c) => {
        conflicted++;
        const p = pending[i]!.get(c.key);
        if (c.outcome !== 'remote') problems.push(`${names[i]}: unexpected outcome ${c.outcome} under last-writer-wins`);
        if (p === undefined || p.value !== c.local.value || p.deleted !== c.local.deleted) {
          problems.push(`${names[i]}: conflict on ${c.key} for a change it does not hold: ${JSON.stringify(c.local)} vs ${JSON.stringify(p)}`);
        } else pending[i]!.delete(c.key);
      }),
    );

    async function checkedFlush(i: number): Promise<void> {
      const report = await instances[i]!.flush();
      const stored = await reader.readVersioned(report.written);
      report.written.forEach((key, j) => {
        const p = pending[i]!.get(key);
        const found = stored[j]?.value;
        if (p === undefined) problems.push(`${names[i]}: wrote ${key} without a pending change`);
        else if (p.deleted ? found !== undefined : found !== p.value) {
          problems.push(`${names[i]}: wrote ${key} = ${JSON.stringify(p)} but Redis holds ${JSON.stringify(found)}`);
        } else {
          written++;
          pending[i]!.delete(key);
        }
      });
    }

    for (let step = 0; step < 200; step++) {
      now += Math.floor(rand() * 3);
      const i = Math.floor(rand() * instances.length);
      const m = instances[i]!;
      const key = keys[Math.floor(rand() * keys.length)]!;
      const r = rand();
      if (r < 0.65) {
        const value = `${names[i]}${step}`;
        pending[i]!.set(key, { value, deleted: false });
        await m.set(key, value);
      } else if (r < 0.8) {
        await m.delete(key);
        pending[i]!.set(key, { value: undefined, deleted: true });
      } else {
        await checkedFlush(i);
      }
    }
    for (let i = 0; i < instances.length; i++) await checkedFlush(i);

    expect(problems, `seed ${seed}`).toEqual([]);
    for (const [i, m] of instances.entries()) {
      expect(m.dirtyCount, `${names[i]} dirty`).toBe(0);
      expect([...pending[i]!], `${names[i]}: changes neither written nor reported (seed ${seed})`).toEqual([]);
    }
    // The run exercised both ways out.
    expect(written).toBeGreaterThan(20);
    expect(conflicted).toBeGreaterThan(5);

    // I1: every cache agrees with Redis once the messages are in.
    const truth = JSON.stringify(await reader.getMany(keys));
    for (const m of instances) {
      await pollUntil(async () => JSON.stringify(await m.getMany(keys)) === truth, { message: 'a cache did not converge' });
    }
  });
});
