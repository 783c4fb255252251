/**
 * This library (redis-pubsub-dict), from the root build output `dist/index.js`, with the ROOT
 * node_modules ioredis 6 (the copy the library imports; bentocache's ioredis 5 is never used here).
 *
 * Any class missing from dist/ (not written yet, or the build failed) makes the rows that need it
 * report "skipped: not implemented" instead of failing the run.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { importFromRoot, packageVersion, rootDir, rootIORedis, rootRequire } from '../lib/root.mjs';

export const name = 'redis-pubsub-dict';
export const version = () => packageVersion(rootRequire, 'redis-pubsub-dict') ?? rootRequire('./package.json').version;

const Redis = rootIORedis();

/** Thrown when the library (or one of its classes) is not available; reported as a skipped row. */
export class NotImplemented extends Error {
  constructor(what, detail) {
    super(`skipped: not implemented (${what}${detail ? `: ${detail}` : ''})`);
    this.skipped = true;
  }
}

let loaded;
/** Imports dist/index.js once; returns `{ mod, error }`. */
export async function load() {
  if (loaded) return loaded;
  const entry = join(rootDir, 'dist', 'index.js');
  if (!existsSync(entry)) {
    loaded = { mod: {}, error: 'dist/index.js not found (root `npm run build` failed or was not run)' };
    return loaded;
  }
  try {
    loaded = { mod: await importFromRoot('dist/index.js'), error: undefined };
  } catch (error) {
    loaded = { mod: {}, error: `dist/index.js failed to load: ${error.message}` };
  }
  return loaded;
}

/** The named export of dist/index.js, or throws NotImplemented. */
export async function need(exportName) {
  const { mod, error } = await load();
  const value = mod[exportName];
  if (typeof value !== 'function') throw new NotImplemented(exportName, error);
  return value;
}

async function connect(url) {
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 3 });
  await redis.connect();
  return redis;
}

/** Writes the data set into `namespace` with the library's own setMany (versioned records). */
export async function populate(env, namespace, dataset) {
  const Dict = (await load()).mod.RedisDict ?? (await need('PubSubRedisDict'));
  const redis = await connect(env.url);
  try {
    const dict = new Dict(redis, namespace);
    const { keys, values } = dataset;
    for (let start = 0; start < keys.length; start += 5000) {
      const entries = [];
      for (let i = start; i < Math.min(keys.length, start + 5000); i++) entries.push([keys[i], values[i]]);
      await dict.setMany(entries);
    }
  } finally {
    redis.quit();
  }
}

/**
 * One library instance: its own ioredis 6 connection, a PubSubRedisDict on `namespace` (which
 * duplicates the connection for its subscriber), and a PubSubCacheManager (`sync` mode
 * 'invalidate' or 'update') or, with `writeBack`, a WriteBackCacheManager. `storeOptions` go to the
 * store (the signed cases pass `signingKeys`).
 */
export async function create(env, { namespace, sync = 'invalidate', writeBack = false, writeBackOptions = {}, storeOptions = {} } = {}) {
  const PubSubRedisDict = await need('PubSubRedisDict');
  const Manager = await need(writeBack ? 'WriteBackCacheManager' : 'PubSubCacheManager');
  const redis = await connect(env.url);
  let cache;
  try {
    const store = new PubSubRedisDict(redis, namespace, storeOptions);
    const options = { cache: env.cacheEntries, sync };
    cache = writeBack ? new Manager(store, { ...options, ...writeBackOptions }) : new Manager(store, options);
    cache.on('error', (error) => env.log?.(`redis-pubsub-dict error: ${error.message}`));
    await cache.ready();
  } catch (error) {
    await cache?.close().catch(() => {});
    redis.disconnect();
    throw error;
  }
  return {
    cache,
    redis,
    get: (key) => cache.get(key),
    getOrSet: (key, loader, options) => cache.getOrSet(key, loader, options),
    set: (key, value) => cache.set(key, value),
    flush: () => cache.flush(),
    close: async () => {
      try {
        await cache.close();
      } finally {
        await redis.quit().catch(() => redis.disconnect());
      }
    },
  };
}
