/**
 * Races under `fc.scheduler()` on the real standalone server (I4, I5, and I1/I3 after them).
 *
 * Instance A's store is wrapped so that each Redis call is two scheduled steps: "sent" (the
 * command runs on the server, atomically within the step) and "reply" (the caller sees the
 * result). Remote changes are made by a second real instance B, whose events reach A through
 * real pub/sub: B's step is "write, and wait until A received the event". Forged copies of
 * earlier events (fresh origins: late deliveries) and exact duplicates are published raw, also
 * as scheduled steps. So the scheduler decides, reproducibly, whether an event arrives before a
 * read is sent, while its reply is held back, or after; the same for write-through writes and
 * write-back flushes.
 *
 * Checked: every replacement of a cached entry is by a newer stamp, and no cached entry is ever
 * older than one held before (I4, after every step); after everything settled, every cached entry
 * has the stamp and value Redis holds (I5 / I1), every instance serves what Redis holds, and no
 * local write-back change vanished without a conflict report (I3).
 */
import fc from 'fast-check';
import type { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { PubSubCacheManager } from '../src/cache/cache-manager.js';
import { type MessageEntry, encodeEntry, encodeHeader } from '../src/protocol/messages.js';
import { PubSubRedisDict } from '../src/store/pubsub-redis-dict.js';
import type { VersionedValue } from '../src/protocol/record.js';
import { HybridClock, type Stamp } from '../src/protocol/stamp.js';
import type { ConflictResolver } from '../src/write-back/conflict.js';
import { WriteBackCacheManager } from '../src/write-back/manager.js';
import { pollUntil, standaloneClient, uniqueNamespace } from '../test/helpers/connections.js';
import { params, seedOf, timeoutOf } from './config.js';
import { arrayHeader } from './frames.js';
import { MessageRecorder, redisState } from './support.js';
import { type Conflict } from '../src/cache/types.js';
import { type VersionedChange, type WriteOutcome } from '../src/store/types.js';

const FILE = import.meta.url;
seedOf(FILE);

const KEYS = ['a', 'b', 'c'] as const;
const T0 = 1_700_000_000_000;
/** Fixed writer ids, so that ties between A's and B's stamps break the same way in every replay. */
const NODE_A = '000000000000000a';
const NODE_B = '000000000000000b';

/** Gives a store a clock with a fixed writer id (test-only: the id is random otherwise). */
function withNode<T extends PubSubRedisDict<unknown>>(store: T, node: string, wall: () => number): T {
  (store as unknown as { clock: HybridClock }).clock = new HybridClock(node, wall);
  return store;
}

/**
 * Runs `body` inside one scheduled step: the scheduler releases nothing else until it finished
 * (its Redis I/O included), which keeps interleavings reproducible.
 */
function atomicStep<T>(s: fc.Scheduler, label: string, body: () => Promise<T>): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    void s.schedule(Promise.resolve(), label, undefined, async (release) => {
      await release();
      try {
        resolve(await body());
      } catch (error) {
        reject(error);
      }
    });
  });
}

/** A store whose Redis calls are scheduled: "sent" (runs on the server) and "reply" are separate steps. */
class ScheduledStore extends PubSubRedisDict<unknown> {
  scheduler: fc.Scheduler | undefined;

  override async readVersioned(keys: readonly string[]): Promise<(VersionedValue<unknown> | undefined)[]> {
    const s = this.scheduler;
    if (s === undefined) return super.readVersioned(keys);
    const found = await atomicStep(s, `A: MGET ${keys.join(',')} sent`, () => super.readVersioned(keys));
    const shown = found.map((f, i) => `${keys[i]}@${f?.stamp.slice(12, 18) ?? '-'}`).join(',');
    return s.schedule(Promise.resolve(found), `A: MGET reply ${shown}`);
  }

  override async writeVersioned(changes: readonly VersionedChange<unknown>[]): Promise<WriteOutcome<unknown>[]> {
    const s = this.scheduler;
    if (s === undefined) return super.writeVersioned(changes);
    const shown = changes.map((c) => `${c.key}${c.deleted ? '(del)' : ''}@${c.stamp.slice(12, 18)}`).join(',');
    const outcomes = await atomicStep(s, `A: CAS ${shown} sent`, () => super.writeVersioned(changes));
    return s.schedule(Promise.resolve(outcomes), `A: CAS reply ${outcomes.map((o) => o.status).join(',')}`);
  }
}

/** The state of one run, seen by the checks that run after every scheduled step. */
interface RunState {
  readonly a: PubSubCacheManager<unknown>;
  readonly violations: string[];
  readonly highestHeld: Map<string, Stamp>;
  readonly arrived: Set<string>;
  readonly arrivalWaiters: Set<() => void>;
}

let current: RunState | undefined;

