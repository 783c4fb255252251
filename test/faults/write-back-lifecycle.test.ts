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
import { Redis, type RedisOptions } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PubSubCacheManager } from '../../src/cache/cache-manager.js';
import type { DictWarning } from '../../src/errors.js';
import { PubSubRedisDict } from '../../src/store/pubsub-redis-dict.js';
import { RedisDict } from '../../src/store/redis-dict.js';
import type { ConflictPolicy } from '../../src/write-back/conflict.js';
import { CloseFlushError, WriteBackCacheManager, type WriteBackCacheManagerOptions } from '../../src/write-back/manager.js';
import { rejection } from '../helpers/assertions.js';
import { findFreePort, type RedisServerHandle, startServer } from '../helpers/harness.js';
import { clusterClient, hasCluster, pollUntil, uniqueNamespace, withClients } from '../helpers/connections.js';
import { type Conflict } from '../../src/cache/types.js';

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

  function client(target: RedisServerHandle, options: RedisOptions = {}): Redis {
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
  /** Collects the rejection of every step of an async iteration's first `next()`. */
  async function firstStep(iterable: AsyncIterable<unknown>): Promise<unknown> {
    return iterable[Symbol.asyncIterator]().next();
  }

  describe('every public promise settles', () => {
    it('ready() against an unreachable Redis rejects with E_TIMEOUT, E_ABORTED, and E_CLOSED after close()', async () => {
      const port = await findFreePort();
      // Nothing listens there: the subscription can never start.
      const redis = clients.track(new Redis({ host: '127.0.0.1', port, retryStrategy: () => 100, maxRetriesPerRequest: 1 }));
      redis.on('error', () => {});
      const m = new PubSubCacheManager<string>(new PubSubRedisDict<string>(redis, uniqueNamespace('wbl-ready')));
      m.on('error', () => {});
      managers.add(m);

      expect((await rejection(m.ready({ timeoutMs: 200 }))).code).toBe('E_TIMEOUT');
      const controller = new AbortController();
      const aborted = m.ready({ signal: controller.signal, timeoutMs: 0 });
      controller.abort(new Error('caller gave up'));
      expect((await rejection(aborted)).code).toBe('E_ABORTED');
      expect((await rejection(m.ready({ signal: AbortSignal.abort() }))).code).toBe('E_ABORTED');
      expect((await rejection(m.ready({ timeoutMs: -1 }))).code).toBe('E_INVALID_ARGUMENT');

      // Waiting when close() is called, and called after close(): E_CLOSED.
      const waiting = m.ready({ timeoutMs: 0 });
      await m.close();
      expect((await rejection(waiting)).code).toBe('E_CLOSED');
      expect((await rejection(m.ready())).code).toBe('E_CLOSED');
    });

    it('ready() rejects with E_CLOSED after close() also when the subscription was live', async () => {
      const m = await manager<string>(client(server), uniqueNamespace('wbl-ready-closed'));
      await m.ready();
      await m.close();
      expect((await rejection(m.ready())).code).toBe('E_CLOSED');
    });

    /** The reads that flush first, and a change waiting for room, against a server that refuses writes. */
    async function refusedWrites(redis: Redis, reason: RegExp): Promise<void> {
      const ns = uniqueNamespace('wbl-refused');
      const m = await manager<number>(redis, ns, { maxPending: 1, onBackpressure: 'wait', retryDelayMs: 20 });
      m.on('error', () => {});
      await m.set('k1', 1);

      for (const [what, call] of [
        ['size()', () => m.size()],
        ['keys()', () => firstStep(m.keys())],
        ['values()', () => firstStep(m.values())],
        ['entries()', () => firstStep(m.entries())],
        ['set() waiting for room', () => m.set('k2', 2)],
      ] as const) {
        const error = await within(rejection(call()), 10_000, what);
        expect(error.code, what).toBe('E_FLUSH');
        expect(String((error as Error & { cause?: unknown }).cause), what).toMatch(reason);
      }
      // Nothing was dropped: the change is still dirty, the refused one was not recorded.
      expect(m.dirtyKeys()).toEqual(['k1']);
    }

    it('on a read-only replica, size()/keys()/values()/entries() and set() waiting for room reject with E_FLUSH (READONLY)', async () => {
      const replica = await startServer({ args: ['--replicaof', '127.0.0.1', String(server.port)] });
      try {
        await refusedWrites(client(replica), /READONLY/);
      } finally {
        await Promise.all([...managers].map((m) => m.close().catch(() => undefined)));
        managers.clear();
        await replica.stop();
      }
    });

    it('under OOM (maxmemory + noeviction), size()/keys()/values()/entries() and set() waiting for room reject with E_FLUSH (OOM)', async () => {
      const full = await startServer({ args: ['--maxmemory-policy', 'noeviction'] });
      try {
        const admin = client(full);
        const redis = client(full);
        // Any write is over the limit: Redis answers OOM.
        await admin.call('CONFIG', 'SET', 'maxmemory', '1');
        await refusedWrites(redis, /OOM/);
      } finally {
        await Promise.all([...managers].map((m) => m.close().catch(() => undefined)));
        managers.clear();
        await full.stop();
      }
    });

    it('onIdle() is bounded by timeoutMs and a signal while Redis refuses writes', async () => {
      const replica = await startServer({ args: ['--replicaof', '127.0.0.1', String(server.port)] });
      try {
        const m = await manager<number>(client(replica), uniqueNamespace('wbl-idle'), { retryDelayMs: 20 });
        m.on('error', () => {});
        await m.set('k', 1);
        expect((await rejection(m.onIdle({ timeoutMs: 200 }))).code).toBe('E_TIMEOUT');
        const controller = new AbortController();
        const idle = m.onIdle({ signal: controller.signal });
        controller.abort();
        expect((await rejection(idle)).code).toBe('E_ABORTED');
        expect(m.isDirty('k')).toBe(true);
      } finally {
        await Promise.all([...managers].map((m) => m.close().catch(() => undefined)));
        managers.clear();
        await replica.stop();
      }
    });
  });

  describe('eviction policy warning', () => {
    async function warningsAtReady(redis: Redis): Promise<DictWarning[]> {
      const m = new WriteBackCacheManager<number>(new PubSubRedisDict<number>(redis, uniqueNamespace('wbl-evict')), { flushIntervalMs: 0 });
      managers.add(m);
      const warnings: DictWarning[] = [];
      m.on('warning', (w) => warnings.push(w));
      await m.ready();
      return warnings;
    }

    it('a write-back manager warns (E_EVICTION_POLICY) at ready() when maxmemory-policy may evict its keys', async () => {
      const lru = await startServer({ args: ['--maxmemory-policy', 'allkeys-lru'] });
      try {
        const warnings = await warningsAtReady(client(lru));
        expect(warnings).toHaveLength(1);
        expect(warnings[0]).toMatchObject({ code: 'E_EVICTION_POLICY', policy: 'allkeys-lru', node: `127.0.0.1:${lru.port}` });
        expect(warnings[0]!.message).toMatch(/noeviction/);

        // A near cache alone does not care: only the write-back manager checks.
        const near = new PubSubCacheManager<number>(new PubSubRedisDict<number>(client(lru), uniqueNamespace('wbl-evict-near')));
        managers.add(near);
        const nearWarnings: DictWarning[] = [];
        near.on('warning', (w) => nearWarnings.push(w));
        await near.ready();
        expect(nearWarnings).toEqual([]);
      } finally {
        await Promise.all([...managers].map((m) => m.close().catch(() => undefined)));
        managers.clear();
        await lru.stop();
      }
    });

    it('no warning under noeviction, and none (silently) when the ACL user may not run CONFIG', async () => {
      expect(await warningsAtReady(client(server))).toEqual([]);
      const lru = await startServer({ args: ['--maxmemory-policy', 'volatile-lru'] });
      try {
        const admin = client(lru);
        await admin.call('ACL', 'SETUSER', 'noconfig', 'on', '>secret', '~*', '&*', '+@all', '-config');
        const user = client(lru, { username: 'noconfig', password: 'secret' });
        await expect(user.call('CONFIG', 'GET', 'maxmemory-policy')).rejects.toThrow(/NOPERM/);
        expect(await warningsAtReady(user)).toEqual([]);
        // The same server, with CONFIG allowed, does warn: the silence above is the ACL's.
        expect((await warningsAtReady(admin)).map((w) => w.policy)).toEqual(['volatile-lru']);
      } finally {
        await Promise.all([...managers].map((m) => m.close().catch(() => undefined)));
        managers.clear();
        await lru.stop();
      }
    });
  });
});

