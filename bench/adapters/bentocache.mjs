/**
 * bentocache 1.6, set up as its multi-tier docs recommend: memory L1 + Redis L2 + Redis bus
 * (peers drop their L1 entry when another instance writes). It uses ioredis 5, from
 * bench/node_modules (bentocache's peer dependency), never the root ioredis 6.
 */
import { URL } from 'node:url';
import { benchRequire, packageVersion } from '../lib/root.mjs';

// bench/node_modules copies (bare specifiers resolve from bench/).
const { BentoCache, bentostore } = await import('bentocache');
const { memoryDriver } = await import('bentocache/drivers/memory');
const { redisDriver, redisBusDriver } = await import('bentocache/drivers/redis');
const IORedis5 = (await import('ioredis')).default;

export const name = 'bentocache';
export const version = () => packageVersion(benchRequire, 'bentocache');
export const ioredisVersion = () => packageVersion(benchRequire, 'ioredis');

function connectionOptions(url) {
  const u = new URL(url);
  return {
    host: u.hostname,
    port: Number(u.port || 6379),
    username: u.username || undefined,
    password: u.password ? decodeURIComponent(u.password) : undefined,
    db: u.pathname.length > 1 ? Number(u.pathname.slice(1)) : 0,
  };
}

/** The Redis key bentocache uses for `key` (its store prefix + ':' + key). */
const l2Key = (env, key) => `${env.prefix}-bento:${key}`;

/**
 * Seeds the L2 (Redis) with the data set in bentocache's own stored format, by MSET chunks:
 * going through `bento.set()` (L1 + L2 + bus message, ~150 µs each) would take ~15 s for 100k keys.
 * `create()` + `get()` then read these entries like any written by bentocache (checked by main.mjs).
 */
export async function populate(env, dataset) {
  const redis = new IORedis5(env.url, { lazyConnect: true });
  await redis.connect();
  try {
    const createdAt = Date.now();
    const logicalExpiration = createdAt + 3_600_000;
    const { keys, values } = dataset;
    for (let start = 0; start < keys.length; start += 2000) {
      const args = [];
      for (let i = start; i < Math.min(keys.length, start + 2000); i++) {
        args.push(l2Key(env, keys[i]), JSON.stringify({ value: values[i], logicalExpiration, tags: [], createdAt }));
      }
      await redis.mset(args);
    }
  } finally {
    redis.disconnect();
  }
}

/**
 * One bentocache instance (its own L1, its own L2 connection, its own bus connections).
 * `serialize: false` is bentocache's fastest L1 setting: the L1 keeps the value objects themselves
 * (no JSON round trip per hit; the caller gets the cached object, not a copy).
 * All instances of a run share the same prefix, so they are peers on one bus.
 */
export async function create(env, { serialize = true } = {}) {
  const connection = new IORedis5(env.url, { lazyConnect: true });
  await connection.connect();
  const bento = new BentoCache({
    default: 'cache',
    prefix: `${env.prefix}-bento`,
    ttl: '1h',
    stores: {
      cache: bentostore()
        .useL1Layer(memoryDriver({ maxItems: env.cacheEntries, serialize }))
        .useL2Layer(redisDriver({ connection }))
        .useBus(redisBusDriver({ connection: connectionOptions(env.url) })),
    },
  });
  return {
    bento,
    get: (key) => bento.get({ key }),
    set: (key, value) => bento.set({ key, value }),
    close: async () => {
      await bento.disconnectAll();
      connection.disconnect();
    },
  };
}
