/**
 * Expiry property (issue #15): random interleavings of writes with short TTLs (and without),
 * deletes, write-back flushes, `getOrSet` loads and reads on three real cache managers sharing a
 * namespace (update mode, invalidate mode, write-back), on a standalone server and a cluster.
 *
 * Property: no read (`get`, `getMany`, `getOrSet` hit) ever returns a value past its expiry. Every
 * value is unique, so a value read names its write; its expiry time is at most the time the write
 * returned plus its `ttlMs`, and a read that began at `t` may return it only if that bound is above
 * `t`. All instances run in this process and share one clock (real time plus an offset that the
 * `advance` command moves, so that entries expire between commands without any waiting): the
 * clock-skew allowance is zero. Redis expires keys by its own (real) clock.
 */
import fc from 'fast-check';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { PubSubCacheManager } from '../src/cache/cache-manager.js';
import { PubSubRedisDict } from '../src/store/pubsub-redis-dict.js';
import type { RedisClient } from '../src/store/topology.js';
import { WriteBackCacheManager } from '../src/write-back/manager.js';
import { closeClient, topologies, uniqueNamespace } from '../test/helpers/connections.js';
import { params, seedOf, timeoutOf } from './config.js';

const FILE = import.meta.url;
seedOf(FILE);

const KEYS = ['a', 'b', 'c', '{t}d'] as const;

/** What the property knows of a written value: the latest time its expiry can be. */
interface Written {
  readonly latestExpiry: number;
}

interface World {
  readonly managers: PubSubCacheManager<string>[];
  readonly now: () => number;
  offset: number;
  readonly written: Map<string, Written>;
  next: number;
  reads: number;
  expiredReads: number;
}

type Cmd = fc.AsyncCommand<object, World>;

function checkServed(w: World, value: string | undefined, startedAt: number, what: string): void {
  w.reads++;
  if (value === undefined) return;
  const write = w.written.get(value);
  expect(write, `${what} returned ${value}, never written`).toBeDefined();
  expect(write!.latestExpiry, `${what} returned ${value} past its expiry`).toBeGreaterThan(startedAt);
}

class SetCmd implements Cmd {
  constructor(readonly i: number, readonly key: string, readonly ttlMs: number) {}
  check = (): boolean => true;
  async run(_m: object, w: World): Promise<void> {
    const value = `v${w.next++}`;
    // Registered before the write: a peer may read it before set() returns.
    w.written.set(value, { latestExpiry: Infinity });
    await w.managers[this.i]!.set(this.key, value, this.ttlMs > 0 ? { ttlMs: this.ttlMs } : undefined);
    if (this.ttlMs > 0) w.written.set(value, { latestExpiry: w.now() + this.ttlMs });
  }
  toString = (): string => `set(${this.i}, ${this.key}, ttl ${this.ttlMs})`;
}

class DeleteCmd implements Cmd {
  constructor(readonly i: number, readonly key: string) {}
  check = (): boolean => true;
  async run(_m: object, w: World): Promise<void> {
    await w.managers[this.i]!.delete(this.key);
  }
  toString = (): string => `delete(${this.i}, ${this.key})`;
}

class FlushCmd implements Cmd {
  check = (): boolean => true;
  async run(_m: object, w: World): Promise<void> {
    await (w.managers[2] as WriteBackCacheManager<string>).flush().catch(() => undefined);
  }
  toString = (): string => 'flush()';
}

class GetCmd implements Cmd {
  constructor(readonly i: number, readonly key: string) {}
  check = (): boolean => true;
  async run(_m: object, w: World): Promise<void> {
    const startedAt = w.now();
    checkServed(w, await w.managers[this.i]!.get(this.key), startedAt, `get(${this.i}, ${this.key})`);
  }
  toString = (): string => `get(${this.i}, ${this.key})`;
}

class GetManyCmd implements Cmd {
  constructor(readonly i: number) {}
  check = (): boolean => true;
  async run(_m: object, w: World): Promise<void> {
    const startedAt = w.now();
    const values = await w.managers[this.i]!.getMany([...KEYS]);
    values.forEach((value, j) => checkServed(w, value, startedAt, `getMany(${this.i})[${KEYS[j]}]`));
  }
  toString = (): string => `getMany(${this.i})`;
}

