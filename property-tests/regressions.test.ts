/**
 * Shrunk counterexamples of the property tests, kept as plain regression tests (real Redis, no
 * scheduler: the interleaving is forced with a store whose replies are held until released).
 * Each names the property, seed and invariant that found it; see docs/verification.md.
 */
import type { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { PubSubCacheManager } from '../src/cache/cache-manager.js';
import { encodeEntry, encodeHeader } from '../src/protocol/messages.js';
import { PubSubRedisDict } from '../src/store/pubsub-redis-dict.js';
import type { ConflictResolver } from '../src/write-back/conflict.js';
import { WriteBackCacheManager } from '../src/write-back/manager.js';
import type { VersionedValue } from '../src/protocol/record.js';
import { HybridClock, MAX_DRIFT_MS, parseStamp } from '../src/protocol/stamp.js';
import { pollUntil, standaloneClient, uniqueNamespace } from '../test/helpers/connections.js';
import { arrayHeader } from './frames.js';
import { redisState } from './support.js';
import { type VersionedChange, type WriteOutcome } from '../src/store/types.js';

type Gate = 'read reply' | 'write send' | 'write reply';

/**
 * A store whose calls can be held, per key: a read's reply, a write before it is sent, or a
 * write's reply. A held call waits for `release(gate)`; `whenHeld(gate)` resolves once one waits.
 */
class HeldStore extends PubSubRedisDict<unknown> {
  readonly holding = new Map<Gate, Set<string>>();
  private readonly held = new Map<Gate, (() => void)[]>();
  private readonly heldWaiters = new Map<Gate, (() => void)[]>();

  hold(gate: Gate, key: string): void {
    let keys = this.holding.get(gate);
    if (!keys) this.holding.set(gate, (keys = new Set()));
    keys.add(key);
  }

  releaseGate(gate: Gate): void {
    this.holding.delete(gate);
    for (const go of this.held.get(gate)?.splice(0) ?? []) go();
  }

  whenHeld(gate: Gate): Promise<void> {
    if ((this.held.get(gate)?.length ?? 0) > 0) return Promise.resolve();
    return new Promise((resolve) => {
      const list = this.heldWaiters.get(gate) ?? [];
      list.push(resolve);
      this.heldWaiters.set(gate, list);
    });
  }

  private async gate(gate: Gate, keys: readonly string[]): Promise<void> {
    if (!keys.some((k) => this.holding.get(gate)?.has(k))) return;
    await new Promise<void>((resolve) => {
      const list = this.held.get(gate) ?? [];
      list.push(resolve);
      this.held.set(gate, list);
      for (const wake of this.heldWaiters.get(gate)?.splice(0) ?? []) wake();
    });
  }

  override async readVersioned(keys: readonly string[]): Promise<(VersionedValue<unknown> | undefined)[]> {
    const found = await super.readVersioned(keys);
    await this.gate('read reply', keys);
    return found;
  }

  override async writeVersioned(changes: readonly VersionedChange<unknown>[]): Promise<WriteOutcome<unknown>[]> {
    const keys = changes.map((c) => c.key);
    await this.gate('write send', keys);
    const outcomes = await super.writeVersioned(changes);
    await this.gate('write reply', keys);
    return outcomes;
  }
}

const T0 = 1_700_000_000_000;
const opened: Redis[] = [];
const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const close of closers.splice(0)) await close();
  for (const redis of opened.splice(0)) redis.disconnect();
});

function connect(): Redis {
  const redis = standaloneClient();
  opened.push(redis);
  return redis;
}

/** Instance A (a write-through cache over a held store) and writer B on a fresh namespace. */
async function setup(
  clockB: () => number,
  options: { clockA?: () => number; cache?: number | 'unbounded' } = {},
): Promise<{ a: PubSubCacheManager<unknown>; store: HeldStore; b: PubSubRedisDict<unknown>; checker: PubSubRedisDict<unknown> }> {
  const ns = uniqueNamespace('regression');
  const store = new HeldStore(connect(), ns, { clock: options.clockA ?? (() => T0) });
  const a = new PubSubCacheManager<unknown>(store, { cache: options.cache ?? 'unbounded' });
  closers.push(() => a.close());
  const b = new PubSubRedisDict<unknown>(connect(), ns, { clock: clockB });
  const checker = new PubSubRedisDict<unknown>(connect(), ns);
  await a.ready();
  return { a, store, b, checker };
}