/** I4 (history): a present entry is never older than one held before for the same key. */
function checkHistory(run: RunState): void {
  for (const key of run.a.cache.keys()) {
    const entry = run.a.cache.peek(key);
    if (entry === undefined || !entry.present) continue;
    const held = run.highestHeld.get(key);
    if (held !== undefined && entry.stamp < held) run.violations.push(`I4: A holds ${key}@${entry.stamp} after having held ${held}`);
    if (held === undefined || entry.stamp > held) run.highestHeld.set(key, entry.stamp);
  }
}

function observe<T extends PubSubCacheManager<unknown>>(manager: T, run: () => RunState | undefined): T {
  // I4: every replacement of an entry is by a stamp at least as new.
  const storage = (manager.cache as unknown as { storage: { set(k: string, e: { stamp: string }): unknown; peek(k: string): { stamp: string } | undefined } }).storage;
  const set = storage.set.bind(storage);
  storage.set = (key, entry) => {
    const existing = storage.peek(key);
    if (existing !== undefined && entry.stamp < existing.stamp) run()?.violations.push(`I4: A replaced ${key}@${existing.stamp} by the older ${entry.stamp}`);
    return set(key, entry);
  };
  return manager;
}

class ObservedPC extends PubSubCacheManager<unknown> {
  onRemote: ((entry: MessageEntry) => void) | undefined;
  protected override applyRemote(entry: MessageEntry, deleted: boolean): boolean {
    const changed = super.applyRemote(entry, deleted);
    this.onRemote?.(entry);
    return changed;
  }
}
class ObservedWB extends WriteBackCacheManager<unknown> {
  onRemote: ((entry: MessageEntry) => void) | undefined;
  protected override applyRemote(entry: MessageEntry, deleted: boolean): boolean {
    const changed = super.applyRemote(entry, deleted);
    this.onRemote?.(entry);
    return changed;
  }
}

type Op =
  | { readonly by: 'A'; readonly op: 'get'; readonly keys: readonly string[] }
  | { readonly by: 'A'; readonly op: 'set' | 'delete'; readonly key: string }
  | { readonly by: 'A'; readonly op: 'flush' }
  | { readonly by: 'B'; readonly op: 'set' | 'delete'; readonly key: string }
  | { readonly by: 'replay'; readonly index: number; readonly exact: boolean };

const keyArb = fc.constantFrom(...KEYS);
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: keyArb.map((key) => ({ by: 'A' as const, op: 'get' as const, keys: [key] })) },
  { weight: 1, arbitrary: fc.array(keyArb, { minLength: 2, maxLength: 3 }).map((keys) => ({ by: 'A' as const, op: 'get' as const, keys })) },
  { weight: 2, arbitrary: fc.tuple(fc.constantFrom('set' as const, 'delete' as const), keyArb).map(([op, key]) => ({ by: 'A' as const, op, key })) },
  { weight: 1, arbitrary: fc.constant({ by: 'A' as const, op: 'flush' as const }) },
  { weight: 3, arbitrary: fc.tuple(fc.constantFrom('set' as const, 'set' as const, 'delete' as const), keyArb).map(([op, key]) => ({ by: 'B' as const, op, key })) },
  { weight: 2, arbitrary: fc.tuple(fc.nat(), fc.boolean()).map(([index, exact]) => ({ by: 'replay' as const, index, exact })) },
);

const setupArb = fc.record({
  kind: fc.constantFrom('pc' as const, 'wb' as const),
  sync: fc.constantFrom('invalidate' as const, 'update' as const),
  cache: fc.constantFrom(2 as const, 'unbounded' as const),
  /** B's clock against A's: behind, equal or ahead by 1 ms (the HLC counters do the rest). */
  skewB: fc.integer({ min: -1, max: 1 }),
  policy: fc.constantFrom('last-writer-wins' as const, 'discard-on-remote-update' as const, 'custom' as const),
  /** Keys cached before the race starts. */
  warm: fc.subarray([...KEYS]),
});

/** A deterministic resolver: keeps, takes or merges depending on the two stamps. */
const resolver: ConflictResolver<unknown> = (local, remote) => {
  const h = [...(local.stamp + remote.stamp)].reduce((acc, ch) => (acc * 31 + ch.charCodeAt(0)) >>> 0, 7) % 3;
  if (h === 0) return 'local';
  if (h === 1) return 'remote';
  return { value: { merged: [local.deleted ? null : (local.value ?? null), remote.deleted ? null : (remote.value ?? null)] } };
};

const stats = { runs: 0, steps: 0, aRepliesHeld: 0, events: 0, replays: 0, duplicates: 0 };
afterAll(() => console.log(`[property] races: ${JSON.stringify(stats)}`));

