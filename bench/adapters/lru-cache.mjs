/**
 * The floor: an awaited `async` wrapper around an lru-cache get (no Redis at all). Any async cache
 * hit costs at least this.
 */
import { rootRequire, packageVersion } from '../lib/root.mjs';

// The root copy: the same lru-cache the library uses.
const { LRUCache } = rootRequire('lru-cache');

export const name = 'lru-cache (awaited)';
export const version = () => packageVersion(rootRequire, 'lru-cache');

export async function create(env) {
  const lru = new LRUCache({ max: env.cacheEntries });
  return {
    lru,
    get: async (key) => lru.get(key),
    set: async (key, value) => {
      lru.set(key, value);
    },
    /** Fills the cache with fresh copies of the values (as if decoded from Redis). */
    prefill: async (dataset) => {
      const { keys, values } = dataset;
      for (let i = 0; i < keys.length; i++) lru.set(keys[i], JSON.parse(JSON.stringify(values[i])));
    },
    close: async () => lru.clear(),
  };
}