describe.runIf(hasCluster())('eviction policy warning on a Cluster (shared cluster)', () => {
  const clients = withClients({ closeAfter: 'each' });

  it('every master is checked: one warning for the master whose policy may evict', async () => {
    const cluster = clients.track(clusterClient());
    await pollUntil(() => cluster.status === 'ready' && cluster.nodes('master').length === 3, { message: 'cluster not ready' });
    const master = cluster.nodes('master')[1]!;
    // Only the policy changes (maxmemory stays 0, so nothing is ever evicted); restored below.
    const [, before] = (await master.call('CONFIG', 'GET', 'maxmemory-policy')) as [string, string];
    await master.call('CONFIG', 'SET', 'maxmemory-policy', 'allkeys-lfu');
    try {
      const m = new WriteBackCacheManager<number>(new PubSubRedisDict<number>(cluster, uniqueNamespace('wbl-evict-cluster')), { flushIntervalMs: 0 });
      try {
        const warnings: DictWarning[] = [];
        m.on('warning', (w) => warnings.push(w));
        await m.ready();
        expect(warnings.map((w) => [w.code, w.policy, w.node])).toEqual([['E_EVICTION_POLICY', 'allkeys-lfu', `${master.options.host}:${master.options.port}`]]);
      } finally {
        await m.close();
      }
    } finally {
      await master.call('CONFIG', 'SET', 'maxmemory-policy', before);
    }
  });
});
