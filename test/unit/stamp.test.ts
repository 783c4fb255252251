import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  HybridClock,
  MAX_DRIFT_MS,
  STAMP_LENGTH,
  ZERO_STAMP,
  compareStamps,
  formatStamp,
  isStamp,
  maxStamp,
  newNodeId,
  parseStamp,
  type Stamp,
} from '../../src/protocol/stamp.js';

const NODE_A = '00000000000000aa';
const NODE_B = '00000000000000bb';
const MAX_MS = 2 ** 48 - 1;
const MAX_COUNTER = 0xffffff;

/** A wall clock the test moves by hand. */
function manualClock(start: number): { now: () => number; set: (ms: number) => void } {
  let current = start;
  return { now: () => current, set: (ms) => (current = ms) };
}

function tupleCompare(a: [number, number, string], b: [number, number, string]): number {
  if (a[0] !== b[0]) return a[0] < b[0] ? -1 : 1;
  if (a[1] !== b[1]) return a[1] < b[1] ? -1 : 1;
  return a[2] < b[2] ? -1 : a[2] > b[2] ? 1 : 0;
}

const nodeArb = fc.stringMatching(/^[0-9a-f]{16}$/);
const tupleArb = fc.tuple(fc.integer({ min: 0, max: MAX_MS }), fc.integer({ min: 0, max: MAX_COUNTER }), nodeArb);

describe('stamp encoding', () => {
  it('is 34 lowercase hex characters: 12 of ms, 6 of counter, 16 of node id', () => {
    const stamp = formatStamp(0x18bcfe568000, 0x2a, NODE_A);
    expect(stamp).toBe('18bcfe568000' + '00002a' + NODE_A);
    expect(stamp).toHaveLength(STAMP_LENGTH);
    expect(isStamp(stamp)).toBe(true);
    expect(parseStamp(stamp)).toEqual({ ms: 0x18bcfe568000, counter: 0x2a, node: NODE_A });
  });

  it('round-trips every (ms, counter, node) through formatStamp and parseStamp', () => {
    fc.assert(
      fc.property(tupleArb, ([ms, counter, node]) => {
        const stamp = formatStamp(ms, counter, node);
        expect(isStamp(stamp)).toBe(true);
        expect(parseStamp(stamp)).toEqual({ ms, counter, node });
      }),
    );
  });

  it('orders stamps as strings (JS `<` and byte-wise) exactly as it orders the tuples', () => {
    fc.assert(
      fc.property(tupleArb, tupleArb, (a, b) => {
        const sa = formatStamp(...a);
        const sb = formatStamp(...b);
        const expected = tupleCompare(a, b);
        expect(compareStamps(sa, sb)).toBe(expected);
        expect(Math.sign(Buffer.compare(Buffer.from(sa, 'latin1'), Buffer.from(sb, 'latin1')))).toBe(expected);
        expect(sa < sb).toBe(expected < 0);
        expect(maxStamp(sa, sb)).toBe(expected >= 0 ? sa : sb);
      }),
      { numRuns: 2000 },
    );
  });

  it('orders neighbouring tuples correctly at the field boundaries', () => {
    const ordered: Stamp[] = [
      ZERO_STAMP,
      formatStamp(0, 0, NODE_A),
      formatStamp(0, 0, NODE_B),
      formatStamp(0, 1, NODE_A),
      formatStamp(0, MAX_COUNTER, 'ffffffffffffffff'),
      formatStamp(1, 0, NODE_A),
      formatStamp(0xf, 0, NODE_A),
      formatStamp(0x10, 0, NODE_A),
      formatStamp(MAX_MS, MAX_COUNTER, 'ffffffffffffffff'),
    ];
    for (let i = 1; i < ordered.length; i++) expect(compareStamps(ordered[i - 1]!, ordered[i]!)).toBe(-1);
    expect([...ordered].reverse().sort()).toEqual(ordered);
  });

  it('recognizes only well-formed stamps', () => {
    const good = formatStamp(1, 2, NODE_A);
    expect(isStamp(good)).toBe(true);
    expect(isStamp(ZERO_STAMP)).toBe(true);
    expect(isStamp(good.toUpperCase())).toBe(false);
    expect(isStamp(good.slice(1))).toBe(false);
    expect(isStamp(good + '0')).toBe(false);
    expect(isStamp(good.replace(/.$/, 'g'))).toBe(false);
    expect(isStamp(`${good.slice(0, 33)}\n`)).toBe(false);
    expect(isStamp(123)).toBe(false);
    expect(isStamp(null)).toBe(false);
    expect(isStamp(undefined)).toBe(false);
    expect(isStamp(Buffer.from(good))).toBe(false);
  });

  it('makes random 16-hex-character node ids', () => {
    const ids = new Set(Array.from({ length: 50 }, () => newNodeId()));
    expect(ids.size).toBe(50);
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{16}$/);
  });
});

