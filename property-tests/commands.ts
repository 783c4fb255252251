/**
 * The commands of the model-based properties (`model.test.ts`, and `nemesis.test.ts`, which adds
 * fault commands): each one acts on the {@link World} and checks what it can check at once (I6,
 * I7, reads); the invariants that need a quiesced system are checked by `quiesceAndCheck` and at
 * the end of each run.
 *
 * Under a nemesis (`World.nemesis` set), a call may fail for a transient reason (a command
 * timeout during `CLIENT PAUSE`, a connection cut): the command accepts it
 * ({@link World.tolerant}), and a write whose call failed is recorded as ambiguous (it may still
 * have been applied, see `docs/verification.md`).
 *
 * @module
 */
import fc from 'fast-check';
import { expect } from 'vitest';
import { redisState } from './support.js';
import { type Expected, FILLERS, KEYS, type Kind, type RunConfig, World, exercised } from './world.js';

/** The fc "model": only what `check` needs; the record of writes lives in the World. */
export interface Model {
  readonly kinds: readonly Kind[];
}

export type Cmd = fc.AsyncCommand<Model, World>;

/** Commands executed, per command name (printed at the end, for campaign figures). */
const executed = new Map<string, number>();
let runsDone = 0;
const started = Date.now();

/** Counts one finished run (green or not). */
export function runFinished(): void {
  runsDone++;
}

/** Prints the runs, the commands per kind and what they exercised (campaign figures). */
export function printSummary(file: string): void {
  const total = [...executed].filter(([n]) => n !== 'parallel').reduce((a, [, c]) => a + c, 0);
  const detail = [...executed].sort((a, b) => b[1] - a[1]).map(([n, c]) => `${n}=${c}`).join(' ');
  console.log(`[property] ${file}: ${runsDone} runs, ${total} commands (${runsDone ? (total / runsDone).toFixed(1) : 0}/run) in ${((Date.now() - started) / 1000).toFixed(1)} s: ${detail}`);
  console.log(`[property] ${file} exercised: ${JSON.stringify(exercised)}`);
  mark('run:end');
  const wall = [...wallMs].sort((a, b) => b[1] - a[1]).map(([n, ms]) => `${n}=${ms}`).join(' ');
  console.log(`[property] ${file} wall ms by command: ${wall}`);
}

/**
 * Wall time per command kind (ms): the time from one {@link mark} (or {@link count}) to the next
 * goes to the kind marked first. Commands run in `parallel` overlap, so their share is
 * approximate; the phases of a run outside its commands are marked `run:…` by the test files.
 * Printed by {@link printSummary}: where a campaign's wall time goes.
 */
const wallMs = new Map<string, number>();
let markedName = 'run:start';
let markedAt = Date.now();

/** Starts timing phase `name` (the previous phase's time is added to it). */
export function mark(name: string): void {
  const now = Date.now();
  wallMs.set(markedName, (wallMs.get(markedName) ?? 0) + now - markedAt);
  markedName = name;
  markedAt = now;
}

/** Counts one executed command of kind `name`. */
export function count(name: string): void {
  mark(name);
  executed.set(name, (executed.get(name) ?? 0) + 1);
}


