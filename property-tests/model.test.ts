/**
 * Model-based properties (fc.commands + fc.asyncModelRun) against 2-4 real cache managers on a
 * real Redis, standalone and cluster, for each conflict policy. After each run (and at random
 * points during it) the system is quiesced and I1 (convergence), I2 (last-writer-wins), I3 (no
 * silent loss), I4 (no regression) are checked; I6 (eviction of dirty entries) and I7 (a key
 * changed while its flush is in flight) are checked by the commands that provoke them.
 *
 * The "model" of these runs is the record of every write (key, value, stamp) and of every
 * reported conflict: outcomes depend on timing, so the invariants are relations between that
 * record, the caches and what Redis holds, not a replay of one expected state.
 */
import fc from 'fast-check';
import type { Cluster, Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { topologies, uniqueNamespace } from '../test/helpers/connections.js';
import { commandsReplayPath, params, seedOf, timeoutOf } from './config.js';
import { redisState } from './support.js';
import { type Expected, FILLERS, KEYS, type Kind, type PolicyName, type RunConfig, World, exercised } from './world.js';

const FILE = import.meta.url;
seedOf(FILE);

/** The fc "model": only what `check` needs; the record of writes lives in the World. */
interface Model {
  readonly kinds: readonly Kind[];
}

type Cmd = fc.AsyncCommand<Model, World>;

/** Commands executed, per command name (printed at the end, for campaign figures). */
const executed = new Map<string, number>();
let runsDone = 0;
const started = Date.now();

function count(name: string): void {
  executed.set(name, (executed.get(name) ?? 0) + 1);
}

afterAll(() => {
  const total = [...executed].filter(([n]) => n !== 'parallel').reduce((a, [, c]) => a + c, 0);
  const detail = [...executed].sort((a, b) => b[1] - a[1]).map(([n, c]) => `${n}=${c}`).join(' ');
  console.log(`[property] model: ${runsDone} runs, ${total} commands (${runsDone ? (total / runsDone).toFixed(1) : 0}/run) in ${((Date.now() - started) / 1000).toFixed(1)} s: ${detail}`);
  console.log(`[property] model exercised: ${JSON.stringify(exercised)}`);
});

const keyArb = fc.constantFrom(...KEYS);
const instArb = fc.integer({ min: 0, max: 3 });

/** Expected stamps of a write-through setMany: one per key, in the order of each key's last occurrence. */
function lastOccurrenceOrder<T>(entries: readonly (readonly [string, T])[]): [string, T][] {
  const byKey = new Map<string, T>();
  for (const [k, v] of entries) {
    byKey.delete(k);
    byKey.set(k, v);
  }
  return [...byKey];
}

class SetCmd implements Cmd {
  constructor(readonly i: number, readonly key: string) {}
  check = (): boolean => true;
  async run(_m: Model, w: World): Promise<void> {
    count('set');
    const inst = w.instance(this.i);
    const value = w.newValue(inst.index, this.key);
    await inst.expecting([{ key: this.key, deleted: false, value }], () => inst.manager.set(this.key, value));
    w.afterCommand();
  }
  toString = (): string => `set(${this.i}, ${this.key})`;
}

class DeleteCmd implements Cmd {
  constructor(readonly i: number, readonly key: string) {}
  check = (): boolean => true;
  async run(_m: Model, w: World): Promise<void> {
    count('delete');
    const inst = w.instance(this.i);
    await inst.expecting([{ key: this.key, deleted: true }], () => inst.manager.delete(this.key));
    w.afterCommand();
  }
  toString = (): string => `delete(${this.i}, ${this.key})`;
}

class GetCmd implements Cmd {
  constructor(readonly i: number, readonly keys: readonly string[]) {}
  check = (): boolean => true;
  async run(_m: Model, w: World): Promise<void> {
    count(this.keys.length === 1 ? 'get' : 'getMany');
    const inst = w.instance(this.i);
    // Read-your-writes: a key dirty when the read starts reads as the latest local change at that
    // moment (the lookup is synchronous; a resolver may change the entry while other keys load).
    const dirtyAtStart = new Map(this.keys.filter((k) => inst.kind === 'wb' && inst.wb.isDirty(k)).map((k) => [k, w.latestLocal(inst.index, k)] as const));
    const values = this.keys.length === 1 ? [await inst.manager.get(this.keys[0]!)] : await inst.manager.getMany(this.keys);
    this.keys.forEach((key, j) => {
      w.checkRead(key, values[j]);
      if (dirtyAtStart.has(key)) {
        const latest = dirtyAtStart.get(key);
        expect(values[j], `instance ${inst.index} reads its own dirty ${key}`).toEqual(latest?.deleted ? undefined : latest?.value);
      }
    });
    w.afterCommand();
  }
  toString = (): string => (this.keys.length === 1 ? `get(${this.i}, ${this.keys[0]})` : `getMany(${this.i}, [${this.keys.join(',')}])`);
}

class SetManyCmd implements Cmd {
  constructor(readonly i: number, readonly keys: readonly string[]) {}
  check = (): boolean => true;
  async run(_m: Model, w: World): Promise<void> {
    count('setMany');
    const inst = w.instance(this.i);
    const entries = this.keys.map((key) => [key, w.newValue(inst.index, key)] as const);
    const order = inst.kind === 'wb' ? entries : lastOccurrenceOrder(entries);
    const expected: Expected[] = order.map(([key, value]) => ({ key, deleted: false, value }));
    await inst.expecting(expected, () => inst.manager.setMany(entries));
    // I6: with an LRU of 3 entries, every dirty key is still readable with its local value.
    if (inst.kind === 'wb') {
      for (const key of new Set(this.keys)) {
        if (!inst.wb.isDirty(key)) continue;
        expect(await inst.manager.get(key), `I6: dirty ${key} of instance ${inst.index} readable`).toEqual(w.latestLocal(inst.index, key)?.value);
      }
    }
    w.afterCommand();
  }
  toString = (): string => `setMany(${this.i}, [${this.keys.join(',')}])`;
}

class FlushCmd implements Cmd {
  constructor(readonly i: number) {}
  check = (): boolean => true;
  async run(_m: Model, w: World): Promise<void> {
    count('flush');
    const inst = w.instance(this.i);
    if (inst.kind !== 'wb') return;
    const report = await inst.expecting([], () => inst.wb.flush());
    expect(report.failed).toEqual([]);
    w.afterCommand();
  }
  toString = (): string => `flush(${this.i})`;
}

/** I7: a key changed while its flush is in flight stays dirty with the newer value. */
class FlushDuringSetCmd implements Cmd {
  constructor(readonly i: number, readonly key: string) {}
  check = (): boolean => true;
  async run(_m: Model, w: World): Promise<void> {
    count('flushDuringSet');
    const inst = w.instance(this.i);
    if (inst.kind !== 'wb') return;
    const m = inst.wb;
    const first = w.newValue(inst.index, this.key);
    await inst.expecting([{ key: this.key, deleted: false, value: first }], () => m.set(this.key, first));
    if (!m.isDirty(this.key)) return w.afterCommand();
    const inFlight = inst.nextWrite();
    const flushing = m.flush();
    const raced = await Promise.race([inFlight.then(() => 'in flight' as const), flushing.then(() => 'done' as const)]);
    const second = w.newValue(inst.index, this.key);
    await inst.expecting([{ key: this.key, deleted: false, value: second }], () => m.set(this.key, second));
    const secondStamp = w.latestLocal(inst.index, this.key)!.stamp;
    const report = await flushing;
    expect(report.failed).toEqual([]);
    if (raced === 'in flight') {
      exercised.flushInFlightRaces++;
      const discarded = w.conflicts.some((c) => c.instance === inst.index && c.conflict.key === this.key && c.conflict.local.stamp === secondStamp);
      // The newer change is still dirty (and served), or a later round of the same flush wrote it
      // (a resolver's kept or merged change makes the flush go round again), or a conflict
      // reported it; it is never marked clean unwritten.
      const state = await redisState(w.checker, this.key);
      const written = state.kind === 'live' && state.stamp === secondStamp;
      if (!discarded && !written) {
        expect(m.isDirty(this.key), `I7: ${this.key} changed during its flush must stay dirty until written`).toBe(true);
        expect(await m.get(this.key), `I7: ${this.key} keeps the newer value`).toEqual(second);
      }
    }
    w.afterCommand();
  }
  toString = (): string => `flushDuringSet(${this.i}, ${this.key})`;
}

class ClearCmd implements Cmd {
  constructor(readonly i: number) {}
  check = (): boolean => true;
  async run(_m: Model, w: World): Promise<void> {
    count('clear');
    const inst = w.instance(this.i);
    if (inst.kind === 'wb') w.clears.push({ instance: inst.index, before: w.writes.length === 0 ? 0 : w.writes[w.writes.length - 1]!.seq });
    await inst.expecting([], () => inst.manager.clear());
    w.afterCommand();
  }
  toString = (): string => `clear(${this.i})`;
}

/** Reads filler keys: pushes the other entries out of an LRU of 3. */
class EvictCmd implements Cmd {
  constructor(readonly i: number) {}
  check = (): boolean => true;
  async run(_m: Model, w: World): Promise<void> {
    count('evict');
    const inst = w.instance(this.i);
    await inst.manager.getMany(FILLERS);
    w.afterCommand();
  }
  toString = (): string => `evict(${this.i})`;
}

class KillCmd implements Cmd {
  constructor(readonly i: number | 'all') {}
  check = (): boolean => true;
  async run(_m: Model, w: World): Promise<void> {
    count(this.i === 'all' ? 'killAll' : 'kill');
    if (this.i === 'all') await Promise.all(w.instances.map((inst) => w.kill(inst.index)));
    else await w.kill(this.i);
    w.afterCommand();
  }
  toString = (): string => `killSubscriber(${this.i})`;
}

class AdvanceClockCmd implements Cmd {
  constructor(readonly ms: number) {}
  check = (): boolean => true;
  async run(_m: Model, w: World): Promise<void> {
    count('advanceClock');
    w.now += this.ms;
  }
  toString = (): string => `advanceClock(${this.ms})`;
}

/** Two instances act at once (writes racing writes, flushes and reads). */
class ParallelCmd implements Cmd {
  constructor(readonly a: Cmd, readonly b: Cmd, readonly ia: number, readonly ib: number) {}
  check = (m: Readonly<Model>): boolean => this.ia % m.kinds.length !== this.ib % m.kinds.length;
  async run(m: Model, w: World): Promise<void> {
    count('parallel');
    await Promise.all([this.a.run(m, w), this.b.run(m, w)]);
  }
  toString = (): string => `parallel(${String(this.a)}, ${String(this.b)})`;
}

class QuiesceCheckCmd implements Cmd {
  check = (): boolean => true;
  async run(_m: Model, w: World): Promise<void> {
    count('quiesceAndCheck');
    await w.quiesce();
    await w.checkInvariants();
  }
  toString = (): string => 'quiesceAndCheck';
}

const simpleCmdArb = (i: fc.Arbitrary<number>): fc.Arbitrary<Cmd> =>
  fc.oneof(
    fc.tuple(i, keyArb).map(([a, k]) => new SetCmd(a, k)),
    fc.tuple(i, keyArb).map(([a, k]) => new DeleteCmd(a, k)),
    fc.tuple(i, keyArb).map(([a, k]) => new GetCmd(a, [k])),
    i.map((a) => new FlushCmd(a)),
  );

const commandArbs: fc.Arbitrary<Cmd>[] = [
  fc.tuple(instArb, keyArb).map(([i, k]) => new SetCmd(i, k)),
  fc.tuple(instArb, keyArb).map(([i, k]) => new SetCmd(i, k)),
  fc.tuple(instArb, keyArb).map(([i, k]) => new DeleteCmd(i, k)),
  fc.tuple(instArb, keyArb).map(([i, k]) => new GetCmd(i, [k])),
  fc.tuple(instArb, fc.array(keyArb, { minLength: 2, maxLength: 5 })).map(([i, ks]) => new GetCmd(i, ks)),
  fc.tuple(instArb, fc.array(keyArb, { minLength: 2, maxLength: 6 })).map(([i, ks]) => new SetManyCmd(i, ks)),
  instArb.map((i) => new FlushCmd(i)),
  instArb.map((i) => new FlushCmd(i)),
  fc.tuple(instArb, keyArb).map(([i, k]) => new FlushDuringSetCmd(i, k)),
  instArb.map((i) => new EvictCmd(i)),
  fc.integer({ min: 0, max: 30 }).map((ms) => new AdvanceClockCmd(ms)),
  fc.tuple(instArb, instArb).chain(([ia, ib]) => fc.tuple(simpleCmdArb(fc.constant(ia)), simpleCmdArb(fc.constant(ib))).map(([a, b]) => new ParallelCmd(a, b, ia, ib))),
  fc.tuple(instArb, instArb).chain(([ia, ib]) => fc.tuple(simpleCmdArb(fc.constant(ia)), simpleCmdArb(fc.constant(ib))).map(([a, b]) => new ParallelCmd(a, b, ia, ib))),
  fc.oneof({ weight: 3, arbitrary: instArb }, { weight: 1, arbitrary: fc.constant('all' as const) }).map((i) => new KillCmd(i)),
  fc.constant(new QuiesceCheckCmd()),
  // Rare: clear() wipes everything.
  fc.oneof({ weight: 4, arbitrary: fc.constant(new QuiesceCheckCmd()) }, { weight: 1, arbitrary: instArb.map((i) => new ClearCmd(i)) }),
];

const configArb: fc.Arbitrary<RunConfig> = fc.record({
  kinds: fc.array(fc.constantFrom<Kind>('pc', 'wb'), { minLength: 2, maxLength: 4 }).filter((k) => k.includes('wb')),
  syncs: fc.array(fc.constantFrom('invalidate' as const, 'update' as const), { minLength: 4, maxLength: 4 }),
  caches: fc.array(fc.constantFrom(3 as const, 'unbounded' as const), { minLength: 4, maxLength: 4 }),
  skews: fc.array(fc.integer({ min: -20, max: 20 }), { minLength: 4, maxLength: 4 }),
  onReconnect: fc.array(fc.constantFrom('revalidate' as const, 'revalidate' as const, 'clear' as const), { minLength: 4, maxLength: 4 }),
  serveStale: fc.array(fc.constantFrom(false, false, false, true), { minLength: 4, maxLength: 4 }),
});

const POLICIES: PolicyName[] = ['last-writer-wins', 'discard-on-remote-update', 'custom'];
const RUNS = 50;
const MAX_COMMANDS = 40;

describe.each(topologies())('model-based: caches against a real Redis (%s)', (_topology, factory) => {
  it.each(POLICIES)(
    'I1-I4, I6, I7 hold for any sequence of commands under %s',
    async (policy) => {
      await fc.assert(
        fc.asyncProperty(configArb, fc.commands(commandArbs, { maxCommands: MAX_COMMANDS, size: 'max', ...(commandsReplayPath ? { replayPath: commandsReplayPath } : {}) }), async (config, cmds) => {
          const world = await World.create(() => factory() as Redis | Cluster, uniqueNamespace('model'), policy, config);
          try {
            await fc.asyncModelRun(() => ({ model: { kinds: config.kinds }, real: world }), cmds);
            await world.quiesce();
            await world.checkInvariants();
          } catch (error) {
            if (process.env['PROPERTY_VERBOSE']) console.log(`${String(error)}\n${await world.describe().catch((e: unknown) => String(e))}`);
            throw error;
          } finally {
            runsDone++;
            await world.dispose();
          }
        }),
        params(FILE, RUNS),
      );
    },
    // Green runs take ~10 s per test; the rest is room for shrinking a counterexample (each
    // shrink step is a real run), which a tighter limit would cut short.
    timeoutOf(600_000),
  );
});