/** Waits until A received `count` event entries (events go through real pub/sub). */
function eventsReceived(a: PubSubCacheManager<unknown>, count: number): Promise<void> {
  return pollUntil(() => a.stats().eventsReceived >= count, { timeoutMs: 10_000, intervalMs: 5, message: `A received ${count} event(s)` });
}

/** After everything settled: what A caches for `key` agrees with Redis, and A serves Redis's value. */
async function expectCoherent(a: PubSubCacheManager<unknown>, checker: PubSubRedisDict<unknown>, key: string): Promise<void> {
  const state = await redisState(checker, key);
  const entry = a.cache.peek(key);
  if (entry !== undefined) {
    if (entry.present) expect({ stamp: entry.stamp, value: entry.value }).toEqual(state.kind === 'live' ? { stamp: state.stamp, value: state.value } : state);
    else expect(state.kind).not.toBe('live');
  }
  expect(await a.get(key)).toEqual(state.kind === 'live' ? state.value : undefined);
}

describe('regressions found by races.test.ts (I5, standalone)', () => {
  // races.test.ts, seed 1571695108, path "41:0:0:0:0:1:13:2:1":
  //   A: getMany([a, a]) sent (reads nothing) → B: set a, event delivered to A → A: MGET reply.
  // getMany registered two pending reads for the duplicated key; the event marked only the second,
  // so the first cached the stale miss and A served `undefined` for a key Redis holds.
  it('getMany with a duplicated key does not cache a value older than an event received meanwhile', async () => {
    const { a, store, b, checker } = await setup(() => T0);
    store.hold('read reply', 'a');
    const reading = a.getMany(['a', 'a']);
    await store.whenHeld('read reply');
    await b.set('a', { by: 'B' });
    await eventsReceived(a, 1);
    store.releaseGate('read reply');
    expect(await reading).toEqual([undefined, undefined]);
    await expectCoherent(a, checker, 'a');
  });

  // races.test.ts (after the fix above), seed 1571695108 family, shrunk to:
  //   A: delete b, CAS sent (tombstone at A's stamp) → B: set b (newer stamp), event delivered to A
  //   → A: CAS reply "written".
  // The write-through path installed its own (older) tombstone after the newer event had been
  // applied: A cached a miss for a key Redis holds, for good.
  it('a write-through delete does not cache its tombstone after a newer remote write arrived', async () => {
    const { a, store, b, checker } = await setup(() => T0 + 1);
    store.hold('write reply', 'b');
    const deleting = a.delete('b');
    await store.whenHeld('write reply');
    await b.set('b', { by: 'B' });
    await eventsReceived(a, 1);
    store.releaseGate('write reply');
    await deleting;
    await expectCoherent(a, checker, 'b');
  });

  // The same race for a write-through set (same shrunk schedule with `set` instead of `delete`).
  it('a write-through set does not cache its value after a newer remote write arrived', async () => {
    const { a, store, b, checker } = await setup(() => T0 + 1);
    await a.get('c'); // a cached miss, so that the event has something to invalidate
    store.hold('write reply', 'c');
    const setting = a.set('c', { by: 'A' });
    await store.whenHeld('write reply');
    await b.set('c', { by: 'B' });
    await eventsReceived(a, 1);
    store.releaseGate('write reply');
    await setting;
    await expectCoherent(a, checker, 'c');
  });

  // races.test.ts, seed 747607088, path "48:0:0:0:0" (kind pc, cache 2): A: set b (stamp sA),
  // not yet executed → A: get b, MGET executed first (reads B's older b) → A's CAS executes and
  // caches b@sA → the LRU evicts b → the read's reply arrives and cached B's older value, although
  // Redis holds A's own newer write. (A read issued after a write can execute before it when the
  // write's EVALSHA is retried as EVAL after NOSCRIPT, or redirected on a Cluster.)
  it('a read that started while a local write of the key was in flight does not cache an older value', async () => {
    const { a, store, b, checker } = await setup(() => T0, { clockA: () => T0 + 1, cache: 1 });
    await b.set('b', { by: 'B' });
    await eventsReceived(a, 1);
    store.hold('write send', 'b');
    const setting = a.set('b', { by: 'A' });
    await store.whenHeld('write send');
    store.hold('read reply', 'b');
    const reading = a.get('b');
    await store.whenHeld('read reply');
    store.releaseGate('write send');
    await setting;
    await a.get('z'); // evicts b from the LRU of one entry
    store.releaseGate('read reply');
    expect(await reading).toEqual({ by: 'B' });
    await expectCoherent(a, checker, 'b');
  });
});