export const keyArb = fc.constantFrom(...KEYS);
export const instArb = fc.integer({ min: 0, max: 3 });

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
    await w.tolerant(() => inst.expecting([{ key: this.key, deleted: false, value }], () => inst.manager.set(this.key, value)));
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
    await w.tolerant(() => inst.expecting([{ key: this.key, deleted: true }], () => inst.manager.delete(this.key)));
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
    const values = await w.tolerant(async () => (this.keys.length === 1 ? [await inst.manager.get(this.keys[0]!)] : await inst.manager.getMany(this.keys)));
    if (values === undefined) return w.afterCommand();
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
    await w.tolerant(() => inst.expecting(expected, () => inst.manager.setMany(entries)));
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
    const report = await w.tolerant(() => inst.expecting([], () => inst.wb.flush()));
    if (report !== undefined) expect(report.failed).toEqual([]);
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
    const raced = await Promise.race([inFlight.then(() => 'in flight' as const), flushing.then(() => 'done' as const, () => 'done' as const)]);
    const second = w.newValue(inst.index, this.key);
    await inst.expecting([{ key: this.key, deleted: false, value: second }], () => m.set(this.key, second));
    const secondStamp = w.latestLocal(inst.index, this.key)!.stamp;
    const report = await w.tolerant(() => flushing);
    // A flush that failed (nemesis) leaves its keys dirty; I3 follows them to the end of the run.
    if (report === undefined) return w.afterCommand();
    expect(report.failed).toEqual([]);
    if (raced === 'in flight') {
      exercised.flushInFlightRaces++;
      // The newer change is still dirty (and served), or a later round of the same flush wrote it
      // (a resolver's kept or merged change makes the flush go round again), or a conflict
      // reported it; it is never marked clean unwritten. Whether a conflict reported it is asked
      // at the same moment as whether it is dirty (both change together, in one call of the
      // library): a newer write of another instance can arrive meanwhile, by its message, and
      // discard it with a conflict (seed 1762722433: instance 2's change of e, flushed late behind
      // CLIENT PAUSE, reached instance 1 while this check read Redis).
      const discarded = (): boolean => w.conflicts.some((c) => c.instance === inst.index && c.conflict.key === this.key && c.conflict.local.stamp === secondStamp);
      // Asked first, then Redis is read: another flush of the instance (a retry scheduled by an
      // earlier failure, the timer) may write the change right after this one resolved, between a
      // read of Redis and the question (seed 239007318: Redis read holding the first value, then
      // the change written and marked clean, then isDirty() false). A change seen clean must be
      // in Redis by then; one seen dirty must be served.
      const dirty = m.isDirty(this.key);
      if (!dirty && !discarded()) {
        const state = await redisState(w.checker, this.key);
        let written = state.kind === 'live' && state.stamp === secondStamp;
        // Under a nemesis a newer write of another instance can also land over it after it was
        // written (a retry of a flush that timed out behind CLIENT PAUSE, or the timed-out attempt
        // applied late): the recorder tells whether it was applied, once every message published
        // before a fence has reached it.
        if (!written && w.nemesis !== undefined && state.kind !== 'none' && state.stamp > secondStamp) {
          await w.nemesis.barrier(w);
          written = w.recorder.saw(this.key, secondStamp);
        }
        const held = state.kind === 'none' ? 'nothing' : `${state.kind} @${state.stamp}`;
        expect(written || discarded(), `I7: ${this.key} changed during its flush was marked clean unwritten (Redis holds ${held}, the change is @${secondStamp})`).toBe(true);
      } else if (dirty) {
        // A dirty key is served from the local change, in the same tick as the question.
        const served = m.get(this.key);
        if (m.isDirty(this.key) && !discarded()) expect(await served, `I7: ${this.key} keeps the newer value`).toEqual(second);
        else await served;
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
    await w.tolerant(() => inst.expecting([], () => inst.manager.clear()));
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
    await w.tolerant(() => inst.manager.getMany(FILLERS));
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

export class QuiesceCheckCmd implements Cmd {
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

export const commandArbs: fc.Arbitrary<Cmd>[] = [
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

export const configArb: fc.Arbitrary<RunConfig> = fc.record({
  kinds: fc.array(fc.constantFrom<Kind>('pc', 'wb'), { minLength: 2, maxLength: 4 }).filter((k) => k.includes('wb')),
  syncs: fc.array(fc.constantFrom('invalidate' as const, 'update' as const), { minLength: 4, maxLength: 4 }),
  caches: fc.array(fc.constantFrom(3 as const, 'unbounded' as const), { minLength: 4, maxLength: 4 }),
  skews: fc.array(fc.integer({ min: -20, max: 20 }), { minLength: 4, maxLength: 4 }),
  onReconnect: fc.array(fc.constantFrom('revalidate' as const, 'revalidate' as const, 'clear' as const), { minLength: 4, maxLength: 4 }),
  serveStale: fc.array(fc.constantFrom(false, false, false, true), { minLength: 4, maxLength: 4 }),
});
