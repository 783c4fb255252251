/**
 * The ACL recipes of docs/security.md, as written there: each recipe is read from the document
 * (the fenced blocks tagged `acl:<name>`), a user is created with it on the harness's standalone
 * server and on every node of its cluster, and the library is run as that user.
 *
 * - `acl:service` — everything a writer, a near cache and a write-back cache do works (set, get,
 *   getMany, has, delete, setMany, keys, entries, size, clear, the subscription and its
 *   invalidations, a guarded flush, sharded pub/sub on the cluster), and nothing outside the
 *   namespace is reachable;
 * - `acl:reader` — a near cache that reads and stays coherent, whose every write is refused with
 *   NOPERM and changes nothing.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Cluster, Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { PubSubCacheManager } from '../../src/cache/cache-manager.js';
import { PubSubRedisDict } from '../../src/store/pubsub-redis-dict.js';
import type { RedisClient } from '../../src/store/topology.js';
import { WriteBackCacheManager } from '../../src/write-back/manager.js';
import { clusterSeeds, redisEndpoints, topologies, uniqueNamespace, withClients, type Topology } from '../helpers/connections.js';
import { nextEventFor } from '../helpers/events.js';
import { type PubSubCacheManagerOptions, type ResyncInfo } from '../../src/cache/types.js';

const SECURITY_MD = new URL('../../docs/security.md', import.meta.url);

/** The command of the fenced block tagged `acl:<name>` in docs/security.md, as tokens. */
function recipe(name: string): string[] {
  const text = readFileSync(SECURITY_MD, 'utf8');
  const match = new RegExp('```text acl:' + name + '\\n([^`]+)```').exec(text);
  if (!match?.[1]) throw new Error(`docs/security.md has no \`\`\`text acl:${name} block`);
  const lines = match[1].trim().split('\n');
  expect(lines, `the acl:${name} block is one command`).toHaveLength(1);
  return lines[0]!.trim().split(/\s+/);
}

/** Admin connections (default user), closed after the file. */
const clients = withClients({ closeAfter: 'all' });
/** Connections logged in as a recipe's user, closed before the user is deleted. */
const userClients = withClients();
const managers: PubSubCacheManager<unknown>[] = [];
afterAll(async () => {
  await Promise.all(managers.splice(0).map((m) => m.close()));
});

/** Admin connections to every server of a topology (every node of the cluster: ACLs are per node). */
function admins(topology: Topology): Redis[] {
  const nodes = topology === 'standalone' ? [redisEndpoints().standalone] : clusterSeeds();
  return nodes.map(({ host, port }) => clients.track(new Redis({ host, port })));
}

/** Creates the user of recipe `name` for namespace `ns` on every server; returns its credentials and a remover. */
async function createUser(topology: Topology, name: string, ns: string): Promise<{ username: string; password: string; remove(): Promise<void> }> {
  const username = `${name}-${randomBytes(4).toString('hex')}`;
  const password = randomBytes(12).toString('hex');
  const tokens = recipe(name).map((t) => t.replaceAll('<user>', username).replaceAll('<password>', password).replaceAll('<ns>', ns));
  expect(tokens.slice(0, 2)).toEqual(['ACL', 'SETUSER']);
  const servers = admins(topology);
  for (const admin of servers) expect(await admin.call('ACL', ...tokens.slice(1))).toBe('OK');
  return {
    username,
    password,
    async remove() {
      await Promise.all(managers.splice(0).map((m) => m.close()));
      await userClients.closeAll();
      for (const admin of servers) await admin.call('ACL', 'DELUSER', username);
    },
  };
}

/** A client of the topology logged in as `user`. */
function clientAs(topology: Topology, user: { username: string; password: string }): RedisClient {
  const auth = { username: user.username, password: user.password };
  if (topology === 'standalone') return userClients.track(new Redis({ ...redisEndpoints().standalone, ...auth }));
  return userClients.track(new Cluster(clusterSeeds(), { redisOptions: auth }));
}

