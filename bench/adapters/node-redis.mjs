/**
 * node-redis (the `redis` package, v5+) with client-side caching: RESP3 + `clientSideCache`, so
 * the server tracks the keys this client read and pushes invalidations when they change.
 * Values are JSON strings; node-redis returns the string, which the adapter parses (the caller
 * must, to use the object). `getRaw` returns the string as is.
 */
import { benchRequire, packageVersion } from '../lib/root.mjs';

const { createClient } = benchRequire('redis');

export const name = 'node-redis CSC';
export const version = () => packageVersion(benchRequire, 'redis');

export async function create(env) {
  const client = createClient({
    url: env.url,
    RESP: 3,
    clientSideCache: { ttl: 0, maxEntries: env.cacheEntries, evictPolicy: 'LRU', recordStats: false },
  });
  client.on('error', (error) => env.log?.(`node-redis error: ${error.message}`));
  await client.connect();
  const prefix = env.prefix + ':raw:';
  return {
    client,
    getRaw: (key) => client.get(prefix + key),
    get: async (key) => {
      const s = await client.get(prefix + key);
      return s === null ? undefined : JSON.parse(s);
    },
    set: (key, value) => client.set(prefix + key, JSON.stringify(value)),
    close: () => client.close(),
  };
}
