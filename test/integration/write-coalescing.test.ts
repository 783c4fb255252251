/**
 * Write coalescing (issue #17, src/store/write-coalescer.ts): concurrent writes of one instance to one
 * slot group share apply-script calls, and each call still settles with its own outcome.
 *
 * Script calls are counted on the server with MONITOR (on the node that owns the keys' slot), never
 * by time: a marker command sent after the writes have settled tells when the monitor has seen
 * every one of them. Keys share a hash tag (`{g}-…`) so that on the cluster they share a slot.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { PubSubCacheManager } from '../../src/cache/cache-manager.js';
import { PubSubRedisDict } from '../../src/store/pubsub-redis-dict.js';
import type { WriteOutcome } from '../../src/store/types.js';
import { formatStamp } from '../../src/protocol/stamp.js';
import { isCluster, slotOf, type RedisClient } from '../../src/store/topology.js';
import { MAX_SENDS_PER_GROUP } from '../../src/store/write-coalescer.js';
import { rawMonitor } from '../helpers/monitor.js';
import { clusterSeeds, pollUntil, redisEndpoints, topologies, uniqueNamespace, withClients, type Topology } from '../helpers/connections.js';

const clients = withClients({ closeAfter: 'all' });
/** Clients logged in as a test's ACL user, closed before the user is deleted. */
const userClients = withClients();
const managers: PubSubCacheManager<unknown>[] = [];
afterAll(async () => {
  await Promise.all(managers.splice(0).map((m) => m.close()));
});

/** One apply-script call as MONITOR saw it: its keys (dictionary keys, without the namespace). */
interface ScriptCall {
  readonly keys: string[];
}

/** The address (`host:port`) of the master that serves `redisKey` on this client's server(s). */
async function nodeOf(client: RedisClient, redisKey: string): Promise<{ host: string; port: number }> {
  if (!isCluster(client)) return redisEndpoints().standalone;
  if (client.status !== 'ready') await new Promise<void>((resolve) => client.once('ready', () => resolve()));
  const owner = client.slots[slotOf(redisKey)]![0]!;
  const [host, port] = owner.split(':');
  return { host: host!, port: Number(port) };
}

/**
 * Watches the apply-script calls on keys of `ns` on the node serving `{g}`-tagged keys of `ns`;
 * `calls()` resolves once a marker sent after the writes has been seen (everything before it too).
 */
async function watchScripts(client: RedisClient, ns: string): Promise<{ calls(): Promise<ScriptCall[]>; stop(): void }> {
  const node = await nodeOf(client, `${ns}/{g}-x`);
  const admin = clients.track(new Redis(node));
  const seen: ScriptCall[] = [];
  const markers = new Set<string>();
  const prefix = `${ns}/`;
  const monitor = await rawMonitor(node, (args: string[]) => {
    const name = args[0]?.toLowerCase();
    if ((name === 'evalsha' || name === 'eval') && args[3]?.startsWith(prefix)) {
      const n = Number(args[2]);
      seen.push({ keys: args.slice(3, 3 + n).map((k) => k.slice(prefix.length)) });
    } else if (name === 'get' && args[1]?.startsWith(`${prefix}{g}-marker-`)) {
      markers.add(args[1]);
    }
  });
  return {
    async calls() {
      const marker = `${prefix}{g}-marker-${randomBytes(4).toString('hex')}`;
      await admin.get(marker);
      await pollUntil(() => markers.has(marker), { message: 'MONITOR did not show the marker' });
      return seen.splice(0);
    },
    stop() {
      monitor.stop();
    },
  };
}

