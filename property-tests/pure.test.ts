/**
 * Properties of the pure building blocks: the hybrid logical clock, the order of stamps (in
 * TypeScript and in the Lua that runs on the real server), and the last-writer-wins merge rule of
 * the caches (I2, I4 at the level of one function).
 */
import fc from 'fast-check';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HybridClock, MAX_DRIFT_MS, STAMP_LENGTH, formatStamp, isStamp, parseStamp, type Stamp } from '../src/protocol/stamp.js';
import { standaloneClient } from '../test/helpers/connections.js';
import { params, seedOf, timeoutOf } from './config.js';

const FILE = import.meta.url;
seedOf(FILE);

const MAX_MS = 2 ** 48 - 1;
const MAX_COUNTER = 0xffffff;

const nodeArb = fc.stringMatching(/^[0-9a-f]{16}$/);
/** Milliseconds biased towards both ends of the 48-bit range. */
const msArb = fc.oneof(
  fc.integer({ min: 0, max: MAX_MS }),
  fc.integer({ min: 0, max: 20 }),
  fc.integer({ min: 1_700_000_000_000, max: 1_700_000_000_050 }),
  fc.integer({ min: MAX_MS - 3, max: MAX_MS }),
);
const counterArb = fc.oneof(fc.integer({ min: 0, max: MAX_COUNTER }), fc.integer({ min: 0, max: 3 }), fc.integer({ min: MAX_COUNTER - 3, max: MAX_COUNTER }));
const tupleArb = fc.tuple(msArb, counterArb, nodeArb);
const stampArb = tupleArb.map(([ms, counter, node]) => formatStamp(ms, counter, node));

function tupleCompare(a: readonly [number, number, string], b: readonly [number, number, string]): number {
  if (a[0] !== b[0]) return a[0] < b[0] ? -1 : 1;
  if (a[1] !== b[1]) return a[1] < b[1] ? -1 : 1;
  return a[2] < b[2] ? -1 : a[2] > b[2] ? 1 : 0;
}

/** Any wall-clock reading: going backwards, jumping, out of range, fractional, not a number. */
const wallArb = fc.oneof(
  { weight: 6, arbitrary: msArb },
  { weight: 2, arbitrary: fc.integer({ min: -1_000_000, max: -1 }) },
  { weight: 1, arbitrary: fc.double({ noNaN: false }) },
  { weight: 1, arbitrary: fc.constantFrom(2 ** 60, Number.MAX_SAFE_INTEGER, Infinity, -Infinity, NaN) },
);

type ClockStep = { readonly kind: 'wall'; readonly wall: number } | { readonly kind: 'now' } | { readonly kind: 'observe'; readonly stamp: Stamp };

const clockStepArb: fc.Arbitrary<ClockStep> = fc.oneof(
  { weight: 3, arbitrary: wallArb.map((wall) => ({ kind: 'wall' as const, wall })) },
  { weight: 5, arbitrary: fc.constant({ kind: 'now' as const }) },
  { weight: 2, arbitrary: stampArb.map((stamp) => ({ kind: 'observe' as const, stamp })) },
);

/** The wall clock as `now()` reads it: whole milliseconds within the 48-bit range. */
function clampWall(wall: number): number {
  const floored = Math.floor(wall);
  return Number.isNaN(floored) ? 0 : Math.min(Math.max(0, floored), MAX_MS);
}

