/**
 * Helpers for test files: ioredis clients for the Redis servers provided by the global setup,
 * per-topology factories for `describe.each`, unique namespaces, deadline polling and client cleanup.
 *
 * Every client here talks to a real Redis (see `test/helpers/global-setup.ts`).
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';
import { afterAll, afterEach, inject } from 'vitest';
import type { ProvidedRedis, ProvidedRedisNode } from './provided.js';

export { pollUntil, type PollOptions } from './poll.js';

/** The endpoints provided by the global setup (`inject('redis')`). */
export function redisEndpoints(): ProvidedRedis {
  return inject('redis');
}

/** `true` when the global setup provided a cluster (it does unless `REDIS_SKIP_CLUSTER=1` or none could be started). */
export function hasCluster(): boolean {
  return inject('redis').cluster !== null;
}

/** Seed nodes of the provided cluster. @throws Error when there is no cluster. */
export function clusterSeeds(): ProvidedRedisNode[] {
  const { cluster } = inject('redis');
  if (!cluster) {
    throw new Error(
      'No Redis cluster was provided to this run (REDIS_SKIP_CLUSTER=1, or REDIS_URL without REDIS_CLUSTER_NODES ' +
        'and no redis-server on PATH). See the global setup line "[redis] ..." at the start of the run.',
    );
  }
  return cluster.map(({ host, port }) => ({ host, port }));
}

/** A new ioredis client for the provided standalone server. The caller closes it (see {@link withClients}). */
export function standaloneClient(opts: RedisOptions = {}): Redis {
  return new Redis(inject('redis').standalone.url, opts);
}

/** A new ioredis Cluster client seeded with the provided cluster's nodes. @throws Error when there is no cluster. */
export function clusterClient(opts: ClusterOptions = {}): Cluster {
  return new Cluster(clusterSeeds(), opts);
}

/** Connection options that apply to both topologies (for a Cluster they become `redisOptions`). */
export type SharedClientOptions = NonNullable<ClusterOptions['redisOptions']>;

/** Which server layout a suite runs on. */
export type Topology = 'standalone' | 'cluster';

/** Creates a new client for one topology. */
export type ClientFactory = (opts?: SharedClientOptions) => Redis | Cluster;

/**
 * `[name, factory]` pairs for `describe.each`, so a contract suite runs on the standalone server and
 * on the 3+3 cluster:
 *
 * ```ts
 * describe.each(topologies())('RedisDict (%s)', (topology, factory) => { ... });
 * ```
 *
 * The cluster entry is left out only when the run has no cluster (the global setup says so loudly).
 */
export function topologies(): Array<[Topology, ClientFactory]> {
  const entries: Array<[Topology, ClientFactory]> = [['standalone', (opts) => standaloneClient(opts)]];
  if (hasCluster()) {
    entries.push([
      'cluster',
      (opts) => clusterClient(opts ? { redisOptions: opts, lazyConnect: opts.lazyConnect } : {}),
    ]);
  }
  return entries;
}

/**
 * A namespace nobody else uses in this Redis: `prefix` reduced to `[a-z0-9-]` plus a random suffix.
 * Use one per test so tests can share servers and run in parallel.
 */
export function uniqueNamespace(prefix = 'test'): string {
  const base =
    prefix
      .toLowerCase()
      .replace(/[^a-z0-9-]+/g, '-')
      .replace(/-+/g, '-')
      .replace(/^-|-$/g, '') || 'test';
  return `${base}-${randomBytes(5).toString('hex')}`;
}

/** A set of clients closed together, see {@link withClients}. */
export interface ClientRegistry {
  /** Registers `client` for {@link closeAll} and returns it. */
  track<T extends Redis | Cluster>(client: T): T;
  /** Number of clients still registered. */
  readonly size: number;
  /**
   * Closes every registered client: `quit()` when connected (bounded by a short deadline, since a
   * client behind a blackholed proxy never gets the reply), `disconnect()` otherwise or after it.
   */
  closeAll(): Promise<void>;
}

/** Closes one client: QUIT with a deadline, then disconnect. Never throws. */
export async function closeClient(client: Redis | Cluster, quitTimeoutMs = 2_000): Promise<void> {
  if (client.status === 'end') return;
  if (client.status === 'ready') {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, quitTimeoutMs);
    });
    await Promise.race([client.quit().then(() => undefined, () => undefined), deadline]);
    clearTimeout(timer);
  }
  client.disconnect();
}

/**
 * A client cleanup registry.
 *
 * ```ts
 * const clients = withClients({ closeAfter: 'each' });   // registers afterEach(closeAll)
 * it('...', async () => { const redis = clients.track(standaloneClient()); ... });
 * ```
 *
 * Without `closeAfter`, call `closeAll()` yourself (e.g. in `afterAll`).
 */
export function withClients(opts: { closeAfter?: 'each' | 'all' } = {}): ClientRegistry {
  const clients = new Set<Redis | Cluster>();
  const registry: ClientRegistry = {
    track(client) {
      clients.add(client);
      return client;
    },
    get size() {
      return clients.size;
    },
    async closeAll() {
      const all = [...clients];
      clients.clear();
      await Promise.all(all.map((client) => closeClient(client)));
    },
  };
  if (opts.closeAfter === 'each') afterEach(() => registry.closeAll());
  else if (opts.closeAfter === 'all') afterAll(() => registry.closeAll());
  return registry;
}