describe.each(topologies())('write coalescing (%s)', (topology, factory) => {
  function store(ns: string): PubSubRedisDict<unknown> {
    return new PubSubRedisDict<unknown>(clients.track(factory()), ns);
  }

  async function manager(ns: string, sync: 'invalidate' | 'update' = 'invalidate'): Promise<PubSubCacheManager<unknown>> {
    const m = new PubSubCacheManager<unknown>(store(ns), { cache: 'unbounded', sync });
    managers.push(m);
    await m.ready();
    return m;
  }

  it('200 concurrent set()s of one instance share script calls; each settles, each key is written once, and a peer converges', async () => {
    const ns = uniqueNamespace('coalesce');
    const writer = await manager(ns);
    const peer = await manager(ns);
    const keys = Array.from({ length: 200 }, (_, i) => `{g}-${i}`);
    // The peer caches the old values: it can only see the new ones through the writer's messages.
    await writer.setMany(keys.map((k) => [k, 'old']));
    expect(await peer.getMany(keys)).toEqual(keys.map(() => 'old'));
    const watch = await watchScripts(writer.store.redis, ns);
    try {
      await Promise.all(keys.map((k, i) => writer.set(k, i)));
      const calls = await watch.calls();
      // The first call goes alone (its group was idle), the others share the calls that follow.
      expect(calls.length).toBeLessThanOrEqual(MAX_SENDS_PER_GROUP + 1);
      expect(calls.length).toBeLessThan(keys.length / 10);
      expect(calls.flatMap((c) => c.keys).sort()).toEqual([...keys].sort());
      for (const call of calls) expect(new Set(call.keys).size).toBe(call.keys.length);
    } finally {
      watch.stop();
    }
    expect(await writer.getMany(keys)).toEqual(keys.map((_, i) => i));
    await pollUntil(async () => (await peer.getMany(keys)).every((v, i) => v === i), { message: 'the peer did not converge' });
  });

  it('a lone set() is sent in the caller’s tick (coalescing adds no wait to it)', async () => {
    const ns = uniqueNamespace('coalesce-lone');
    const m = await manager(ns);
    const spy = vi.spyOn(m.store.redis, 'sendCommand');
    try {
      const written = m.set('{g}-lone', 1);
      // Synchronously, before any await: the script call is already in the client's hands.
      expect(spy).toHaveBeenCalledTimes(1);
      await written;
    } finally {
      spy.mockRestore();
    }
    expect(await m.get('{g}-lone')).toBe(1);
  });

  it('two writes of one key go out in the order issued, in separate calls, while other keys share them', async () => {
    const ns = uniqueNamespace('coalesce-order');
    const dict = store(ns);
    const watch = await watchScripts(dict.redis, ns);
    const write = (key: string, value: number): Promise<WriteOutcome<unknown>[]> => dict.writeVersioned([{ key, stamp: dict.clock.now(), deleted: false, value }]);
    let outcomes: WriteOutcome<unknown>[][];
    let calls: ScriptCall[];
    try {
      // The first goes alone; the rest wait for it, `{g}-k` three times.
      outcomes = await Promise.all([write('{g}-first', 0), write('{g}-k', 1), write('{g}-a', 2), write('{g}-k', 3), write('{g}-b', 4), write('{g}-k', 5)]);
      calls = await watch.calls();
    } finally {
      watch.stop();
    }
    // Every write applied: none was overtaken by a later write of its key (that would be a conflict).
    for (const [outcome] of outcomes) expect(outcome).toMatchObject({ status: 'written' });
    expect(await dict.get('{g}-k')).toBe(5);
    for (const call of calls) expect(new Set(call.keys).size).toBe(call.keys.length);
    expect(calls.filter((c) => c.keys.includes('{g}-k'))).toHaveLength(3);
    // Fewer calls than writes: a and b shared calls with the writes of k.
    expect(calls.length).toBeLessThan(6);
  });

  it('500 concurrent writes over 20 hot keys: every write applies in the order issued, and each key ends with its last write', async () => {
    const ns = uniqueNamespace('coalesce-hot');
    const dict = store(ns);
    const watch = await watchScripts(dict.redis, ns);
    const writes = Array.from({ length: 500 }, (_, i) => ({ key: `{g}-${(i * 7919) % 20}`, value: i }));
    let outcomes: WriteOutcome<unknown>[][];
    let calls: ScriptCall[];
    try {
      outcomes = await Promise.all(writes.map(({ key, value }) => dict.writeVersioned([{ key, stamp: dict.clock.now(), deleted: false, value }])));
      calls = await watch.calls();
    } finally {
      watch.stop();
    }
    // A write overtaken by a later write of its key would be refused (a conflict): none is.
    for (const [outcome] of outcomes) expect(outcome).toMatchObject({ status: 'written' });
    for (const call of calls) expect(new Set(call.keys).size).toBe(call.keys.length);
    expect(calls.flatMap((c) => c.keys)).toHaveLength(500);
    expect(calls.length).toBeLessThan(500);
    const last = new Map(writes.map(({ key, value }) => [key, value]));
    expect(await dict.getMany([...last.keys()])).toEqual([...last.values()]);
  });

  it('a change refused for clock skew in a shared call fails its own caller only', async () => {
    const ns = uniqueNamespace('coalesce-skew');
    const dict = store(ns);
    const peer = await manager(ns, 'update');
    const watch = await watchScripts(dict.redis, ns);
    const far = formatStamp(Date.now() + 10 * 60_000, 0, dict.clock.nodeId);
    let results: WriteOutcome<unknown>[][];
    let calls: ScriptCall[];
    try {
      results = await Promise.all([
        dict.writeVersioned([{ key: '{g}-first', stamp: dict.clock.now(), deleted: false, value: 0 }]),
        dict.writeVersioned([{ key: '{g}-a', stamp: dict.clock.now(), deleted: false, value: 1 }]),
        dict.writeVersioned([{ key: '{g}-skewed', stamp: far, deleted: false, value: 2 }]),
        dict.writeVersioned([{ key: '{g}-b', stamp: dict.clock.now(), deleted: false, value: 3 }]),
      ]);
      calls = await watch.calls();
    } finally {
      watch.stop();
    }
    // a, skewed and b shared one call.
    expect(calls.some((c) => ['{g}-a', '{g}-skewed', '{g}-b'].every((k) => c.keys.includes(k)))).toBe(true);
    const [first, a, skewed, b] = results.map((r) => r[0]);
    expect(first).toMatchObject({ status: 'written' });
    expect(a).toMatchObject({ status: 'written' });
    expect(b).toMatchObject({ status: 'written' });
    expect(skewed?.status).toBe('failed');
    expect(skewed?.status === 'failed' && (skewed.error as { code?: string }).code).toBe('E_CLOCK_SKEW');
    expect(await dict.getMany(['{g}-a', '{g}-skewed', '{g}-b'])).toEqual([1, undefined, 3]);
    // The peer hears the applied changes of the shared call (update mode: installed from the message).
    await pollUntil(async () => (await peer.get('{g}-a')) === 1 && (await peer.get('{g}-b')) === 3, { message: 'the peer did not converge' });
  });

  it('a key refused by an ACL key pattern in a shared call fails its own caller only (E_NOPERM), the others are written', async () => {
    const ns = uniqueNamespace('coalesce-acl');
    const user = await createUser(topology, ns);
    try {
      const dict = new PubSubRedisDict<unknown>(userClients.track(factory({ username: user.username, password: user.password })), ns);
      const admin = new PubSubRedisDict<unknown>(clients.track(factory()), ns);
      const [first, refused, other] = await Promise.allSettled([dict.set('{g}-ok-first', 0), dict.set('{g}-refused', 1), dict.set('{g}-ok-other', 2)]);
      expect(first.status).toBe('fulfilled');
      expect(other.status).toBe('fulfilled');
      expect(refused.status).toBe('rejected');
      expect(refused.status === 'rejected' && (refused.reason as { code?: string }).code).toBe('E_NOPERM');
      expect(await admin.getMany(['{g}-ok-first', '{g}-refused', '{g}-ok-other'])).toEqual([0, undefined, 2]);
    } finally {
      // The user's clients first: they would reconnect as a deleted user.
      await userClients.closeAll();
      await user.remove();
    }
  });
});

/** A user of docs/security.md's `acl:service` recipe whose keys are only `<ns>/{g}-ok*`, on every server of the topology. */
async function createUser(topology: Topology, ns: string): Promise<{ username: string; password: string; remove(): Promise<void> }> {
  const text = readFileSync(new URL('../../docs/security.md', import.meta.url), 'utf8');
  const line = /```text acl:service\n([^`]+)```/.exec(text)![1]!.trim();
  const username = `coalesce-${randomBytes(4).toString('hex')}`;
  const password = randomBytes(12).toString('hex');
  const tokens = line
    .split(/\s+/)
    .map((t) => (t === '~<ns>/*' ? '~<ns>/{g}-ok*' : t))
    .map((t) => t.replaceAll('<user>', username).replaceAll('<password>', password).replaceAll('<ns>', ns));
  const servers = (topology === 'standalone' ? [redisEndpoints().standalone] : clusterSeeds()).map(({ host, port }) => clients.track(new Redis({ host, port })));
  for (const server of servers) expect(await server.call('ACL', ...tokens.slice(1))).toBe('OK');
  return {
    username,
    password,
    async remove() {
      for (const server of servers) await server.call('ACL', 'DELUSER', username);
    },
  };
}