describe('HybridClock', () => {
  it('refuses a malformed node id', () => {
    expect(() => new HybridClock('ABCDEF0123456789')).toThrow(TypeError);
    expect(() => new HybridClock('abc')).toThrow(TypeError);
    expect(() => new HybridClock(`${NODE_A}0`)).toThrow(TypeError);
  });

  it('ends every stamp with its node id; a random one by default', () => {
    const clock = new HybridClock(NODE_A);
    expect(clock.nodeId).toBe(NODE_A);
    expect(parseStamp(clock.now()).node).toBe(NODE_A);
    const other = new HybridClock();
    expect(other.nodeId).toMatch(/^[0-9a-f]{16}$/);
    expect(other.now().endsWith(other.nodeId)).toBe(true);
  });

  it('uses the wall clock for the ms field, with counter 0 on a new millisecond', () => {
    const wall = manualClock(1_700_000_000_000);
    const clock = new HybridClock(NODE_A, wall.now);
    expect(parseStamp(clock.now())).toEqual({ ms: 1_700_000_000_000, counter: 0, node: NODE_A });
    wall.set(1_700_000_000_005);
    expect(parseStamp(clock.now())).toEqual({ ms: 1_700_000_000_005, counter: 0, node: NODE_A });
  });

  it('is strictly increasing with the real wall clock', () => {
    const clock = new HybridClock(NODE_A);
    let previous = clock.now();
    for (let i = 0; i < 20_000; i++) {
      const next = clock.now();
      expect(next > previous).toBe(true);
      previous = next;
    }
    expect(isStamp(previous)).toBe(true);
  });

  it('counts up within the same millisecond', () => {
    const clock = new HybridClock(NODE_A, () => 5000);
    const stamps = Array.from({ length: 1000 }, () => clock.now());
    stamps.forEach((stamp, i) => expect(parseStamp(stamp)).toEqual({ ms: 5000, counter: i, node: NODE_A }));
    expect([...stamps].sort()).toEqual(stamps);
    expect(new Set(stamps).size).toBe(stamps.length);
  });

  it('stays monotonic when the wall clock goes backwards', () => {
    const wall = manualClock(10_000);
    const clock = new HybridClock(NODE_A, wall.now);
    const first = clock.now();
    wall.set(4_000);
    const second = clock.now();
    const third = clock.now();
    expect(second > first).toBe(true);
    expect(third > second).toBe(true);
    expect(parseStamp(second)).toEqual({ ms: 10_000, counter: 1, node: NODE_A });
    expect(parseStamp(third)).toEqual({ ms: 10_000, counter: 2, node: NODE_A });
    // Once the wall clock passes the logical time again, it is used again.
    wall.set(10_001);
    const fourth = clock.now();
    expect(parseStamp(fourth)).toEqual({ ms: 10_001, counter: 0, node: NODE_A });
    expect(fourth > third).toBe(true);
  });

  it('is monotonic under any sequence of wall-clock readings and observed stamps', () => {
    const step = fc.oneof(
      fc.record({ wall: fc.integer({ min: -5, max: 2 ** 40 }) }),
      // Observed ms stay below the 48-bit ceiling (covered separately below).
      fc.record({ observe: fc.tuple(fc.integer({ min: 0, max: 2 ** 47 }), fc.integer({ min: 0, max: MAX_COUNTER }), nodeArb) }),
    );
    fc.assert(
      fc.property(fc.array(step, { minLength: 1, maxLength: 60 }), (steps) => {
        const wall = manualClock(0);
        const clock = new HybridClock(NODE_A, wall.now);
        let last = ZERO_STAMP;
        let highestObserved = ZERO_STAMP;
        let now = 0;
        for (const s of steps) {
          if ('wall' in s) {
            wall.set(s.wall);
            now = s.wall;
          } else {
            const observed = formatStamp(...s.observe);
            clock.observe(observed);
            // Stamps further ahead than MAX_DRIFT_MS are followed only up to that bound (tested below).
            if (s.observe[0] <= Math.max(0, now) + MAX_DRIFT_MS) highestObserved = maxStamp(highestObserved, observed);
          }
          const stamp = clock.now();
          expect(isStamp(stamp)).toBe(true);
          expect(stamp > last).toBe(true);
          expect(stamp > highestObserved).toBe(true);
          last = stamp;
        }
      }),
      { numRuns: 300 },
    );
  });

  it('follows an observed stamp at most maxDriftMs ahead of the wall clock, when given', () => {
    const clock = new HybridClock(NODE_A, () => 1_000, 10);
    expect(clock.maxDriftMs).toBe(10);
    clock.observe(formatStamp(5_000, 5, NODE_B));
    expect(parseStamp(clock.now()).ms).toBe(1_010);
    expect(clock.isTooFarAhead(formatStamp(1_010, 0, NODE_B))).toBe(false);
    expect(clock.isTooFarAhead(formatStamp(1_011, 0, NODE_B))).toBe(true);
    expect(() => new HybridClock(NODE_A, Date.now, -1)).toThrow(TypeError);
  });

  it('follows an observed stamp at most MAX_DRIFT_MS ahead of the wall clock', () => {
    const clock = new HybridClock(NODE_A, () => 1_000_000);
    clock.observe(formatStamp(1_000_000 + MAX_DRIFT_MS * 10, 5, NODE_A));
    const next = clock.now();
    expect(parseStamp(next).ms).toBe(1_000_000 + MAX_DRIFT_MS);
    expect(clock.now() > next).toBe(true);
  });

  it('floors fractional wall-clock readings and clamps negative ones to 0', () => {
    const wall = manualClock(-50);
    const clock = new HybridClock(NODE_A, wall.now);
    expect(parseStamp(clock.now()).ms).toBe(0);
    wall.set(1234.9);
    expect(parseStamp(clock.now())).toEqual({ ms: 1234, counter: 0, node: NODE_A });
  });

  describe('observe()', () => {
    it('moves past a remote stamp from a later millisecond', () => {
      const clock = new HybridClock(NODE_A, () => 1000);
      clock.now();
      const remote = formatStamp(9000, 7, NODE_B);
      clock.observe(remote);
      const next = clock.now();
      expect(next > remote).toBe(true);
      expect(parseStamp(next)).toEqual({ ms: 9000, counter: 8, node: NODE_A });
    });

    it('moves past a remote stamp in the same millisecond with a higher counter', () => {
      const clock = new HybridClock(NODE_A, () => 1000);
      clock.now();
      const remote = formatStamp(1000, 500, NODE_B);
      clock.observe(remote);
      const next = clock.now();
      expect(next > remote).toBe(true);
      expect(parseStamp(next)).toEqual({ ms: 1000, counter: 501, node: NODE_A });
    });

    it('moves past a remote stamp equal in ms and counter but with a higher node id', () => {
      const clock = new HybridClock(NODE_A, () => 1000);
      const own = clock.now();
      const remote = formatStamp(1000, parseStamp(own).counter, 'ffffffffffffffff');
      expect(remote > own).toBe(true);
      clock.observe(remote);
      expect(clock.now() > remote).toBe(true);
    });

    it('ignores an older remote stamp', () => {
      const clock = new HybridClock(NODE_A, () => 50_000);
      const before = clock.now();
      clock.observe(formatStamp(10, 99, NODE_B));
      expect(parseStamp(clock.now())).toEqual({ ms: 50_000, counter: 1, node: NODE_A });
      expect(parseStamp(before).counter).toBe(0);
    });

    it('moves past a stamp observed before the clock made any stamp', () => {
      const clock = new HybridClock(NODE_A, () => 1);
      // Within MAX_DRIFT_MS of the wall clock (farther stamps are followed only up to it: below).
      const remote = formatStamp(50_000, 3, NODE_B);
      clock.observe(remote);
      expect(clock.now() > remote).toBe(true);
    });

    it('lets the wall clock take over again once it passes the observed time', () => {
      const wall = manualClock(1000);
      const clock = new HybridClock(NODE_A, wall.now);
      clock.observe(formatStamp(2000, 40, NODE_B));
      expect(parseStamp(clock.now())).toEqual({ ms: 2000, counter: 41, node: NODE_A });
      wall.set(2001);
      expect(parseStamp(clock.now())).toEqual({ ms: 2001, counter: 0, node: NODE_A });
    });

    it('ignores malformed input instead of corrupting the clock', () => {
      const clock = new HybridClock(NODE_A, () => 1000);
      const before = clock.now();
      clock.observe('not a stamp');
      clock.observe('');
      const after = clock.now();
      expect(isStamp(after)).toBe(true);
      expect(after > before).toBe(true);
      expect(parseStamp(after).ms).toBe(1000);
    });
  });

  describe('counter overflow', () => {
    it('bumps the millisecond when the counter is exhausted', () => {
      const clock = new HybridClock(NODE_A, () => 7000);
      clock.observe(formatStamp(7000, MAX_COUNTER - 1, NODE_B));
      const atMax = clock.now();
      expect(parseStamp(atMax)).toEqual({ ms: 7000, counter: MAX_COUNTER, node: NODE_A });
      const bumped = clock.now();
      expect(parseStamp(bumped)).toEqual({ ms: 7001, counter: 0, node: NODE_A });
      expect(bumped > atMax).toBe(true);
      expect(isStamp(bumped)).toBe(true);
    });

    it('bumps the millisecond when an observed stamp has an exhausted counter', () => {
      const clock = new HybridClock(NODE_A, () => 7000);
      const remote = formatStamp(8000, MAX_COUNTER, NODE_B);
      clock.observe(remote);
      const next = clock.now();
      expect(parseStamp(next)).toEqual({ ms: 8001, counter: 0, node: NODE_A });
      expect(next > remote).toBe(true);
    });

    it('clamps wall-clock readings above the 48-bit range', () => {
      const clock = new HybridClock(NODE_A, () => 2 ** 60);
      const stamp = clock.now();
      expect(isStamp(stamp)).toBe(true);
      expect(parseStamp(stamp).ms).toBe(MAX_MS);
    });

    // Regression: at ms = 2^48-1 with the counter exhausted, now() used to do `ms += 1` and format
    // a 35-character stamp. One foreign record (or message) carrying the stamp 'ffff…' was enough
    // to get there through observe(); the record encoding then silently cut the stamp to 34 characters and
    // message decoders refused every entry of this writer.
    // Refusing (throwing) or not following such a stamp are both acceptable behaviours.
    it('never makes a malformed stamp, even after observing the highest possible stamp', () => {
      const clock = new HybridClock(NODE_A, () => 1_700_000_000_000);
      clock.observe('f'.repeat(STAMP_LENGTH));
      let next: string;
      try {
        next = clock.now();
      } catch {
        return;
      }
      expect(next).toHaveLength(STAMP_LENGTH);
      expect(isStamp(next)).toBe(true);
    });
  });
});