describe('races under fc.scheduler (standalone)', () => {
  it(
    'I4 and I5 hold whatever the order of replies and events; the cache then agrees with Redis',
    async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.scheduler({
            act: async (f) => {
              await f();
              stats.steps++;
              if (current) checkHistory(current);
            },
          }),
          setupArb,
          fc.array(opArb, { minLength: 2, maxLength: 9 }),
          async (s, setup, ops) => {
            stats.runs++;
            const ns = uniqueNamespace('races');
            const connA = standaloneClient();
            const connB = standaloneClient();
            const raw: Redis = standaloneClient();
            const store = withNode(new ScheduledStore(connA, ns), NODE_A, () => T0);
            const b = withNode(new PubSubRedisDict<unknown>(connB, ns, { publishValues: setup.sync === 'update' }), NODE_B, () => T0 + setup.skewB);
            let forgedOrigins = 0;
            const checker = new PubSubRedisDict<unknown>(raw, ns);
            const run: RunState = { a: undefined as unknown as PubSubCacheManager<unknown>, violations: [], highestHeld: new Map(), arrived: new Set(), arrivalWaiters: new Set() };
            const a =
              setup.kind === 'pc'
                ? new ObservedPC(store, { sync: setup.sync, cache: setup.cache })
                : new ObservedWB(store, { sync: setup.sync, cache: setup.cache, flushIntervalMs: 0, conflictPolicy: setup.policy === 'custom' ? resolver : setup.policy });
            (run as { a: PubSubCacheManager<unknown> }).a = observe(a, () => current);
            a.onRemote = (entry) => {
              run.arrived.add(`${entry.key}|${entry.stamp}`);
              for (const wake of [...run.arrivalWaiters]) wake();
            };
            const conflicts: Conflict<unknown>[] = [];
            a.on('conflict', (c) => conflicts.push(c));
            const errors: Error[] = [];
            a.on('error', (e) => errors.push(e));
            const recorder = await MessageRecorder.start(raw, ns);
            /**
             * Every local change of a write-back A (checked for I3): its dirty map is the one place
             * where local changes are made (test-only look inside).
             */
            const localChanges: { key: string; stamp: Stamp }[] = [];
            if (a instanceof WriteBackCacheManager) {
              const dirty = (a as unknown as { dirty: Map<string, { stamp: Stamp }> }).dirty;
              const set = dirty.set.bind(dirty);
              dirty.set = (key, entry) => {
                localChanges.push({ key, stamp: entry.stamp });
                return set(key, entry);
              };
            }
            /** Resolves when A received an event for `key` with `stamp`. */
            const arrival = (key: string, stamp: Stamp): Promise<void> =>
              new Promise<void>((resolve, reject) => {
                const mark = `${key}|${stamp}`;
                if (run.arrived.has(mark)) return resolve();
                const timer = setTimeout(() => {
                  run.arrivalWaiters.delete(wake);
                  reject(new Error(`event ${mark} did not reach A within 10 s`));
                }, 10_000);
                const wake = (): void => {
                  if (!run.arrived.has(mark)) return;
                  clearTimeout(timer);
                  run.arrivalWaiters.delete(wake);
                  resolve();
                };
                run.arrivalWaiters.add(wake);
              });
            /** B's applied writes, in order, for replays. */
            const bWrites: { key: string; stamp: Stamp; deleted: boolean; payload: Uint8Array | undefined }[] = [];
            try {
              await a.ready();
              // Warm-up (unscheduled): some keys exist and are cached before the race.
              for (const key of setup.warm) {
                const stamp = b.clock.now();
                await b.writeVersioned([{ key, stamp, deleted: false, value: { warm: key } }]);
                bWrites.push({ key, stamp, deleted: false, payload: b.encodeValue(key, { warm: key }) });
                await arrival(key, stamp).catch(() => undefined); // not cached yet: A may ignore it, but it is delivered
              }
              await a.getMany(KEYS);
              store.scheduler = s;
              current = run;
              checkHistory(run);

              let valueCounter = 0;
              const launch = (op: Op): Promise<unknown> => {
                if (op.by === 'A') {
                  return s.schedule(Promise.resolve(), `A: start ${op.op} ${'keys' in op ? op.keys.join(',') : 'key' in op ? op.key : ''}`).then(async () => {
                    if (op.op === 'get') return op.keys.length === 1 ? a.get(op.keys[0]!) : a.getMany(op.keys);
                    if (op.op === 'flush') return a instanceof WriteBackCacheManager ? a.flush() : a.get(KEYS[0]);
                    if (op.op === 'set') return a.set(op.key, { a: ++valueCounter });
                    return a.delete(op.key);
                  });
                }
                if (op.by === 'B') {
                  return atomicStep(s, `B: ${op.op} ${op.key} + event delivered to A`, async () => {
                    const stamp = b.clock.now();
                    const value = { b: ++valueCounter };
                    const deleted = op.op === 'delete';
                    const [outcome] = await b.writeVersioned([{ key: op.key, stamp, deleted, value: deleted ? undefined : value }]);
                    if (outcome?.status !== 'written') return;
                    bWrites.push({ key: op.key, stamp, deleted, payload: deleted ? undefined : b.encodeValue(op.key, value) });
                    stats.events++;
                    await arrival(op.key, stamp);
                    await recorder.until(() => recorder.saw(op.key, stamp), 10_000, `B's ${op.key}@${stamp}`);
                  });
                }
                return atomicStep(s, `replay #${op.index} (${op.exact ? 'exact duplicate' : 'late copy, fresh origin'})`, async () => {
                  const candidates = recorder.messages.filter((m) => m.origin === b.clock.nodeId && m.entries.length > 0);
                  if (op.exact) {
                    const m = candidates[op.index % Math.max(1, candidates.length)];
                    if (m === undefined) return;
                    stats.duplicates++;
                    const e = m.entries[0]!;
                    run.arrived.delete(`${e.key}|${e.stamp}`);
                    await raw.publish(m.channel, m.bytes);
                    await arrival(e.key, e.stamp);
                    return;
                  }
                  const w = bWrites[op.index % Math.max(1, bWrites.length)];
                  if (w === undefined) return;
                  stats.replays++;
                  const frame = Buffer.concat([
                    encodeHeader(w.deleted ? 'd' : 'u', (0xf0000 + ++forgedOrigins).toString(16).padStart(16, '0'), 1, 0),
                    arrayHeader(1),
                    encodeEntry(w.key, w.stamp, setup.sync === 'update' ? w.payload : undefined),
                  ]);
                  run.arrived.delete(`${w.key}|${w.stamp}`);
                  await raw.publish(`${ns}/${w.deleted ? 'delete' : 'update'}`, frame);
                  await arrival(w.key, w.stamp);
                });
              };
              const running = ops.map((op) => launch(op).catch((error: unknown) => errors.push(error as Error)));
              await s.waitFor(Promise.all(running));
              if (a instanceof WriteBackCacheManager) await s.waitFor(a.onIdle());
              stats.aRepliesHeld += s.report().filter((r) => r.label.includes('reply')).length;
              store.scheduler = undefined;
              current = undefined;

              // Settle: a fence written by B after everything else reaches A last.
              const fenceStamp = b.clock.now();
              await b.writeVersioned([{ key: '__fence__', stamp: fenceStamp, deleted: false, value: 0 }]);
              await arrival('__fence__', fenceStamp);
              await pollUntil(() => a.isServing, { timeoutMs: 10_000, message: 'A serving again' });
              checkHistory(run);

              expect(run.violations).toEqual([]);
              expect(errors).toEqual([]);
              // I5 / I1: every cached entry has exactly the stamp (and value) Redis holds.
              const cachedKeys = [...a.cache.keys()].filter((k) => k !== '__fence__');
              const stored = await checker.readStamps(cachedKeys);
              for (const [i, key] of cachedKeys.entries()) {
                const entry = a.cache.peek(key)!;
                if (entry.present) {
                  expect({ key, stamp: entry.stamp }, `I5: A caches ${key}@${entry.stamp}, Redis holds ${stored[i]}`).toEqual({ key, stamp: stored[i] });
                  const state = await redisState(checker, key);
                  expect(state.kind === 'live' ? state.value : state).toEqual(entry.value);
                } else expect(stored[i], `I5: A caches a miss for ${key}, Redis holds ${stored[i]}`).toBe('');
              }
              for (const key of KEYS) {
                const state = await redisState(checker, key);
                expect(await a.get(key), `A serves ${key}`).toEqual(state.kind === 'live' ? state.value : undefined);
              }
              // I3: each write-back change was applied (published), superseded, or reported.
              if (a instanceof WriteBackCacheManager) {
                for (const c of localChanges) {
                  const applied = recorder.saw(c.key, c.stamp);
                  const superseded = localChanges.some((o) => o.key === c.key && o.stamp > c.stamp);
                  const reported = conflicts.some((x) => x.key === c.key && x.local.stamp === c.stamp);
                  expect(applied || superseded || reported, `I3: A's change ${c.key}@${c.stamp} was neither written nor reported`).toBe(true);
                }
              }
            } finally {
              current = undefined;
              store.scheduler = undefined;
              await a.close().catch(() => undefined);
              recorder.stop();
              connA.disconnect();
              connB.disconnect();
              raw.disconnect();
            }
          },
        ),
        params(FILE, 1000),
      );
    },
    // Green runs take ~8 s; the rest is room for shrinking.
    timeoutOf(300_000),
  );
});
