/**
 * Batch operations do work linear in their number of keys (issue #17): counted, never timed.
 *
 * The work counted is every element an array's linear search visits (`includes`, `indexOf`,
 * `lastIndexOf`, `find`, `findIndex`, `findLast`, `findLastIndex`, `some`, `every`): a search
 * inside a per-key loop (the `missing.includes(k)` that made a cold `getMany` of 100k keys take
 * 15 s) makes this count grow with n², a linear algorithm keeps it at a constant per key, whatever
 * the library or ioredis does per command. The counter is installed on `Array.prototype` only
 * around the operation under test, in this test file's own process (vitest runs each file in a
 * fork), then restored.
 *
 * Each operation runs at n and 4n keys against real Redis (standalone); the count per key at 4n
 * must stay below 1.5 times the count per key at n (a quadratic gives 4 times).
 */
import { afterAll, describe, expect, it } from 'vitest';
import { PubSubCacheManager } from '../../src/cache/cache-manager.js';
import { PubSubRedisDict } from '../../src/store/pubsub-redis-dict.js';
import { WriteBackCacheManager } from '../../src/write-back/manager.js';
import { standaloneClient, uniqueNamespace, withClients } from '../helpers/connections.js';
import { forceResync } from '../helpers/resync.js';

const SEARCHES = ['includes', 'indexOf', 'lastIndexOf', 'find', 'findIndex', 'findLast', 'findLastIndex', 'some', 'every'] as const;

/** Runs `work` while counting the elements visited by linear array searches (an upper bound: the array's length per call). */
async function countSearchWork(work: () => Promise<unknown>): Promise<number> {
  const proto = Array.prototype as unknown as Record<string, (...args: unknown[]) => unknown>;
  const originals = SEARCHES.map((name) => [name, proto[name]!] as const);
  let visited = 0;
  for (const [name, original] of originals) {
    proto[name] = function (this: unknown[], ...args: unknown[]) {
      visited += this.length;
      return original.apply(this, args);
    };
  }
  try {
    await work();
  } finally {
    for (const [name, original] of originals) proto[name] = original;
  }
  return visited;
}

const SMALL = 2_000;
const LARGE = 4 * SMALL;

/** Per-key search work at n = SMALL and n = LARGE, each on a fresh namespace prepared by `setup`. */
async function perKey(run: (n: number) => Promise<() => Promise<unknown>>): Promise<{ small: number; large: number }> {
  const small = (await countSearchWork(await run(SMALL))) / SMALL;
  const large = (await countSearchWork(await run(LARGE))) / LARGE;
  return { small, large };
}

/** The claim: the work per key does not grow with n (1 visit per key of slack for tiny counts). */
function expectLinear({ small, large }: { small: number; large: number }): void {
  expect(large).toBeLessThanOrEqual(1.5 * small + 1);
}

const keysOf = (n: number, tag: string): string[] => Array.from({ length: n }, (_, i) => `${tag}-${i}`);

describe('batch operations do linear work (standalone)', () => {
  const clients = withClients();
  const managers: PubSubCacheManager<number>[] = [];
  afterAll(async () => {
    for (const m of managers) await m.close();
    await clients.closeAll();
  });

  async function manager(kind: 'through' | 'back' = 'through'): Promise<PubSubCacheManager<number>> {
    const store = new PubSubRedisDict<number>(clients.track(standaloneClient()), uniqueNamespace('scaling'));
    const m = kind === 'back' ? new WriteBackCacheManager<number>(store, { cache: 'unbounded', flushIntervalMs: 0, maxDirty: 1_000_000, maxPending: 1_000_000 }) : new PubSubCacheManager<number>(store, { cache: 'unbounded' });
    managers.push(m);
    await m.ready();
    return m;
  }

  it('getMany of cold keys (each distinct, plus repeats)', async () => {
    const counts = await perKey(async (n) => {
      const m = await manager();
      const keys = keysOf(n, 'k');
      // Written by the store, not through the manager: nothing is cached.
      await m.store.setMany(keys.map((k, i) => [k, i]));
      // Every key twice: the repeats must not be looked up among the misses one by one either.
      return async () => {
        const values = await m.getMany([...keys, ...keys]);
        expect(values[n - 1]).toBe(n - 1);
        expect(values[2 * n - 1]).toBe(n - 1);
      };
    });
    expectLinear(counts);
  });

  it('getMany of hot keys', async () => {
    const counts = await perKey(async (n) => {
      const m = await manager();
      const keys = keysOf(n, 'k');
      await m.setMany(keys.map((k, i) => [k, i]));
      return async () => expect((await m.getMany(keys))[n - 1]).toBe(n - 1);
    });
    expectLinear(counts);
  });

  it('setMany and deleteMany', async () => {
    const sets = await perKey(async (n) => {
      const m = await manager();
      return () => m.setMany(keysOf(n, 'k').map((k, i) => [k, i]));
    });
    expectLinear(sets);
    const deletes = await perKey(async (n) => {
      const m = await manager();
      const keys = keysOf(n, 'k');
      await m.setMany(keys.map((k, i) => [k, i]));
      return async () => expect(await m.deleteMany(keys)).toBe(n);
    });
    expectLinear(deletes);
  });

  it('write-back sets then flush', async () => {
    const counts = await perKey(async (n) => {
      const m = (await manager('back')) as WriteBackCacheManager<number>;
      return async () => {
        for (const [i, k] of keysOf(n, 'k').entries()) await m.set(k, i);
        await m.flush();
      };
    });
    expectLinear(counts);
  });

  it('resync of the cached keys', async () => {
    const publisher = clients.track(standaloneClient());
    const counts = await perKey(async (n) => {
      const m = await manager();
      await m.setMany(keysOf(n, 'k').map((k, i) => [k, i]));
      return async () => {
        const info = await forceResync(m as PubSubCacheManager<unknown>, publisher, 'k-0');
        expect(info.kept).toBe(n);
      };
    });
    expectLinear(counts);
  });

  it('keys() iteration and clear()', async () => {
    const iterate = await perKey(async (n) => {
      const m = await manager();
      await m.setMany(keysOf(n, 'k').map((k, i) => [k, i]));
      return async () => {
        let seen = 0;
        for await (const _ of m.keys()) seen++;
        expect(seen).toBe(n);
      };
    });
    expectLinear(iterate);
    const clears = await perKey(async (n) => {
      const m = await manager();
      await m.setMany(keysOf(n, 'k').map((k, i) => [k, i]));
      return () => m.clear();
    });
    expectLinear(clears);
  });
});