describe('regressions found by races.test.ts (I4 / I1, sync: update)', () => {
  // races.test.ts, seed 551986220, path "82" (kind pc, sync update, B deletes a, A reads a, then a
  // late copy of B's older write of a arrives). A cached miss carries no stamp (''), so every
  // event looked newer than it: in update mode the late copy installed the deleted value, and A
  // served it for good while Redis held the tombstone.
  it('a late copy of an older write does not resurrect a key over a cached miss', async () => {
    const ns = uniqueNamespace('regression');
    const a = new PubSubCacheManager<unknown>(new PubSubRedisDict(connect(), ns), { sync: 'update', cache: 'unbounded' });
    closers.push(() => a.close());
    const b = new PubSubRedisDict<unknown>(connect(), ns, { publishValues: true });
    const checker = new PubSubRedisDict<unknown>(connect(), ns);
    const raw = connect();
    await a.ready();
    const stamp = b.clock.now();
    const payload = b.encodeValue('a', { old: true });
    await b.writeVersioned([{ key: 'a', stamp, deleted: false, payload }]);
    await b.delete('a');
    await eventsReceived(a, 2);
    expect(await a.get('a')).toBeUndefined(); // a cached miss
    const late = Buffer.concat([encodeHeader('u', 'f00000000000000f', 1, 0), arrayHeader(1), encodeEntry('a', stamp, payload)]);
    await raw.publish(`${ns}/update`, late);
    await eventsReceived(a, 3);
    await expectCoherent(a, checker, 'a');
  });
});

describe('regressions found by model.test.ts (I1, write-back with a custom resolver)', () => {
  // model.test.ts (standalone, custom), seed 43904631, path
  // "40:7:8:9:6:6:20:5:6:7:5:5:5:5:9:18:14:16:16:8", replayPath "KEc:F":
  //   [wb, pc, wb, pc], skews [6, 0, 6, 0], sync invalidate: set(2, d), setMany(0, [d, a, a]),
  //   quiesceAndCheck. Both write-back instances flush d; instance 0's write lands first, then
  //   instance 2's (newer stamp) overwrites it. Its event reached instance 0 while that flush was
  //   in flight; the resolver cannot decide without the remote value, so the decision was left to
  //   the flush, which had succeeded: instance 0 then cached its own, overwritten value for good.
  it('a flushed value overwritten by a newer write announced during the flush is not cached', async () => {
    const ns = uniqueNamespace('regression');
    const resolver: ConflictResolver<unknown> = (local, remote) => ({ value: { merged: [local.value ?? null, remote.value ?? null] } });
    const store = new HeldStore(connect(), ns, { clock: () => T0 });
    const a = new WriteBackCacheManager<unknown>(store, { conflictPolicy: resolver, flushIntervalMs: 0 });
    const b = new WriteBackCacheManager<unknown>(new PubSubRedisDict(connect(), ns, { clock: () => T0 + 1 }), { conflictPolicy: resolver, flushIntervalMs: 0 });
    closers.push(() => a.close(), () => b.close());
    const checker = new PubSubRedisDict<unknown>(connect(), ns);
    await Promise.all([a.ready(), b.ready()]);
    await a.set('d', { by: 'A' });
    await b.set('d', { by: 'B' });
    store.hold('write reply', 'd');
    const flushing = a.flush();
    await store.whenHeld('write reply'); // A's write is in Redis
    await b.flush(); // B's newer write overwrites it; its event goes to A
    await eventsReceived(a, 1);
    store.releaseGate('write reply');
    await flushing;
    await expectCoherent(a, checker, 'd');
  });
});

