/**
 * WriteBackCacheManager when Redis fails: a server killed before or during a flush, a hung server
 * at close(), and closing with changes that cannot be written. Every test runs against this file's
 * own redis-server (started with `startServer()`), which it kills, pauses and restarts; the shared
 * servers of the global setup are never touched.
 *
 * What must hold (design brief §6, I3): entries stay dirty, callers see typed errors, automatic
 * retries back off instead of looping, nothing is dropped, and `close()` either writes everything
 * or rejects with a CloseFlushError that lists every unwritten change with its value.
 */
import { setImmediate as nextMacrotask } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ClosedError, FlushError, RedisDictError } from '../../src/errors.js';
import { PubSubRedisDict } from '../../src/store/pubsub-redis-dict.js';
import { RedisDict } from '../../src/store/redis-dict.js';
import { CloseFlushError, WriteBackCacheManager, type WriteBackCacheManagerOptions } from '../../src/write-back/manager.js';
import { pollUntil, uniqueNamespace, withClients } from '../helpers/connections.js';
import { NO_AUTO_FLUSH, rejection, sorted } from '../helpers/assertions.js';
import { type RedisServerHandle, startServer } from '../helpers/harness.js';


describe('WriteBackCacheManager with Redis failing (private server)', () => {
  let server: RedisServerHandle;
  const clients = withClients();
  const managers = new Set<{ close(): Promise<void> }>();

  beforeAll(async () => {
    server = await startServer();
  });

  afterAll(async () => {
    await server?.stop();
  });

  /** Every test starts with the server up. */
  async function serverUp(): Promise<void> {
    if (server.paused) server.resume();
    if (!server.alive) await server.restart();
  }

  beforeEach(serverUp);

  afterEach(async () => {
    await serverUp();
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

  /**
   * A client that fails fast while the server is down, so that a flush fails in milliseconds
   * instead of hanging until ioredis gives up:
   * - `enableOfflineQueue: false`: a command issued while disconnected is rejected at once instead
   *   of being queued until the reconnect (the default queues it without limit);
   * - `maxRetriesPerRequest: 1`: a command that was in flight when the connection dropped is
   *   rejected after one failed reconnect attempt (default 20);
   * - `retryStrategy: () => 50`: keep reconnecting every 50 ms, forever, so the client is back right
   *   after `restart()` (the default back-off grows to 2 s).
   * The library's subscriber connection (a duplicate) overrides the first two for itself.
   * `lazyConnect` + `connect()`: without an offline queue nothing may be sent before `ready`.
   */
  async function connect(): Promise<Redis> {
    const redis = clients.track(
      new Redis(server.url, { lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 1, retryStrategy: () => 50 }),
    );
    redis.on('error', () => {}); // connection errors are expected here
    await redis.connect();
    return redis;
  }

  async function manager<V>(redis: Redis, ns: string, options: WriteBackCacheManagerOptions<V> = {}): Promise<WriteBackCacheManager<V>> {
    const m = new WriteBackCacheManager<V>(new PubSubRedisDict<V>(redis, ns), { flushIntervalMs: 0, ...options });
    managers.add(m);
    await m.ready();
    return m;
  }

  /** Waits until `redis` has noticed that the server is gone. */
  const noticedDown = (redis: Redis): Promise<void> => pollUntil(() => redis.status !== 'ready', { message: 'the client did not notice the server going down' });

  /** Every FlushError reported by automatic flushes (through the `error` event), with its time. */
  function flushFailures<V>(m: WriteBackCacheManager<V>): number[] {
    const times: number[] = [];
    m.on('error', (error) => {
      if (error instanceof FlushError) times.push(Date.now());
    });
    return times;
  }

  const entries = Array.from({ length: 20 }, (_, i) => [`k${i}`, { n: i, s: `value ${i}` }] as const);
  const keys: string[] = entries.map(([k]) => k);
  const values = entries.map(([, v]) => v);

  it('a flush while Redis is down rejects with E_FLUSH, keeps every change, backs off, and writes everything after a restart', async () => {
    const redis = await connect();
    const ns = uniqueNamespace('wbf-down');
    const retryDelayMs = 25;
    const m = await manager<unknown>(redis, ns, { retryDelayMs });
    await m.set('d', 'to delete');
    await m.flush();
    await m.setMany(entries);
    expect(await m.delete('d')).toBe(true);
    const failures = flushFailures(m);

    await server.shutdownNoSave();
    await noticedDown(redis);
    const started = Date.now();
    const error = await rejection(m.flush());
    expect(error).toBeInstanceOf(FlushError);
    expect(error.code).toBe('E_FLUSH');
    const flushError = error as FlushError & { report?: { written: string[] } };
    expect(sorted(flushError.failed.map((f) => f.key))).toEqual(sorted([...keys, 'd']));
    for (const f of flushError.failed) expect(f.error).toBeInstanceOf(Error);
    expect(flushError.report?.written).toEqual([]);

    // Nothing was dropped: every change is still dirty and still served.
    expect(m.dirtyCount).toBe(21);
    expect(await m.getMany([...keys, 'd'])).toEqual([...values, undefined]);

    // Automatic retries back off: 25, 50, 100, 200 ms between attempts, not a loop.
    await pollUntil(() => failures.length >= 4, { timeoutMs: 5_000, message: 'no automatic retries' });
    const times = [started, ...failures.slice(0, 4)];
    for (let i = 1; i < times.length; i++) {
      expect(times[i]! - times[i - 1]!, `gap before retry ${i}`).toBeGreaterThanOrEqual(retryDelayMs * 2 ** (i - 1) - 2);
    }
    const windowMs = Date.now() - started;
    const { flushes, flushErrors } = m.stats();
    expect(flushErrors).toBe(flushes - 1); // every flush since the first one failed
    expect(flushes - 1).toBeLessThanOrEqual(1 + Math.ceil(Math.log2(windowMs / retryDelayMs + 1)));

    await server.restart();
    await m.onIdle();
    expect(m.dirtyCount).toBe(0);
    const reader = new RedisDict<unknown>(redis, ns);
    expect(await reader.getMany(keys)).toEqual(values);
    expect(await redis.type(`${ns}/d`)).toBe('hash'); // the delete reached Redis as a tombstone
    expect(m.stats().flushErrors).toBeGreaterThanOrEqual(5);
  });

  it('a flush in flight when Redis is killed rejects with E_FLUSH and is written after a restart', async () => {
    const redis = await connect();
    const ns = uniqueNamespace('wbf-inflight');
    const m = await manager<unknown>(redis, ns, { retryDelayMs: 50 });
    m.on('error', () => {});
    await m.setMany(entries);

    server.pause(); // the script call reaches the server but gets no answer
    const flushing = m.flush();
    await nextMacrotask();
    await server.kill('SIGKILL');
    const error = await rejection(flushing);
    expect(error.code).toBe('E_FLUSH');
    expect(sorted((error as FlushError).failed.map((f) => f.key))).toEqual(sorted(keys));
    expect(m.dirtyCount).toBe(20);

    await server.restart();
    await m.onIdle();
    expect(await new RedisDict<unknown>(redis, ns).getMany(keys)).toEqual(values);
  });

  it('automatic flushes (interval and maxDirty) respect the back-off while Redis is down', async () => {
    const redis = await connect();
    const ns = uniqueNamespace('wbf-backoff');
    const retryDelayMs = 100;
    const m = await manager<number>(redis, ns, { flushIntervalMs: 10, maxDirty: 1, retryDelayMs });
    const failures = flushFailures(m);
    await server.shutdownNoSave();
    await noticedDown(redis);

    await m.set('a', 0); // maxDirty: flushes at once, fails, schedules a retry in 100 ms
    for (let i = 0; i < 20; i++) await m.set(`k${i}`, i); // each is above maxDirty
    await pollUntil(() => failures.length >= 3, { timeoutMs: 5_000, message: 'no automatic retries' });
    // Neither the 10 ms interval nor the writes above maxDirty may retry sooner than the back-off.
    expect(failures[1]! - failures[0]!).toBeGreaterThanOrEqual(retryDelayMs - 2);
    expect(failures[2]! - failures[1]!).toBeGreaterThanOrEqual(2 * retryDelayMs - 2);

    await server.restart();
    await m.onIdle();
    expect(await new RedisDict<number>(redis, ns).get('k19')).toBe(19);
  });

  it('close() writes the dirty entries, then refuses every call with E_CLOSED', async () => {
    const redis = await connect();
    const ns = uniqueNamespace('wbf-close');
    const m = await manager<unknown>(redis, ns);
    await m.setMany(entries);
    await m.delete('k0');
    await m.close();
    expect(await new RedisDict<unknown>(redis, ns).getMany(keys)).toEqual([undefined, ...values.slice(1)]);
    expect(m.dirtyCount).toBe(0);

    for (const call of [() => m.set('x', 1), () => m.delete('x'), () => m.get('x'), () => m.setMany([['x', 1]]), () => m.flush()]) {
      const error = await rejection(call());
      expect(error).toBeInstanceOf(ClosedError);
      expect(error.code).toBe('E_CLOSED');
    }
    await m.close(); // idempotent
  });

  it('close() while Redis is down rejects within closeTimeoutMs with every unwritten change and its value', async () => {
    const redis = await connect();
    const ns = uniqueNamespace('wbf-close-down');
    const closeTimeoutMs = 3_000;
    const m = await manager<unknown>(redis, ns, { closeTimeoutMs, retryDelayMs: 20 });
    m.on('error', () => {});
    await m.set('gone', 'old');
    await m.flush();
    await m.setMany(entries);
    await m.delete('gone');

    await server.kill('SIGKILL');
    await noticedDown(redis);
    const started = Date.now();
    const error = await rejection(m.close());
    expect(Date.now() - started).toBeLessThan(closeTimeoutMs);
    expect(error).toBeInstanceOf(CloseFlushError);
    expect(error).toBeInstanceOf(FlushError);
    expect(error.code).toBe('E_FLUSH');
    const { unwritten, failed } = error as CloseFlushError<unknown>;
    const byKey = [...unwritten].sort((x, y) => (x.key < y.key ? -1 : 1));
    expect(byKey.map(({ key, value, deleted }) => ({ key, value, deleted }))).toEqual(
      sorted([...keys, 'gone']).map((key) => (key === 'gone' ? { key, value: undefined, deleted: true } : { key, value: values[keys.indexOf(key)], deleted: false })),
    );
    for (const u of unwritten) expect(typeof u.stamp).toBe('string');
    expect(sorted(failed.map((f) => f.key))).toEqual(sorted([...keys, 'gone']));

    expect(m.dirtyCount).toBe(0);
    expect((await rejection(m.set('x', 1))).code).toBe('E_CLOSED');
    await m.close(); // a second close resolves
  });

  it('close() against a hung server gives up after closeTimeoutMs; a change waiting for room is refused, not lost', async () => {
    const redis = await connect();
    const ns = uniqueNamespace('wbf-close-hung');
    const closeTimeoutMs = 300;
    const m = await manager<string>(redis, ns, { closeTimeoutMs, maxPending: 2, onBackpressure: 'wait', ...NO_AUTO_FLUSH });
    m.on('error', () => {});
    await m.set('a', 'A');
    await m.set('b', 'B');

    server.pause();
    const waiting = m.set('c', 'C').then(
      () => 'resolved',
      (error: unknown) => (error instanceof RedisDictError ? error.code : String(error)),
    ); // waits for room: its flush hangs
    const started = Date.now();
    const error = await rejection(m.close());
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(closeTimeoutMs - 2);
    expect(elapsed).toBeLessThan(closeTimeoutMs + 2_000);
    expect(error).toBeInstanceOf(CloseFlushError);
    const closeError = error as CloseFlushError<string>;
    // A close whose flush timed out says so: E_TIMEOUT (the report stays on the error).
    expect(closeError.code).toBe('E_TIMEOUT');
    expect(closeError.failed[0]?.error).toBeInstanceOf(RedisDictError);
    expect((closeError.failed[0]?.error as RedisDictError).code).toBe('E_TIMEOUT');
    expect(sorted(closeError.unwritten.map((u) => u.key))).toEqual(['a', 'b']);
    expect(closeError.unwritten.map((u) => u.value).sort()).toEqual(['A', 'B']);
    // The waiting change was neither written nor listed: it must have been refused.
    expect(await waiting).toBe('E_CLOSED');

    // A timed-out close cannot take back a script call already sent: once the server answers again,
    // it runs. "unwritten" after a timeout means "not confirmed".
    server.resume();
    const reader = new RedisDict<string>(redis, ns);
    await pollUntil(async () => (await reader.get('a')) === 'A', { message: 'the call in flight never ran' });
    expect(await reader.get('c')).toBeUndefined();
  });

  it('bounds pending changes while Redis is down (E_BACKPRESSURE), and writes them after a restart', async () => {
    const redis = await connect();
    const ns = uniqueNamespace('wbf-bp');
    const m = await manager<number>(redis, ns, { maxPending: 3, retryDelayMs: 20, ...NO_AUTO_FLUSH });
    m.on('error', () => {});
    await server.shutdownNoSave();
    await noticedDown(redis);
    for (let i = 0; i < 3; i++) await m.set(`k${i}`, i);
    expect((await rejection(m.flush())).code).toBe('E_FLUSH');
    expect((await rejection(m.set('k3', 3))).code).toBe('E_BACKPRESSURE');
    expect(m.dirtyCount).toBe(3);

    await server.restart();
    await m.onIdle();
    expect(await new RedisDict<number>(redis, ns).getMany(['k0', 'k1', 'k2', 'k3'])).toEqual([0, 1, 2, undefined]);
  });
});
