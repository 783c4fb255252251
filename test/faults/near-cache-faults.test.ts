/**
 * Fault injection for the near cache (PubSubCacheManager), on private redis-server processes (never
 * the shared ones): a killed subscriber, a silent partition, a restart without persistence, a
 * subscriber cut off for being slow, a cluster failover, hostile messages, and ACL confinement.
 *
 * The property checked after each fault is I8: once the manager reports that it recovered, it
 * serves ZERO stale values. A stale read is `b.get(k)` returning something other than what Redis
 * holds (read with a separate raw connection) after the writer's last acknowledged write.
 *
 * How "after recovery" is established without sleeping: wait for b's `resync` event; then make b
 * cache a sentinel key while serving; then have a write the sentinel and wait for b's event about
 * it. Messages of one writer on one server (one slot on a cluster) arrive in publish order, so once
 * the sentinel's event arrived every earlier message arrived too, or was lost in a gap that the
 * resync already covered. Only then is every key compared with Redis, once.
 */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Encoder, encode } from '@msgpack/msgpack';
import fc from 'fast-check';
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PubSubCacheManager } from '../../src/cache/cache-manager.js';
import { encodeEntry, encodeHeader, type MessageType } from '../../src/protocol/messages.js';
import { PubSubRedisDict } from '../../src/store/pubsub-redis-dict.js';
import { RedisDict } from '../../src/store/redis-dict.js';
import type { ResyncReason } from '../../src/cache/subscriber.js';
import { formatStamp, MAX_DRIFT_MS, parseStamp, type Stamp } from '../../src/protocol/stamp.js';
import { slotOf, type RedisClient } from '../../src/store/topology.js';
import { pollUntil, uniqueNamespace, withClients } from '../helpers/connections.js';
import { nextEvent } from '../helpers/events.js';
import { startCluster, startServer, type RedisServerHandle } from '../helpers/harness.js';
import { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy.js';
import { type PubSubCacheManagerOptions, type ResyncInfo } from '../../src/cache/types.js';

/** Short heartbeats, so that a partition is noticed within a few hundred ms. */
const HB = { heartbeatIntervalMs: 100, heartbeatTimeoutMs: 300 } as const;

type Manager = PubSubCacheManager<unknown>;

/** What a manager reported, for assertions after the fact. */
interface Recorder {
  down: ResyncReason[];
  resyncs: ResyncInfo[];
  errors: Error[];
  malformed: { error: Error; channel: string }[];
}

function record(m: Manager): Recorder {
  const r: Recorder = { down: [], resyncs: [], errors: [], malformed: [] };
  m.on('down', (reason) => r.down.push(reason));
  m.on('resync', (info) => r.resyncs.push(info));
  m.on('error', (error) => r.errors.push(error));
  m.on('malformed', (error, channel) => r.malformed.push({ error, channel }));
  return r;
}


/** A writer id nobody uses: the origin of forged messages. */
const fakeOrigin = (): string => randomBytes(8).toString('hex');

/** A complete wire message, built with the library's own encoders. */
function forge(type: MessageType, origin: string, seq: number, group: number, entries: [key: string, stamp: Stamp, payload?: Uint8Array][]): Buffer {
  return Buffer.concat([
    encodeHeader(type, origin, seq, group),
    Buffer.from([0x90 + entries.length]),
    ...entries.map(([key, stamp, payload]) => encodeEntry(key, stamp, payload)),
  ]);
}

/** Sends the subscriber (a duplicate of `client`) through `proxy`, while `client` itself stays direct. */
function subscriberThrough(client: Redis, proxy: TcpProxy): Redis {
  const duplicate = client.duplicate.bind(client);
  client.duplicate = (override) => duplicate({ ...override, host: proxy.host, port: proxy.port });
  return client;
}

/**
 * Establishes "b has caught up with everything a wrote" (see the module comment), for the keys that
 * share the sentinel's server (or slot, on a cluster).
 */
async function sentinelRoundTrip(a: Manager, b: Manager, sentinel: string, timeoutMs = 10_000): Promise<void> {
  await pollUntil(
    async () => {
      await b.get(sentinel);
      return b.isServing && b.cache.has(sentinel);
    },
    { timeoutMs, message: `b never served (and cached) ${sentinel} again` },
  );
  // A cached value is replaced ('update', sync: 'update') or dropped ('invalidate'); a cached miss
  // is always dropped.
  const seen = Promise.race([nextEvent(b, 'update', timeoutMs, (key) => key === sentinel), nextEvent(b, 'invalidate', timeoutMs, (key) => key === sentinel)]);
  await a.set(sentinel, `done-${randomBytes(4).toString('hex')}`);
  await seen;
}

/** Keys whose value in `b` differs from Redis (read through `truth`, a plain RedisDict on its own connection). */
async function staleReads(b: Manager, truth: RedisDict<unknown>, keys: readonly string[]): Promise<{ key: string; served: unknown; redis: unknown }[]> {
  const stale: { key: string; served: unknown; redis: unknown }[] = [];
  for (const key of keys) {
    const served = await b.get(key);
    const redis = await truth.get(key);
    if (JSON.stringify(served) !== JSON.stringify(redis)) stale.push({ key, served, redis });
  }
  // What b holds for the keys it did not just read must agree too.
  for (const [key, value] of b.cache.entries()) {
    const redis = await truth.get(key);
    if (JSON.stringify(value) !== JSON.stringify(redis)) stale.push({ key: `cached:${key}`, served: value, redis });
  }
  return stale;
}

/** Cached entries of `b` (values and misses) that differ from Redis, looked at without reading through `b`. */
async function staleCached(b: Manager, truth: RedisDict<unknown>): Promise<{ key: string; cached: unknown; redis: unknown }[]> {
  const stale: { key: string; cached: unknown; redis: unknown }[] = [];
  for (const key of [...b.cache.keys()]) {
    const cached = b.cache.peek(key)?.value;
    const redis = await truth.get(key);
    if (JSON.stringify(cached) !== JSON.stringify(redis)) stale.push({ key, cached, redis });
  }
  return stale;
}

const keysOf = (n: number, prefix = 'k'): string[] => Array.from({ length: n }, (_, i) => `${prefix}${i}`);

describe('near cache under faults (private redis-server)', () => {
  let server: RedisServerHandle;
  const clients = withClients();
  const managers: Manager[] = [];
  const proxies: TcpProxy[] = [];

  beforeAll(async () => {
    server = await startServer();
  });
  afterAll(async () => {
    await server?.stop();
  });
  afterEach(async () => {
    await Promise.all(managers.splice(0).map((m) => m.close()));
    await clients.closeAll();
    await Promise.all(proxies.splice(0).map((p) => p.close()));
  });

  /**
   * A direct connection to the private server. Connection errors while a server is down are
   * expected here; they are reported through the managers, so the client's own are silenced.
   */
  const direct = (opts: RedisOptions = {}, target: RedisServerHandle = server): Redis =>
    clients.track(new Redis({ host: target.host, port: target.port, ...opts })).on('error', () => {});

  const managerOn = (client: RedisClient, ns: string, opts: PubSubCacheManagerOptions = {}): Manager => {
    const m = new PubSubCacheManager<unknown>(new PubSubRedisDict<unknown>(client, ns), opts);
    managers.push(m);
    return m;
  };

  const truthOf = (ns: string, target: RedisServerHandle = server): RedisDict<unknown> => new RedisDict<unknown>(direct({}, target), ns);

  // ------------------------------------------------------------------ (a) subscriber killed

  it.each(['invalidate', 'update'] as const)('(a) CLIENT KILL TYPE pubsub during a stream of writes (sync: %s)', async (sync) => {
    const ns = uniqueNamespace(`f-kill-${sync}`);
    const a = managerOn(direct(), ns, { ...HB, sync });
    const b = managerOn(direct(), ns, { ...HB, sync });
    // c clears its cache after a gap instead of revalidating it.
    const c = managerOn(direct(), ns, { ...HB, sync, onReconnect: 'clear' });
    await Promise.all([a.ready(), b.ready(), c.ready()]);
    const log = record(b);
    const keys = keysOf(20);
    await a.setMany(keys.map((k) => [k, { i: -1 }]));
    await b.getMany(keys);
    await c.getMany(keys);
    const resynced = nextEvent(b, 'resync', 10_000);
    const cleared = nextEvent(c, 'resync', 10_000);
    const admin = direct();

    for (let i = 0; i < 200; i++) {
      await a.set(keys[i % keys.length]!, { i });
      // b keeps reading (and caching) while a writes.
      await b.get(keys[(i * 7) % keys.length]!);
      await c.get(keys[(i * 3) % keys.length]!);
      if (i === 60) {
        expect(Number(await admin.call('CLIENT', 'KILL', 'TYPE', 'pubsub'))).toBeGreaterThanOrEqual(3);
        // Published while b has no subscription: lost for b, whatever it cached is now stale.
        await a.setMany(keys.map((k) => [k, { i, lost: true }]));
      }
    }
    const [info] = (await resynced) as [ResyncInfo];
    expect(log.down).toContain('reconnect');
    expect(info).toMatchObject({ reason: 'reconnect', mode: 'revalidate' });
    const [cInfo] = (await cleared) as [ResyncInfo];
    expect(cInfo).toMatchObject({ reason: 'reconnect', mode: 'clear', kept: 0 });

    await sentinelRoundTrip(a, b, 'sentinel');
    expect(await staleReads(b, truthOf(ns), keys)).toEqual([]);
    await sentinelRoundTrip(a, c, 'sentinel-c');
    expect(await staleReads(c, truthOf(ns), keys)).toEqual([]);
  });

  // ------------------------------------------------------------------ (b) silent partition

  /**
   * Only b's subscriber goes through the proxy (its data connection is direct), so b can be read
   * during the partition: once it has noticed, every read must come from Redis, never from the
   * cache that the partition made stale.
   */
  it('(b) silent partition of the subscriber for 3 s: detected by the heartbeat, no stale read during or after', async () => {
    const ns = uniqueNamespace('f-partition');
    const proxy = await startTcpProxy(server);
    proxies.push(proxy);
    const b = managerOn(subscriberThrough(direct(), proxy), ns, { ...HB, sync: 'update' });
    // c opts into stale reads while disconnected; it must still be coherent once it has resynced.
    const c = managerOn(subscriberThrough(direct(), proxy), ns, { ...HB, sync: 'update', serveStaleWhileDisconnected: true });
    const a = managerOn(direct(), ns, { ...HB, sync: 'update' });
    await Promise.all([a.ready(), b.ready(), c.ready()]);
    const log = record(b);
    const keys = keysOf(20);
    await a.setMany(keys.map((k) => [k, { phase: 'before' }]));
    await b.getMany(keys);
    await c.getMany(keys);
    expect(b.cache.size).toBe(keys.length);
    const cDown = nextEvent(c, 'down', 5_000);

    const down = nextEvent(b, 'down', 5_000);
    proxy.setMode('blackhole');
    const partitionedAt = Date.now();
    // Swallowed by the partition: b's cached values are stale from now on.
    await a.setMany(keys.map((k) => [k, { phase: 'partition', n: 0 }]));
    const [reason] = await down;
    const detectedMs = Date.now() - partitionedAt;
    expect(reason).toBe('heartbeat-timeout');
    // A PING goes out within one period; unanswered for heartbeatTimeoutMs; noticed at the next tick.
    expect(detectedMs).toBeLessThan(HB.heartbeatTimeoutMs + 3 * HB.heartbeatIntervalMs + 400);
    expect(b.isServing).toBe(false);

    // For the rest of the 3 s partition: a writes, b reads; b must answer what a just wrote.
    let reads = 0;
    const stale: unknown[] = [];
    for (let n = 1; Date.now() - partitionedAt < 3_000; n++) {
      const key = keys[n % keys.length]!;
      await a.set(key, { phase: 'partition', n });
      const served = await b.get(key);
      reads++;
      if (JSON.stringify(served) !== JSON.stringify({ phase: 'partition', n })) stale.push({ key, n, served });
    }
    expect(stale).toEqual([]);
    expect(reads).toBeGreaterThan(10);
    expect(b.isServing).toBe(false);
    expect(log.resyncs).toEqual([]);
    // c noticed too, and kept serving what it had, as it asked (stale by design).
    expect((await cDown)[0]).toBe('heartbeat-timeout');
    expect(c.isServing).toBe(true);
    expect(await c.get(keys[0]!)).toEqual({ phase: 'before' });

    const resynced = nextEvent(b, 'resync', 10_000);
    const cResynced = nextEvent(c, 'resync', 10_000);
    proxy.setMode('pass');
    const healedAt = Date.now();
    const [info] = (await resynced) as [ResyncInfo];
    expect(info.reason).toBe('reconnect');
    expect(Date.now() - healedAt).toBeLessThan(5_000);
    // a stopped writing before the partition healed, so the resync alone must leave no stale entry.
    expect(await staleCached(b, truthOf(ns))).toEqual([]);

    await sentinelRoundTrip(a, b, 'sentinel');
    expect(await staleReads(b, truthOf(ns), keys)).toEqual([]);
    expect(log.down[0]).toBe('heartbeat-timeout');
    await cResynced;
    await sentinelRoundTrip(a, c, 'sentinel-c');
    expect(await staleReads(c, truthOf(ns), keys)).toEqual([]);
  });

  /** As the brief describes it: b's whole client (data and subscriber) goes through the proxy. */
  it('(b2) silent partition of the whole client for 3 s: down with heartbeat-timeout, not serving, recovers', async () => {
    const ns = uniqueNamespace('f-partition-all');
    const proxy = await startTcpProxy(server);
    proxies.push(proxy);
    const b = managerOn(clients.track(new Redis(proxy.port, proxy.host)), ns, HB);
    const a = managerOn(direct(), ns, HB);
    await Promise.all([a.ready(), b.ready()]);
    const log = record(b);
    const keys = keysOf(20);
    await a.setMany(keys.map((k) => [k, 0]));
    await b.getMany(keys);

    const down = nextEvent(b, 'down', 5_000);
    proxy.setMode('blackhole');
    const partitionedAt = Date.now();
    let n = 0;
    await a.setMany(keys.map((k) => [k, ++n]));
    const [reason] = await down;
    expect(reason).toBe('heartbeat-timeout');
    expect(Date.now() - partitionedAt).toBeLessThan(HB.heartbeatTimeoutMs + 3 * HB.heartbeatIntervalMs + 400);
    expect(b.isServing).toBe(false);
    // b is not read during the partition: its data connection would lose bytes to the proxy for good.
    // a keeps writing until the partition has lasted 3 s.
    while (Date.now() - partitionedAt < 3_000) await a.set(keys[n % keys.length]!, ++n);
    expect(b.isServing).toBe(false);

    const resynced = nextEvent(b, 'resync', 10_000);
    proxy.setMode('pass');
    const [info] = (await resynced) as [ResyncInfo];
    expect(info.reason).toBe('reconnect');
    expect(await staleCached(b, truthOf(ns))).toEqual([]);
    await sentinelRoundTrip(a, b, 'sentinel');
    expect(await staleReads(b, truthOf(ns), keys)).toEqual([]);
    expect(log.down[0]).toBe('heartbeat-timeout');
  });

  // ------------------------------------------------------------------ (c) restart without persistence

  it('(c) SHUTDOWN NOSAVE and restart on the same port: resync, no stale value afterwards', async () => {
    const own = await startServer();
    try {
      const ns = uniqueNamespace('f-restart');
      const a = managerOn(direct({}, own), ns, HB);
      const b = managerOn(direct({}, own), ns, HB);
      await Promise.all([a.ready(), b.ready()]);
      const log = record(b);
      const keys = keysOf(20);
      await a.setMany(keys.map((k) => [k, { gen: 1 }]));
      await b.getMany(keys);
      expect(b.cache.size).toBe(keys.length);

      const down = nextEvent(b, 'down', 10_000);
      const resynced = nextEvent(b, 'resync', 20_000);
      await own.shutdownNoSave();
      await down;
      expect(b.isServing).toBe(false);
      await own.restart();
      // The data is gone; a writes half of the keys again, possibly before b is back.
      const rewritten = keys.slice(0, 10);
      await a.setMany(rewritten.map((k) => [k, { gen: 2 }]));
      const [info] = (await resynced) as [ResyncInfo];
      expect(['run-id-changed', 'reconnect']).toContain(info.reason);
      // Redis lost every gen-1 value: the resync must have dropped all of them.
      expect([...b.cache.entries()].filter(([, v]) => JSON.stringify(v) === JSON.stringify({ gen: 1 }))).toEqual([]);

      await sentinelRoundTrip(a, b, 'sentinel');
      const truth = truthOf(ns, own);
      expect(await staleReads(b, truth, keys)).toEqual([]);
      expect(await b.getMany(keys)).toEqual(keys.map((k) => (rewritten.includes(k) ? { gen: 2 } : undefined)));
      // Which reason the library gave (run_id is read with INFO on each reconnect).
      expect(log.resyncs.map((r) => r.reason)).toContain('run-id-changed');
    } finally {
      await Promise.all(managers.splice(0).map((m) => m.close()));
      await own.stop();
    }
  });

  /**
   * Nemesis counterexample (seed 465169785): a restart, then `clear()` on a manager while its
   * revalidation after the reconnect was still reading stamps. The resync gave up its result
   * because `clear()` had bumped the read generation, and nothing ever made the manager serve
   * again. Made deterministic here: a BLPOP on the manager's own data connection holds the
   * revalidation's stamp read (and the clear) until the test releases it.
   */
  it('(c2) clear() during the resync after a reconnect: the manager serves again', async () => {
    const ns = uniqueNamespace('f-clear-resync');
    const data = direct();
    const a = managerOn(direct(), ns, HB);
    const b = managerOn(data, ns, { ...HB, onReconnect: 'revalidate' });
    await Promise.all([a.ready(), b.ready()]);
    const keys = keysOf(5);
    await a.setMany(keys.map((k) => [k, { gen: 1 }]));
    await b.getMany(keys);
    expect(b.cache.size).toBe(keys.length);

    const admin = direct();
    const gate = `${ns}:gate`;
    // Everything b sends on its data connection after this waits until the gate opens.
    const held = data.blpop(gate, 0);
    const down = nextEvent(b, 'down', 10_000);
    const resynced = nextEvent(b, 'resync', 20_000);
    expect(Number(await admin.call('CLIENT', 'KILL', 'TYPE', 'pubsub'))).toBeGreaterThanOrEqual(2);
    await down;
    // Test-only look (as the nemesis quiesce does): the revalidation is under way, held by the gate.
    await pollUntil(() => (b as unknown as { resyncing: boolean }).resyncing, { timeoutMs: 10_000, message: 'b never started its resync' });
    const cleared = b.clear();
    await admin.lpush(gate, 'open');
    await held;
    await cleared;
    await pollUntil(() => b.isServing, { timeoutMs: 10_000, message: 'b does not serve again after clear() during its resync' });
    const [info] = (await resynced) as [ResyncInfo];
    expect(info).toMatchObject({ reason: 'reconnect', mode: 'revalidate' });
    await a.set('after', { gen: 2 });
    await sentinelRoundTrip(a, b, 'sentinel');
    expect(await staleReads(b, truthOf(ns), [...keys, 'after'])).toEqual([]);
  });

  /**
   * Nemesis counterexample (seed 1120478144): b deleted `k` (it caches a miss stamped with its
   * tombstone's stamp), the server restarted without persistence (the tombstone is gone), then a
   * writer whose clock is behind b's and who never saw the delete wrote `k`. Redis applied it
   * (nothing stored to compare against), but b ignored its event as older than its cached miss:
   * b kept serving "no value" while Redis held one, for as long as the miss stayed cached. A
   * cached miss vouches for nothing once its tombstone may be gone: any other event drops it.
   */
  it.each([false, true])('(c3) a miss cached from a delete, the tombstone lost in a restart, an older-stamped write after it: b follows Redis (serveStaleWhileDisconnected: %s)', async (serveStaleWhileDisconnected) => {
    const own = await startServer();
    try {
      const ns = uniqueNamespace('f-restart-tombstone');
      const now = Date.now();
      const b = new PubSubCacheManager<unknown>(new PubSubRedisDict<unknown>(direct({}, own), ns, { clock: () => now + 50 }), { ...HB, serveStaleWhileDisconnected });
      managers.push(b);
      await b.ready();
      await b.delete('k');
      expect(b.cache.peek('k')).toMatchObject({ present: false });

      const resynced = nextEvent(b, 'resync', 20_000);
      await own.shutdownNoSave();
      await own.restart();
      const [info] = (await resynced) as [ResyncInfo];
      expect(['run-id-changed', 'reconnect']).toContain(info.reason);
      // Redis holds nothing for k, which agrees with the miss: the revalidation may keep it.

      // A writer 50 ms behind b that never saw b's delete (no subscriber): its stamp is older.
      const writer = new PubSubRedisDict<unknown>(direct({}, own), ns, { clock: () => now });
      await writer.set('k', 'written after the restart');
      // The writer's events reach b in publish order: once the sentinel's arrived, k's did too.
      await sentinelSeen(b, writer);

      expect(await truthOf(ns, own).get('k')).toBe('written after the restart');
      expect(await staleCached(b, truthOf(ns, own))).toEqual([]);
      expect(await b.get('k')).toBe('written after the restart');
    } finally {
      await Promise.all(managers.splice(0).map((m) => m.close()));
      await own.stop();
    }
  });

  /**
   * The same hole without a restart: a tombstone lives `tombstoneTtlMs`; once Redis expired it, a
   * write stamped before the delete is applied (documented in consistency.md), and a cache still
   * holding the delete's miss must follow it.
   */
  it('(c4) a miss cached from a delete whose tombstone expired: an older-stamped write after it reaches b', async () => {
    const ns = uniqueNamespace('f-tombstone-ttl');
    const now = Date.now();
    const b = new PubSubCacheManager<unknown>(new PubSubRedisDict<unknown>(direct(), ns, { clock: () => now + 50, tombstoneTtlMs: 100 }), HB);
    managers.push(b);
    await b.ready();
    await b.delete('k');
    expect(b.cache.peek('k')).toMatchObject({ present: false });
    const truth = truthOf(ns);
    const admin = direct();
    await pollUntil(async () => (await admin.exists(truth.redisKey('k'))) === 0, { timeoutMs: 10_000, message: 'the tombstone of k never expired' });

    const writer = new PubSubRedisDict<unknown>(direct(), ns, { clock: () => now });
    await writer.set('k', 'written after the tombstone expired');
    await sentinelSeen(b, writer);

    expect(await truth.get('k')).toBe('written after the tombstone expired');
    expect(await staleCached(b, truth)).toEqual([]);
    expect(await b.get('k')).toBe('written after the tombstone expired');
  });

  // ------------------------------------------------------------------ (d) slow subscriber cut off

  it('(d) a stalled subscriber cut off by client-output-buffer-limit resyncs, no stale value afterwards', async () => {
    const ns = uniqueNamespace('f-slow');
    const name = `slow-${randomBytes(4).toString('hex')}`;
    const admin = direct();
    const proxy = await startTcpProxy(server);
    proxies.push(proxy);
    // The subscriber (a duplicate) inherits the connection name, so CLIENT LIST can find it.
    // A long heartbeat timeout, so that the cut comes from Redis, not from b's heartbeat.
    const b = managerOn(subscriberThrough(direct({ connectionName: name }), proxy), ns, { heartbeatIntervalMs: 200, heartbeatTimeoutMs: 30_000 });
    const a = managerOn(direct(), ns, { ...HB, sync: 'update' });
    await Promise.all([a.ready(), b.ready()]);
    const log = record(b);
    const aLog = record(a);
    const keys = keysOf(10);
    await a.setMany(keys.map((k) => [k, { phase: 'before' }]));
    await b.getMany(keys);
    const subscriberAlive = async (): Promise<boolean> => String(await admin.call('CLIENT', 'LIST', 'TYPE', 'pubsub')).includes(` name=${name} `);
    expect(await subscriberAlive()).toBe(true);

    await admin.call('CONFIG', 'SET', 'client-output-buffer-limit', 'pubsub 64kb 32kb 1');
    try {
      proxy.setMode('stall');
      // Small messages (about 12 KB), one at a time, until Redis has cut b off (the kernel socket
      // buffers, a few MB, fill up first). One at a time matters: Redis writes to subscribers once
      // per event loop turn, so a pipeline of many messages would exceed 64 KB for every
      // subscriber, even one that reads, and the cut would prove nothing about the stall.
      const filler = 'x'.repeat(3_000);
      for (let batch = 0; ; batch++) {
        await a.setMany(Array.from({ length: 4 }, (_, i) => [`filler-${i}`, { filler, batch }]));
        if (batch % 25 === 24 && !(await subscriberAlive())) break;
        if (batch > 20_000) throw new Error('Redis never cut the stalled subscriber off');
      }
      // Lost for b: it has no subscription any more.
      await a.setMany(keys.map((k) => [k, { phase: 'after-cut' }]));
      const logText = await readFile(path.join(server.dir, 'redis.log'), 'utf8');
      expect(logText).toMatch(new RegExp(`name=${name} .*closed ASAP for overcoming of output buffer limits`));
      // a's subscriber kept reading and was never cut.
      expect(aLog.down).toEqual([]);

      const down = nextEvent(b, 'down', 10_000);
      const resynced = nextEvent(b, 'resync', 15_000);
      // Deliver what the proxy held, then the server's close.
      proxy.setMode('pass');
      expect((await down)[0]).toBe('reconnect');
      const [info] = (await resynced) as [ResyncInfo];
      expect(info.reason).toBe('reconnect');
      expect(await staleCached(b, truthOf(ns))).toEqual([]);
    } finally {
      await admin.call('CONFIG', 'SET', 'client-output-buffer-limit', 'pubsub 32mb 8mb 60');
    }
    await sentinelRoundTrip(a, b, 'sentinel');
    expect(await staleReads(b, truthOf(ns), keys)).toEqual([]);
    expect(log.down).toContain('reconnect');
  });

  // ------------------------------------------------------------------ (f) hostile messages

  describe('(f) hostile messages on the channels', () => {
    /** Byte strings that are not valid messages, each with a label. */
    function corpus(origin: string, cachedKey: string): [label: string, type: MessageType, bytes: Uint8Array][] {
      const stamp = formatStamp(Date.now() - 60_000, 0, origin);
      const valid = forge('u', origin, 1, 0, [['not-cached', stamp]]);
      const raw = (value: unknown): Uint8Array => new Encoder().encode(value);
      const protoMap = Buffer.concat([Buffer.from([0x81, 0xa9]), Buffer.from('__proto__'), Buffer.from([0x81, 0xa8]), Buffer.from('polluted'), Buffer.from([0xc3])]);
      const header = [1, 'u', origin, 1, 0];
      const items: [string, MessageType, Uint8Array][] = [
        ['empty', 'u', new Uint8Array(0)],
        ['byte 0xc1', 'u', Buffer.from([0xc1])],
        ['nil', 'u', raw(null)],
        ['true', 'd', raw(true)],
        ['number', 'u', raw(42)],
        ['string', 'u', raw('hello')],
        ['random 64 bytes', 'u', randomBytes(64)],
        ['random 4 KB', 'd', randomBytes(4096)],
        ['valid + trailing byte', 'u', Buffer.concat([valid, Buffer.from([0xc0])])],
        ['array32 header, no body', 'u', Buffer.from([0xdd, 0xff, 0xff, 0xff, 0xff])],
        ['bin32 header, no body', 'u', Buffer.from([0xc6, 0x7f, 0xff, 0xff, 0xff])],
        ['str32 header, no body', 'u', Buffer.from([0xdb, 0x7f, 0xff, 0xff, 0xff])],
        ['200k-deep nesting', 'u', Buffer.concat([Buffer.alloc(200_000, 0x91), Buffer.from([0xc0])])],
        ['unknown ext', 'u', Buffer.from([0xd4, 0x01, 0x00])],
        ['timestamp ext', 'u', raw(new Date())],
        ['map __proto__', 'u', protoMap],
        ['map constructor.prototype', 'u', raw({ constructor: { prototype: { polluted: true } } })],
        ['map prototype', 'd', raw({ prototype: { polluted: true } })],
        ['entries holding a __proto__ map', 'u', Buffer.concat([encodeHeader('u', origin, 1, 0), Buffer.from([0x91]), protoMap])],
        ['entries holding a constructor map', 'u', Buffer.concat([encodeHeader('u', origin, 1, 0), Buffer.from([0x91]), raw({ constructor: { polluted: 1 } })])],
        ['version 2', 'u', raw([2, 'u', origin, 1, 0, []])],
        ['type x', 'u', raw([1, 'x', origin, 1, 0, []])],
        ['origin not hex', 'u', raw([1, 'u', 'zzzzzzzzzzzzzzzz', 1, 0, []])],
        ['origin __proto__', 'u', raw([1, 'u', '__proto__', 1, 0, []])],
        ['seq 0', 'u', raw([1, 'u', origin, 0, 0, []])],
        ['seq 1.5', 'u', raw([1, 'u', origin, 1.5, 0, []])],
        ['seq as string', 'u', raw([1, 'u', origin, '1', 0, []])],
        ['group -1', 'u', raw([1, 'u', origin, 1, -1, []])],
        ['group 16384', 'u', raw([1, 'u', origin, 1, 16_384, []])],
        ['5 items', 'u', raw(header)],
        ['7 items', 'u', raw([...header, [], 1])],
        ['entries not an array', 'u', raw([...header, 'entries'])],
        ['entry of 1 item', 'u', raw([...header, [[cachedKey]]])],
        ['entry of 5 items', 'u', raw([...header, [[cachedKey, stamp, new Uint8Array(1), 1, 2]]])],
        ['entry with a negative expiry time', 'u', raw([...header, [[cachedKey, stamp, new Uint8Array(1), -1]]])],
        ['entry with an expiry time that is not an integer', 'u', raw([...header, [[cachedKey, stamp, null, 'soon']]])],
        ['delete entry with an expiry time', 'd', raw([1, 'd', origin, 1, 0, [[cachedKey, stamp, null, 1]]])],
        ['empty key', 'u', raw([...header, [['', stamp]]])],
        ['key not a string', 'u', raw([...header, [[7, stamp]]])],
        ['bad stamp', 'u', raw([...header, [[cachedKey, 'not-a-stamp']]])],
        ['uppercase stamp', 'u', raw([...header, [[cachedKey, stamp.toUpperCase()]]])],
        ['payload not binary', 'u', raw([...header, [[cachedKey, stamp, 'value']]])],
        ['delete with payload', 'd', raw([1, 'd', origin, 1, 0, [[cachedKey, stamp, new Uint8Array([0xc0])]]])],
        ['key of 70k characters', 'u', raw([...header, [['k'.repeat(70_000), stamp]]])],
        ['2000 entries', 'u', raw([...header, Array.from({ length: 2_000 }, (_, i) => [`x${i}`, stamp])])],
        ['10 MB (above maxMessageBytes)', 'u', Buffer.concat([encodeHeader('u', origin, 1, 0), Buffer.from([0x91]), encodeEntry(cachedKey, stamp, new Uint8Array(10 << 20))])],
      ];
      // Every proper prefix of a valid message is a truncated frame.
      for (let cut = 1; cut < valid.length; cut += 3) items.push([`truncated at ${cut}`, 'u', valid.subarray(0, cut)]);
      return items;
    }

    it('are ignored, counted and reported; nothing is polluted; the cache is untouched; b stays coherent', async () => {
      const ns = uniqueNamespace('f-hostile');
      // Not the short fault-test heartbeats: receiving a 10 MB message can hold a PONG up for more
      // than 300 ms on a loaded machine, and a heartbeat timeout would lose the next messages.
      const calm = { heartbeatIntervalMs: 500, heartbeatTimeoutMs: 5_000 };
      const a = managerOn(direct(), ns, { ...calm, sync: 'update' });
      const b = managerOn(direct(), ns, { ...calm, sync: 'update' });
      await Promise.all([a.ready(), b.ready()]);
      const log = record(b);
      const keys = keysOf(10);
      await a.setMany(keys.map((k, i) => [k, { i }]));
      await b.getMany(keys);
      const snapshot = (): unknown[] => [...b.cache.keys()].sort().map((k) => [k, b.cache.peek(k)]);
      const before = snapshot();
      const protoBefore = Object.getOwnPropertyNames(Object.prototype).sort();
      const raw = direct();
      const channel = (type: MessageType): string => `${ns}/${type === 'u' ? 'update' : 'delete'}`;
      const { eventsReceived } = b.stats();

      // 1. The corpus, one message at a time: each one is counted and reported once.
      const items = corpus(fakeOrigin(), keys[0]!);
      for (const [label, type, bytes] of items) {
        const counted = b.stats().malformed;
        await raw.publish(channel(type), Buffer.from(bytes));
        await pollUntil(() => b.stats().malformed === counted + 1, { timeoutMs: 5_000, message: `'${label}' was not counted as malformed` });
      }
      expect(log.malformed).toHaveLength(items.length);
      expect(new Set(log.malformed.map((m) => m.channel))).toEqual(new Set([channel('u'), channel('d')]));
      expect(log.malformed.every((m) => m.error.name === 'MalformedMessageError')).toBe(true);
      expect(snapshot()).toEqual(before);
      expect(b.stats()).toMatchObject({ eventsReceived, resyncs: 0 });

      // 2. 10,000 random frames (fast-check), pipelined.
      const seed = Date.now() ^ 0x5eed;
      const frames = fc.sample(fc.uint8Array({ minLength: 0, maxLength: 300 }), { numRuns: 10_000, seed });
      const counted = b.stats().malformed;
      for (let i = 0; i < frames.length; i += 1_000) {
        const pipeline = raw.pipeline();
        frames.slice(i, i + 1_000).forEach((frame, j) => pipeline.publish(channel(j % 2 === 0 ? 'u' : 'd'), Buffer.from(frame)));
        await pipeline.exec();
      }
      await pollUntil(() => b.stats().malformed === counted + frames.length, {
        timeoutMs: 20_000,
        message: `not every random frame was counted as malformed (fast-check seed ${seed})`,
      });
      expect(log.malformed).toHaveLength(items.length + frames.length);
      expect(snapshot()).toEqual(before);
      expect(b.stats().eventsReceived).toBe(eventsReceived);

      // 3. Well-formed messages whose value payload cannot be decoded (sync: 'update'): counted as
      //    malformed, never installed; the entry is dropped (the message claims a newer write).
      const fake = fakeOrigin();
      const newer = (key: string): Stamp => formatStamp(parseStamp(b.cache.peek(key)!.stamp as Stamp).ms + 1, 0, fake);
      const undecodable: [string, Uint8Array][] = [
        [keys[1]!, Buffer.from([0xc1])],
        [keys[2]!, Buffer.concat([Buffer.from([0x81, 0xa9]), Buffer.from('__proto__'), Buffer.from([0xc3])])],
        [keys[3]!, Buffer.from([0x92, 0x01])], // truncated array
      ];
      let seq = 0;
      for (const [key, payload] of undecodable) {
        const counted = b.stats().malformed;
        await raw.publish(channel('u'), forge('u', fake, ++seq, 0, [[key, newer(key), payload]]));
        await pollUntil(() => b.stats().malformed === counted + 1, { timeoutMs: 5_000, message: `undecodable value for ${key} was not counted` });
        const entry = b.cache.peek(key);
        expect(entry === undefined || JSON.stringify(entry.value) === JSON.stringify({ i: keys.indexOf(key) })).toBe(true);
        expect(await b.get(key)).toEqual({ i: keys.indexOf(key) });
      }
      expect(log.errors.length).toBeGreaterThanOrEqual(undecodable.length);

      // 4. A well-formed value with `constructor` / `prototype` keys is just data: no pollution.
      {
        const key = keys[4]!;
        const payload = encode({ constructor: { prototype: { polluted: true } }, prototype: { polluted: true } });
        const installed = nextEvent(b, 'update', 5_000, (k) => k === key);
        await raw.publish(channel('u'), forge('u', fake, ++seq, 0, [[key, newer(key), payload]]));
        await installed;
        const value = b.cache.peek(key)?.value as Record<string, unknown>;
        expect(Object.getPrototypeOf(value)).toBe(Object.prototype);
        expect(Object.keys(value).sort()).toEqual(['constructor', 'prototype']);
      }

      // 5. A 40 MB message: above the default pubsub output buffer hard limit (32 MB), so Redis cuts
      //    every subscriber of the channel. b must come back and resync.
      const resynced = nextEvent(b, 'resync', 20_000);
      expect(Number(await raw.publish(channel('u'), Buffer.alloc(40 << 20, 0x42)))).toBeGreaterThanOrEqual(1);
      const [info] = (await resynced) as [ResyncInfo];
      expect(info.reason).toBe('reconnect');
      // Cut off by Redis ('reconnect'), or first noticed by the heartbeat while the 40 MB were on their way.
      expect(log.down.length).toBeGreaterThan(0);

      // Nothing was polluted, the process is alive, and b is coherent: real writes propagate.
      expect(Object.getOwnPropertyNames(Object.prototype).sort()).toEqual(protoBefore);
      expect(({} as Record<string, unknown>)['polluted']).toBeUndefined();
      expect((Object.prototype as Record<string, unknown>)['polluted']).toBeUndefined();
      await sentinelRoundTrip(a, b, 'sentinel');
      await b.getMany(keys);
      const updated = nextEvent(b, 'update', 5_000, (k) => k === keys[0]);
      await a.setMany(keys.map((k) => [k, { final: k }]));
      await updated;
      expect(await staleReads(b, truthOf(ns), keys)).toEqual([]);
      expect(await b.get(keys[0]!)).toEqual({ final: keys[0] });
    });

    /**
     * Regression (fixed in src/cache/cache-manager.ts `onMessage`): the clock now follows an
     * observed stamp only up to `MAX_DRIFT_MS` (1 day) ahead, but the cache still applies the entry
     * with its stamp as is. One forged, schema-valid message with a far-future stamp (sync:
     * 'update') installs its value with that stamp, and since I4 keeps the newer stamp, every real
     * update afterwards is ignored: b serves the forged value until a resync, a TTL or an eviction.
     * Suggested fix: treat entries stamped more than `MAX_DRIFT_MS` ahead of the wall clock as
     * malformed (count and report them, apply nothing), as the clock already distrusts them.
     */
    it('a forged stamp far in the future moves neither the clock nor the cache', async () => {
      const ns = uniqueNamespace('f-future');
      const a = managerOn(direct(), ns, { ...HB, sync: 'update' });
      const b = managerOn(direct(), ns, { ...HB, sync: 'update' });
      await Promise.all([a.ready(), b.ready()]);
      await a.set('k', 'real');
      expect(await b.get('k')).toBe('real');
      const fake = fakeOrigin();
      const future = formatStamp(2 ** 48 - 2, 0, fake); // year 10889
      const raw = direct();
      const before = b.stats().eventsReceived + b.stats().malformed;
      await raw.publish(`${ns}/update`, forge('u', fake, 1, 0, [['k', future, encode('forged')]]));
      await pollUntil(() => b.stats().eventsReceived + b.stats().malformed === before + 1, { timeoutMs: 5_000 });

      // b's clock followed it at most MAX_DRIFT_MS (the default maxDriftMs, one minute) ahead...
      expect(parseStamp(b.store.clock.now()).ms).toBeLessThanOrEqual(Date.now() + MAX_DRIFT_MS);
      // ...and a real write after the forged one reaches b.
      await a.set('k', 'real-2');
      await pollUntil(async () => (await b.get('k')) === 'real-2', { timeoutMs: 2_000, message: `b kept serving ${JSON.stringify(b.cache.peek('k')?.value)}` });
    });
  });

  // ------------------------------------------------------------------ (g) ACL confinement

  /**
   * Regression (fixed in src/cache/subscriber.ts `subscribe()`): a SUBSCRIBE refused with NOPERM is treated like a
   * transient failure: the subscriber disconnects and reconnects at once, forever (about 7 new
   * connections per second here, each one also refused), and ready() never settles, so an
   * application awaiting it hangs with no error. A permission error is permanent: ready() should
   * reject with it (and the subscriber stop, or at least back off).
   */
  it('(g) ready() rejects when the subscription is refused by ACL (NOPERM)', async () => {
    const user = `tenant-${randomBytes(4).toString('hex')}`;
    const admin = direct();
    await admin.call('ACL', 'SETUSER', user, 'reset', 'on', '>pw', '~mine/*', '&mine/*', '+@all', '-@dangerous');
    try {
      const m = managerOn(direct({ username: user, password: 'pw', enableReadyCheck: false }), uniqueNamespace('f-acl-ready'), HB);
      const errors: Error[] = [];
      m.on('error', (error) => errors.push(error));
      let timer: NodeJS.Timeout | undefined;
      const deadline = new Promise<string>((resolve) => {
        timer = setTimeout(() => resolve('still pending after 2 s'), 2_000);
      });
      const outcome = await Promise.race([m.ready().then(() => 'resolved', (error: Error) => `rejected: ${error.message}`), deadline]);
      clearTimeout(timer);
      expect(outcome, `${errors.length} 'error' events meanwhile`).toMatch(/^rejected: .*NOPERM/);
    } finally {
      await Promise.all(managers.splice(0).map((m) => m.close()));
      await admin.call('ACL', 'DELUSER', user);
    }
  });

  it('(g) a tenant confined by ACL to its namespace: everything works inside, NOPERM outside', async () => {
    const ns = uniqueNamespace('f-acl');
    const other = uniqueNamespace('f-acl-other');
    const user = `tenant-${randomBytes(4).toString('hex')}`;
    const admin = direct();
    await admin.call('ACL', 'SETUSER', user, 'reset', 'on', '>pw', `~${ns}/*`, `&${ns}/*`, '+@all', '-@dangerous');
    try {
      // `-@dangerous` refuses INFO: ioredis's ready check would print a warning on every connection
      // (it proceeds anyway), and the library's run_id check is skipped (it tolerates the refusal).
      const tenant = (): Redis => direct({ username: user, password: 'pw', enableReadyCheck: false });
      const a = managerOn(tenant(), ns, HB);
      const b = managerOn(tenant(), ns, HB);
      const log = record(b);
      await Promise.all([a.ready(), b.ready()]);

      // set / get / events / batch / iteration / size / clear, all inside the namespace.
      await a.setMany([
        ['x', 1],
        ['y', 2],
      ]);
      expect(await b.getMany(['x', 'y', 'z'])).toEqual([1, 2, undefined]);
      const invalidated = nextEvent(b, 'invalidate', 5_000, (k) => k === 'x');
      await a.set('x', 10);
      await invalidated;
      expect(await b.get('x')).toBe(10);
      expect(await b.delete('y')).toBe(true);
      expect(await b.size()).toBe(1);
      const keys: string[] = [];
      for await (const k of b.keys()) keys.push(k);
      expect(keys).toEqual(['x']);
      const entries: [string, unknown][] = [];
      for await (const e of b.entries()) entries.push(e);
      expect(entries).toEqual([['x', 10]]);
      const cleared = nextEvent(a, 'invalidate', 5_000, (k) => k === 'x');
      await b.clear();
      await cleared;
      expect(await a.get('x')).toBeUndefined();
      expect(log.errors).toEqual([]);

      // Another namespace with the same user: every command is refused and surfaces as a rejection.
      const foreign = new PubSubRedisDict<unknown>(tenant(), other);
      await expect(foreign.set('k', 1)).rejects.toThrow(/NOPERM/);
      await expect(foreign.get('k')).rejects.toThrow(/NOPERM/);
      await expect(foreign.delete('k')).rejects.toThrow(/NOPERM/);
      const intruder = managerOn(tenant(), other, HB);
      const intruderErrors: Error[] = [];
      intruder.on('error', (error) => intruderErrors.push(error));
      await expect(intruder.get('k')).rejects.toThrow(/NOPERM/);
      await expect(intruder.set('k', 1)).rejects.toThrow(/NOPERM/);
      await pollUntil(() => intruderErrors.some((e) => /NOPERM/.test(e.message)), { timeoutMs: 5_000, message: 'the refused SUBSCRIBE was not reported' });
      expect(intruder.isServing).toBe(false);
      // Nothing reached the other namespace.
      expect(await admin.exists(`${other}/k`)).toBe(0);
    } finally {
      await Promise.all(managers.splice(0).map((m) => m.close()));
      await admin.call('ACL', 'DELUSER', user);
    }
  });
});

// ------------------------------------------------------------------ (e) cluster failover

describe('near cache through a cluster failover (private 3+3 cluster)', () => {
  const clients = withClients();
  const managers: Manager[] = [];
  afterEach(async () => {
    await Promise.all(managers.splice(0).map((m) => m.close()));
    await clients.closeAll();
  });

  it('(e) SIGKILL of a master: the replica takes over, writes succeed, zero stale reads (classic and sharded)', async () => {
    const cluster = await startCluster();
    try {
      const seeds = cluster.seeds;
      const connect = (): Cluster => clients.track(new Cluster(seeds));
      const raw = connect();
      await raw.ping();
      // Two hash tags per master, so that keys (and a sentinel) live on every shard.
      const tagsByMaster = new Map<string, string[]>();
      for (let i = 0; [...tagsByMaster.values()].filter((t) => t.length >= 2).length < 3; i++) {
        const tag = `t${i}`;
        const master = raw.slots[slotOf(`{${tag}}`)]?.[0] ?? '?';
        const list = tagsByMaster.get(master) ?? [];
        if (list.length < 2) list.push(tag);
        tagsByMaster.set(master, list);
      }
      const tags = [...tagsByMaster.values()].flat();
      const keysOfTag = (tag: string): string[] => Array.from({ length: 5 }, (_, i) => `{${tag}}k${i}`);
      const keys = tags.flatMap(keysOfTag);

      const mk = (ns: string, sharded: boolean, opts: PubSubCacheManagerOptions): Manager => {
        const m = new PubSubCacheManager<unknown>(new PubSubRedisDict<unknown>(connect(), ns, { shardedPubSub: sharded }), opts);
        managers.push(m);
        return m;
      };
      const nsClassic = uniqueNamespace('f-failover');
      const nsSharded = uniqueNamespace('f-failover-sharded');
      const pairs = [
        { name: 'classic', a: mk(nsClassic, false, HB), b: mk(nsClassic, false, HB), ns: nsClassic },
        { name: 'sharded', a: mk(nsSharded, true, HB), b: mk(nsSharded, true, HB), ns: nsSharded },
      ];
      await Promise.all(pairs.flatMap((p) => [p.a.ready(), p.b.ready()]));
      const logs = pairs.map((p) => record(p.b));
      for (const p of pairs) {
        await p.a.setMany(keys.map((k) => [k, { gen: 1 }]));
        await p.b.getMany(keys);
        await Promise.all(tags.map((t) => p.b.get(`{${t}}sentinel`)));
      }

      // Kill the master of the first tag's slot.
      const victimAddress = raw.slots[slotOf(`{${tags[0]}}`)]![0]!;
      const victim = (await cluster.masters()).find((n) => `${n.host}:${n.port}` === victimAddress);
      if (!victim) throw new Error(`no master at ${victimAddress}`);
      await victim.kill('SIGKILL');
      const killedAt = Date.now();
      await cluster.waitForOk(30_000);
      const failoverMs = Date.now() - killedAt;
      expect((await cluster.masters()).map((n) => n.port)).not.toContain(victim.port);

      // No client's slot map is refreshed by hand: the library's own routing follows the failover.
      for (const p of pairs) await p.a.setMany(keys.map((k) => [k, { gen: 2 }]));

      // Per shard: once b served the sentinel's new value while serving, compare every key of it.
      for (const [i, p] of pairs.entries()) {
        for (const tag of tags) {
          const sentinel = `{${tag}}sentinel`;
          const value = `done-${tag}`;
          await p.a.set(sentinel, value);
          await pollUntil(async () => p.b.isServing && (await p.b.get(sentinel)) === value && p.b.cache.has(sentinel), {
            timeoutMs: 30_000,
            message: `${p.name}: b never served ${sentinel} (down: ${logs[i]!.down.join(',')}; resyncs: ${JSON.stringify(logs[i]!.resyncs)})`,
          });
          const truth = new RedisDict<unknown>(raw, p.ns);
          expect(await staleReads(p.b, truth, keysOfTag(tag)), `${p.name} after a failover of ${failoverMs} ms`).toEqual([]);
        }
      }
      expect(await pairs[0]!.b.getMany(keys)).toEqual(keys.map(() => ({ gen: 2 })));
      expect(await pairs[1]!.b.getMany(keys)).toEqual(keys.map(() => ({ gen: 2 })));
    } finally {
      await Promise.all(managers.splice(0).map((m) => m.close()));
      await clients.closeAll();
      await cluster.stop();
    }
  }, 180_000);
});

/**
 * Waits until `b` caches a sentinel key, then writes it with `writer` and waits for its
 * invalidation on `b`: the writer's events reach `b` in publish order, so every earlier one did too.
 */
async function sentinelSeen(b: PubSubCacheManager<unknown>, writer: PubSubRedisDict<unknown>): Promise<void> {
  await pollUntil(
    async () => {
      await b.get('sentinel');
      return b.isServing && b.cache.has('sentinel');
    },
    { timeoutMs: 10_000, message: 'b never cached the sentinel' },
  );
  const seen = nextEvent(b, 'invalidate', 10_000, (key) => key === 'sentinel');
  await writer.set('sentinel', 'done');
  await seen;
}