describe('regressions found by model.test.ts (I1, write-back with a custom resolver, 2)', () => {
  // model.test.ts (cluster, custom), seed 1096040667, path "54:7:21:10:32:33:13", replayPath
  // "MAg:F": instance 1 had c dirty; its flush was refused (Redis held instance 2's c@…42000000),
  // and while that reply was in flight instance 2's newer c@…42000001 was announced (left
  // undecided: no value in invalidate mode). The resolver took the remote side and the manager
  // cached the refused write's stored value, older than the announced one, for good.
  it('a conflict decided at flush time does not cache a remote value older than one announced meanwhile', async () => {
    const ns = uniqueNamespace('regression');
    const store = new HeldStore(connect(), ns, { clock: () => T0 });
    const a = new WriteBackCacheManager<unknown>(store, { conflictPolicy: () => 'remote', flushIntervalMs: 0 });
    closers.push(() => a.close());
    const b = new PubSubRedisDict<unknown>(connect(), ns, { clock: () => T0 + 1 });
    const checker = new PubSubRedisDict<unknown>(connect(), ns);
    await a.ready();
    await a.set('c', { by: 'A' });
    await b.set('c', { by: 'B', n: 1 });
    await eventsReceived(a, 1);
    store.hold('write reply', 'c');
    const flushing = a.flush();
    await store.whenHeld('write reply'); // refused: Redis holds B's first write
    await b.set('c', { by: 'B', n: 2 });
    await eventsReceived(a, 2);
    store.releaseGate('write reply');
    await flushing;
    await expectCoherent(a, checker, 'c');
  });
});

describe('regressions found by pure.test.ts (HybridClock)', () => {
  // pure.test.ts, seed 917190578, path "235:0:0:0:0:0:0:0:0:0:0:0:2:0:0:1:0:3:0:1:4:0:0:0:1:0:2:0:2:0:0:5:0:0:1:0:3:2:1:0:0:0:0:0:3:4:3:3:3:3:3:3:3:3:3:3:3:3:5"
  // Counterexample: node "0aaaa0aaaa0aa0a0", wall −86399999.00000001, observe
  // "000000000001fffffca0aa0a000aaaa0aa", now(). now() reads a negative wall clock as 0, but
  // observe() computed its drift bound from the raw reading (here −86 400 000 + MAX_DRIFT_MS = 0)
  // and ignored every stamp: the next stamp was below the one just observed (causality lost).
  it('follows an observed stamp within the drift bound even when the wall clock reads below zero', () => {
    for (const wall of [-86_399_999.00000001, -1e12, -Infinity]) {
      const clock = new HybridClock('0aaaa0aaaa0aa0a0', () => wall);
      const observed = '000000000001fffffca0aa0a000aaaa0aa';
      clock.observe(observed);
      const next = clock.now();
      expect(next > observed, `wall ${wall}: ${next} must be above ${observed}`).toBe(true);
    }
  });

  it('never follows an observed stamp beyond wall + MAX_DRIFT_MS, even when the wall clock is not a number', () => {
    const clock = new HybridClock('0aaaa0aaaa0aa0a0', () => NaN);
    clock.observe('ffffffffff00000000bbbbbbbbbbbbbbbb');
    expect(parseStamp(clock.now()).ms).toBeLessThanOrEqual(MAX_DRIFT_MS + 1);
  });
});