/** A client of the topology with the default (all-powerful) user. */
function adminClient(topology: Topology): RedisClient {
  if (topology === 'standalone') return clients.track(new Redis(redisEndpoints().standalone.url));
  return clients.track(new Cluster(clusterSeeds()));
}

function manager(store: PubSubRedisDict<unknown>, opts: PubSubCacheManagerOptions = {}): { m: PubSubCacheManager<unknown>; errors: Error[]; resyncs: ResyncInfo[] } {
  const m = new PubSubCacheManager(store, { heartbeatIntervalMs: 200, heartbeatTimeoutMs: 1_000, ...opts });
  managers.push(m);
  const errors: Error[] = [];
  const resyncs: ResyncInfo[] = [];
  m.on('error', (error) => errors.push(error));
  m.on('resync', (info) => resyncs.push(info));
  return { m, errors, resyncs };
}

async function collect<T>(iterable: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of iterable) out.push(item);
  return out;
}

describe.each(topologies())('ACL recipes of docs/security.md (%s)', (topology) => {
  it('acl:service runs a writer and a near cache of its namespace, and reaches nothing else', async () => {
    const ns = uniqueNamespace('acl-service');
    const user = await createUser(topology, 'service', ns);
    try {
      const dict = new PubSubRedisDict<unknown>(clientAs(topology, user), ns);
      const { m, errors } = manager(new PubSubRedisDict<unknown>(clientAs(topology, user), ns));
      await m.ready();

      await dict.set('a', { n: 1 });
      await dict.setMany([
        ['b', 2],
        ['c', 3],
      ]);
      expect(await dict.get('a')).toEqual({ n: 1 });
      expect(await dict.getMany(['a', 'b', 'missing'])).toEqual([{ n: 1 }, 2, undefined]);
      expect(await dict.has('c')).toBe(true);
      expect(await dict.delete('c')).toBe(true);
      expect(await dict.size()).toBe(2);
      expect((await collect(dict.keys())).sort()).toEqual(['a', 'b']);
      expect(await collect(dict.entries())).toHaveLength(2);

      // The near cache: a miss read, then an invalidation through the subscription.
      expect(await m.get('a')).toEqual({ n: 1 });
      const invalidated = nextEventFor(m, 'invalidate', 'a');
      await dict.set('a', { n: 2 });
      await invalidated;
      expect(await m.get('a')).toEqual({ n: 2 });
      await m.set('b', 20);
      expect(await dict.get('b')).toBe(20);

      const cleared = nextEventFor(m, 'invalidate', 'a');
      await dict.clear();
      await cleared;
      expect(await dict.size()).toBe(0);
      expect(await m.get('a')).toBeUndefined();
      expect(errors).toEqual([]);

      // A write-back cache (guards: discard-on-remote-update) flushes through the same script.
      const wb = new WriteBackCacheManager(new PubSubRedisDict<unknown>(clientAs(topology, user), ns), { flushIntervalMs: 0, conflictPolicy: 'discard-on-remote-update' });
      managers.push(wb);
      await wb.ready();
      await wb.set('w', 'dirty');
      await wb.delete('b');
      const report = await wb.flush();
      expect(report.conflicts).toEqual([]);
      expect(await dict.getMany(['w', 'b'])).toEqual(['dirty', undefined]);

      // Outside the namespace: refused.
      const other = new PubSubRedisDict<unknown>(clientAs(topology, user), uniqueNamespace('acl-other'));
      await expect(other.get('a')).rejects.toThrow(/NOPERM/);
      await expect(other.set('a', 1)).rejects.toThrow(/NOPERM/);
    } finally {
      await user.remove();
    }
  });

  it.runIf(topology === 'cluster')('acl:service runs sharded pub/sub (SSUBSCRIBE, SPUBLISH probes)', async () => {
    const ns = uniqueNamespace('acl-sharded');
    const user = await createUser(topology, 'service', ns);
    try {
      const dict = new PubSubRedisDict<unknown>(clientAs(topology, user), ns, { shardedPubSub: true });
      const { m, errors } = manager(new PubSubRedisDict<unknown>(clientAs(topology, user), ns, { shardedPubSub: true }));
      await m.ready();
      await dict.set('k', 1);
      expect(await m.get('k')).toBe(1);
      const invalidated = nextEventFor(m, 'invalidate', 'k');
      await dict.set('k', 2);
      await invalidated;
      expect(await m.get('k')).toBe(2);
      expect(errors).toEqual([]);
    } finally {
      await user.remove();
    }
  });

  it('acl:reader reads and stays coherent; every write is refused with NOPERM and changes nothing', async () => {
    const ns = uniqueNamespace('acl-reader');
    const user = await createUser(topology, 'reader', ns);
    try {
      const writer = new PubSubRedisDict<unknown>(adminClient(topology), ns);
      await writer.setMany([
        ['a', 1],
        ['b', 2],
        ['gone', 3],
      ]);
      await writer.delete('gone');
      const { m, errors, resyncs } = manager(new PubSubRedisDict<unknown>(clientAs(topology, user), ns), { onReconnect: 'clear' });
      await m.ready();
      expect(await m.get('a')).toBe(1);
      expect(await m.getMany(['a', 'b', 'c'])).toEqual([1, 2, undefined]);
      // A tombstone: EXISTS counts it, HGET and TYPE tell it from foreign data (all in the recipe).
      expect(await m.getMany(['a', 'gone'])).toEqual([1, undefined]);
      expect(await m.has('gone')).toBe(false);
      expect(await m.has('b')).toBe(true);
      expect(await m.size()).toBe(2);
      expect((await collect(m.keys())).sort()).toEqual(['a', 'b']);
      const invalidated = nextEventFor(m, 'invalidate', 'a');
      await writer.set('a', 10);
      await invalidated;
      expect(await m.get('a')).toBe(10);

      await expect(m.set('a', 99)).rejects.toThrow(/NOPERM/);
      await expect(m.setMany([['z', 1]])).rejects.toThrow(/NOPERM/);
      await expect(m.delete('b')).rejects.toThrow(/NOPERM/);
      await expect(m.clear()).rejects.toThrow(/NOPERM/);
      await expect(m.store.set('a', 99)).rejects.toThrow(/NOPERM/);
      expect(await writer.getMany(['a', 'b', 'z'])).toEqual([10, 2, undefined]);

      // A reconnect: the resync of onReconnect 'clear' needs no command beyond the recipe.
      const before = resyncs.length;
      for (const admin of admins(topology)) await admin.call('CLIENT', 'KILL', 'USER', user.username).catch(() => 0);
      await expect.poll(() => resyncs.length, { timeout: 10_000 }).toBeGreaterThan(before);
      expect(resyncs.at(-1)?.mode).toBe('clear');
      expect(await m.get('a')).toBe(10);
      expect(errors).toEqual([]);
    } finally {
      await user.remove();
    }
  });

  it('acl:reader with the default onReconnect revalidate: the resync cannot run the script, clears the cache and reports NOPERM', async () => {
    const ns = uniqueNamespace('acl-reader-reval');
    const user = await createUser(topology, 'reader', ns);
    try {
      const writer = new PubSubRedisDict<unknown>(adminClient(topology), ns);
      await writer.set('a', 1);
      const { m, errors, resyncs } = manager(new PubSubRedisDict<unknown>(clientAs(topology, user), ns));
      await m.ready();
      expect(await m.get('a')).toBe(1);
      expect(m.cache.size).toBe(1);
      // Only the resyncs after the kill count (on a cluster one may run right after ready(),
      // before 'a' was cached: it drops nothing).
      const before = resyncs.length;
      for (const admin of admins(topology)) await admin.call('CLIENT', 'KILL', 'USER', user.username).catch(() => 0);
      await expect.poll(() => resyncs.slice(before).find((r) => r.dropped > 0 || r.kept > 0), { timeout: 10_000 }).toMatchObject({ mode: 'revalidate', dropped: 1, kept: 0 });
      expect(m.cache.size).toBe(0);
      expect(errors.some((e) => /NOPERM/.test(e.message))).toBe(true);
      expect(await m.get('a')).toBe(1);
    } finally {
      await user.remove();
    }
  });
});