class GetOrSetCmd implements Cmd {
  constructor(readonly i: number, readonly key: string, readonly ttlMs: number) {}
  check = (): boolean => true;
  async run(_m: object, w: World): Promise<void> {
    const startedAt = w.now();
    let loaded: string | undefined;
    const loader = (): string => {
      loaded = `v${w.next++}`;
      w.written.set(loaded, { latestExpiry: Infinity });
      return loaded;
    };
    const value = await w.managers[this.i]!.getOrSet(this.key, loader, { ttlMs: this.ttlMs });
    if (loaded !== undefined) w.written.set(loaded, { latestExpiry: w.now() + this.ttlMs });
    if (value !== loaded) checkServed(w, value, startedAt, `getOrSet(${this.i}, ${this.key})`);
  }
  toString = (): string => `getOrSet(${this.i}, ${this.key}, ttl ${this.ttlMs})`;
}

class AdvanceCmd implements Cmd {
  constructor(readonly ms: number) {}
  check = (): boolean => true;
  async run(_m: object, w: World): Promise<void> {
    w.offset += this.ms;
  }
  toString = (): string => `advance(${this.ms})`;
}

const keyArb = fc.constantFrom(...KEYS);
const instArb = fc.integer({ min: 0, max: 2 });
const ttlArb = fc.oneof(fc.constant(0), fc.integer({ min: 5, max: 150 }));
const commands = fc.commands(
  [
    fc.tuple(instArb, keyArb, ttlArb).map(([i, k, t]) => new SetCmd(i, k, t)),
    fc.integer({ min: 1, max: 200 }).map((ms) => new AdvanceCmd(ms)),
    fc.tuple(instArb, keyArb).map(([i, k]) => new DeleteCmd(i, k)),
    fc.constant(new FlushCmd()),
    fc.tuple(instArb, keyArb).map(([i, k]) => new GetCmd(i, k)),
    fc.tuple(instArb, keyArb).map(([i, k]) => new GetCmd(i, k)),
    instArb.map((i) => new GetManyCmd(i)),
    fc.tuple(instArb, keyArb, fc.integer({ min: 5, max: 150 })).map(([i, k, t]) => new GetOrSetCmd(i, k, t)),
  ],
  { maxCommands: 40, size: '+1' },
);

let runs = 0;
let reads = 0;
afterAll(() => console.log(`[property] expiry: ${runs} runs, ${reads} reads checked`));

describe.each(topologies())('expiry property (%s)', (_topology, factory) => {
  it(
    'no cache serves a value past its expiry',
    async () => {
      await fc.assert(
        fc.asyncProperty(commands, async (cmds) => {
          const ns = uniqueNamespace('prop-expiry');
          const clients: RedisClient[] = [];
          const clock = { offset: 0 };
          const now = (): number => Date.now() + clock.offset;
          const store = (): PubSubRedisDict<string> => {
            const client = factory();
            clients.push(client);
            return new PubSubRedisDict<string>(client, ns, { clock: now });
          };
          const managers = [
            new PubSubCacheManager<string>(store(), { sync: 'update' }),
            new PubSubCacheManager<string>(store(), { sync: 'invalidate' }),
            new WriteBackCacheManager<string>(store(), { flushIntervalMs: 0 }),
          ];
          const w: World = {
            managers,
            now,
            get offset() {
              return clock.offset;
            },
            set offset(ms: number) {
              clock.offset = ms;
            },
            written: new Map(),
            next: 0,
            reads: 0,
            expiredReads: 0,
          };
          try {
            await Promise.all(managers.map((m) => m.ready()));
            await fc.asyncModelRun(() => ({ model: {}, real: w }), cmds);
          } finally {
            await Promise.allSettled(managers.map((m) => m.close()));
            await Promise.all(clients.map((c) => closeClient(c as Redis)));
          }
          runs++;
          reads += w.reads;
        }),
        params(FILE, 30),
      );
    },
    timeoutOf(180_000),
  );
});