describe('HybridClock', () => {
  /*
   * The contract (src/protocol/stamp.ts): every stamp is well-formed and greater than every stamp the clock
   * made or observed before. Two documented limits: an observed stamp more than MAX_DRIFT_MS
   * ahead of the wall clock is followed only up to wall + MAX_DRIFT_MS (so one bogus stamp cannot
   * push the clock into the far future), and at the very end of the range (ms = 2^48-1, counter
   * exhausted) the clock saturates (or may refuse) instead of making a malformed stamp.
   */
  it('hands out well-formed, strictly increasing stamps above every stamp it followed, whatever the wall clock does', () => {
    fc.assert(
      fc.property(nodeArb, wallArb, fc.array(clockStepArb, { maxLength: 60 }), (node, startWall, steps) => {
        let wall = startWall;
        const clock = new HybridClock(node, () => wall);
        /** Highest stamp made, or observed within the drift bound. */
        let floor: Stamp | '' = '';
        /** Highest wall clock (as now() reads it) + drift: no stamp may go beyond it. */
        let ceiling = clampWall(startWall) + MAX_DRIFT_MS;
        let made: Stamp | '' = '';
        for (const step of steps) {
          if (step.kind === 'wall') {
            wall = step.wall;
            ceiling = Math.max(ceiling, clampWall(wall) + MAX_DRIFT_MS);
          } else if (step.kind === 'observe') {
            clock.observe(step.stamp);
            if (parseStamp(step.stamp).ms <= clampWall(wall) + MAX_DRIFT_MS && step.stamp > floor) floor = step.stamp;
          } else {
            let stamp: Stamp;
            const top = floor === '' ? undefined : parseStamp(floor);
            const atTop = top !== undefined && top.ms === MAX_MS && top.counter === MAX_COUNTER;
            try {
              stamp = clock.now();
            } catch (error) {
              expect(atTop, `now() threw ${String(error)} below the end of the range`).toBe(true);
              return;
            }
            expect(stamp).toHaveLength(STAMP_LENGTH);
            expect(isStamp(stamp)).toBe(true);
            expect(parseStamp(stamp).node).toBe(node);
            if (atTop && made !== '' && parseStamp(made).ms === MAX_MS && parseStamp(made).counter === MAX_COUNTER) {
              // Saturated at the end of the range: the same (ms, counter) again.
              expect(parseStamp(stamp).ms).toBe(MAX_MS);
            } else {
              expect(stamp > floor, `now() = ${stamp} is not above ${floor}`).toBe(true);
            }
            expect(parseStamp(stamp).ms, 'a stamp beyond wall + MAX_DRIFT_MS').toBeLessThanOrEqual(Math.min(ceiling + 1, MAX_MS));
            if (stamp > floor) floor = stamp;
            made = stamp;
          }
        }
      }),
      params(FILE, 2000),
    );
  });

  it('follows the wall clock whenever it is ahead of everything seen (no drift while time moves forward)', () => {
    fc.assert(
      fc.property(nodeArb, fc.array(fc.integer({ min: 1, max: 1000 }), { minLength: 1, maxLength: 30 }), (node, steps) => {
        let wall = 1_700_000_000_000;
        const clock = new HybridClock(node, () => wall);
        for (const step of steps) {
          wall += step;
          expect(parseStamp(clock.now())).toEqual({ ms: wall, counter: 0, node });
        }
      }),
      params(FILE, 300),
    );
  });
});

describe('stamp order', () => {
  it('string order of stamps equals the order of the tuples (ms, counter, node)', () => {
    fc.assert(
      fc.property(tupleArb, tupleArb, (a, b) => {
        const sa = formatStamp(...a);
        const sb = formatStamp(...b);
        const byString = sa < sb ? -1 : sa > sb ? 1 : 0;
        expect(byString).toBe(tupleCompare(a, b));
        expect(parseStamp(sa)).toEqual({ ms: a[0], counter: a[1], node: a[2] });
      }),
      params(FILE, 5000),
    );
  });

  describe('in Lua on the real server', () => {
    let redis: Redis;
    beforeAll(async () => {
      redis = standaloneClient();
      await redis.ping();
    });
    afterAll(async () => {
      await redis.quit();
    });

    // The apply script compares the stored stamp ('' for none) with a guard that is a stamp, or a
    // stamp followed by 'g' (the "since" floor set after a successful flush): all three forms.
    const operandArb = fc.oneof(
      { weight: 8, arbitrary: stampArb },
      { weight: 2, arbitrary: stampArb.map((s) => `${s}g`) },
      { weight: 1, arbitrary: fc.constant('') },
    );
    /** Pairs that are often equal or share a long prefix. */
    const pairArb = fc.oneof(
      fc.tuple(operandArb, operandArb),
      operandArb.map((s) => [s, s] as [string, string]),
      fc.tuple(tupleArb, fc.integer({ min: 0, max: STAMP_LENGTH - 1 })).map(([t, cut]) => {
        const s = formatStamp(...t);
        const other = formatStamp(...t).slice(0, cut) + (s[cut] === 'f' ? 'e' : 'f') + s.slice(cut + 1);
        return [s, isStamp(other) ? other : s] as [string, string];
      }),
    );
    const COMPARE_LUA = `
local out = {}
for i = 1, #ARGV, 2 do
  if ARGV[i] < ARGV[i + 1] then out[#out + 1] = 1 else out[#out + 1] = 0 end
end
return out`;

    it(
      'Lua `<` (used by the compare-and-set script) orders stamps exactly like JavaScript `<`',
      async () => {
        await fc.assert(
          fc.asyncProperty(fc.array(pairArb, { minLength: 1, maxLength: 200 }), async (pairs) => {
            const reply = (await redis.eval(COMPARE_LUA, 0, ...pairs.flat())) as number[];
            expect(reply).toEqual(pairs.map(([a, b]) => (a < b ? 1 : 0)));
          }),
          params(FILE, 100),
        );
      },
      timeoutOf(60_000),
    );
  });
});

// ------------------------------------------------------------------ last-writer-wins merge

/** An event for one key: a value or a delete, with the stamp of its write. */
interface LwwEvent {
  readonly key: string;
  readonly stamp: Stamp;
  readonly value: number | undefined;
}

type LwwState = ReadonlyMap<string, { readonly stamp: Stamp; readonly value: number | undefined }>;

/**
 * The rule of every cache (`install`, `applyRemote`): an entry is replaced only by a strictly newer
 * stamp. Returns a new map.
 */
function applyEvent(state: LwwState, event: LwwEvent): LwwState {
  const current = state.get(event.key);
  if (current !== undefined && current.stamp >= event.stamp) return state;
  const next = new Map(state);
  next.set(event.key, { stamp: event.stamp, value: event.value });
  return next;
}

function applyAll(state: LwwState, events: readonly LwwEvent[]): LwwState {
  return events.reduce(applyEvent, state);
}

/** Merge of two states by the same rule (what two caches that saw different events converge to). */
function mergeStates(a: LwwState, b: LwwState): LwwState {
  return applyAll(a, [...b].map(([key, e]) => ({ key, ...e })));
}

function snapshot(state: LwwState): [string, Stamp, number | undefined][] {
  return [...state].map(([k, e]) => [k, e.stamp, e.value] as [string, Stamp, number | undefined]).sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
}

/**
 * Writes: a stamp identifies a write, so a stamp always comes with the same key and value
 * (duplicates are deliveries of the same write).
 */
const writesArb = fc
  .uniqueArray(
    fc.record({
      key: fc.constantFrom('a', 'b', 'c', 'd'),
      stamp: fc.tuple(fc.integer({ min: 0, max: 30 }), fc.integer({ min: 0, max: 3 }), fc.constantFrom('000000000000000a', '000000000000000b', '00000000000000ff')).map((t) => formatStamp(...t)),
      value: fc.option(fc.integer({ min: 0, max: 1000 }), { nil: undefined }),
    }),
    { selector: (w) => w.stamp, maxLength: 25 },
  )
  .map((ws) => ws as LwwEvent[]);

/** A delivery of the writes: any order, any number of duplicates. */
const deliveryArb = writesArb.chain((writes) =>
  fc.tuple(
    fc.constant(writes),
    fc.shuffledSubarray(writes, { minLength: writes.length, maxLength: writes.length }),
    fc.array(fc.nat(), { maxLength: 15 }),
  ).map(([ws, order, dups]) => {
    const delivered = [...order];
    if (ws.length > 0) for (const d of dups) delivered.splice(d % (delivered.length + 1), 0, ws[d % ws.length]!);
    return { writes: ws, delivered };
  }),
);

describe('last-writer-wins merge (the caches’ replace-only-if-newer rule)', () => {
  it('any delivery order, with duplicates, converges to the highest-stamped write of each key', () => {
    fc.assert(
      fc.property(deliveryArb, ({ writes, delivered }) => {
        const expected = new Map<string, { stamp: Stamp; value: number | undefined }>();
        for (const w of writes) {
          const cur = expected.get(w.key);
          if (cur === undefined || cur.stamp < w.stamp) expected.set(w.key, { stamp: w.stamp, value: w.value });
        }
        expect(snapshot(applyAll(new Map(), delivered))).toEqual(snapshot(expected));
        expect(snapshot(applyAll(new Map(), delivered))).toEqual(snapshot(applyAll(new Map(), writes)));
      }),
      params(FILE, 1000),
    );
  });

  it('is commutative, associative and idempotent', () => {
    fc.assert(
      fc.property(writesArb, (writes) => {
        // Split one set of writes into three states (so a stamp never carries two different values).
        const parts: LwwEvent[][] = [[], [], []];
        writes.forEach((w, i) => parts[i % 3]!.push(w));
        const [a, b, c] = parts.map((p) => applyAll(new Map(), p)) as [LwwState, LwwState, LwwState];
        expect(snapshot(mergeStates(a, b))).toEqual(snapshot(mergeStates(b, a)));
        expect(snapshot(mergeStates(mergeStates(a, b), c))).toEqual(snapshot(mergeStates(a, mergeStates(b, c))));
        expect(snapshot(mergeStates(a, a))).toEqual(snapshot(a));
        for (const w of writes) expect(snapshot(applyEvent(applyEvent(a, w), w))).toEqual(snapshot(applyEvent(a, w)));
      }),
      params(FILE, 1000),
    );
  });
});
