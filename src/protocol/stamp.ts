/**
 * Version stamps: a hybrid logical clock (HLC).
 *
 * A stamp is a fixed-width lowercase hex string of 34 characters:
 *
 * ```
 *  mmmmmmmmmmmm cccccc nnnnnnnnnnnnnnnn
 *  └ 48-bit wall-clock milliseconds
 *               └ 24-bit logical counter
 *                      └ 64-bit writer (node) id, the tie-break
 * ```
 *
 * Because every field is fixed-width hex, comparing two stamps as strings (JavaScript `<`, Lua `<`,
 * or byte-wise) orders them exactly as comparing the tuples `(ms, counter, node)`. That is what lets
 * the Lua compare-and-set scripts and the TypeScript caches agree on which write is newer.
 *
 * A clock hands out strictly increasing stamps and moves past every stamp it observes (a value read
 * from Redis, an event received), so a write that causally follows another always wins.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';

/** A version stamp; compare stamps with `<` / `>` or {@link compareStamps}. */
export type Stamp = string;

/** Length of an encoded stamp. */
export const STAMP_LENGTH = 34;

/** The stamp that is older than every real stamp (used for "never written"). */
export const ZERO_STAMP: Stamp = '0'.repeat(STAMP_LENGTH);

const MAX_MS = 2 ** 48 - 1;
/**
 * Default of the dictionaries' `maxDriftMs` option: how far ahead of a clock a stamp may be, one
 * minute. The apply script refuses changes stamped further ahead of the Redis server's clock, a
 * hybrid clock follows observed stamps only up to that far ahead of its wall clock, and a cache
 * drops (does not apply) message entries stamped further ahead of its wall clock.
 */
export const MAX_DRIFT_MS = 60_000;
const MAX_COUNTER = 0xffffff;
const STAMP_PATTERN = /^[0-9a-f]{34}$/;
const NODE_PATTERN = /^[0-9a-f]{16}$/;

/** True when `value` is a well-formed stamp. */
export function isStamp(value: unknown): value is Stamp {
  return typeof value === 'string' && value.length === STAMP_LENGTH && STAMP_PATTERN.test(value);
}

/** Orders two stamps: negative when `a` is older, positive when newer, 0 when equal. */
export function compareStamps(a: Stamp, b: Stamp): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The newer of two stamps. */
export function maxStamp(a: Stamp, b: Stamp): Stamp {
  return a >= b ? a : b;
}

/** The parts of a stamp. */
export interface StampParts {
  /** Wall-clock milliseconds of the writer when it made the stamp. */
  readonly ms: number;
  /** Logical counter within that millisecond. */
  readonly counter: number;
  /** Writer id, 16 hex characters. */
  readonly node: string;
}

/** Splits a stamp into its parts. */
export function parseStamp(stamp: Stamp): StampParts {
  return {
    ms: Number.parseInt(stamp.slice(0, 12), 16),
    counter: Number.parseInt(stamp.slice(12, 18), 16),
    node: stamp.slice(18),
  };
}

/** Builds a stamp from its parts. */
export function formatStamp(ms: number, counter: number, node: string): Stamp {
  return ms.toString(16).padStart(12, '0') + counter.toString(16).padStart(6, '0') + node;
}

/** A new random writer id (16 hex characters). */
export function newNodeId(): string {
  return randomBytes(8).toString('hex');
}

/** A hybrid logical clock that hands out strictly increasing {@link Stamp}s. */
export class HybridClock {
  /** This writer's id, the last 16 characters of every stamp it makes. */
  readonly nodeId: string;
  /** How far ahead of the wall clock an observed stamp is followed, in ms. */
  readonly maxDriftMs: number;
  private readonly wallClock: () => number;
  private ms = 0;
  private counter = 0;
  /** `ms` as 12 hex characters, kept for the ms it was made for: most stamps only change the counter. */
  private msHex = '';
  private msHexOf = -1;

  /**
   * @param nodeId - writer id (16 lowercase hex characters); random by default.
   * @param now - wall clock in milliseconds; injectable for tests. Default `Date.now`.
   * @param maxDriftMs - how far ahead of the wall clock an observed stamp is followed (see
   *   {@link HybridClock.observe}). Default {@link MAX_DRIFT_MS}.
   */
  constructor(nodeId: string = newNodeId(), now: () => number = Date.now, maxDriftMs: number = MAX_DRIFT_MS) {
    if (!NODE_PATTERN.test(nodeId)) throw new TypeError(`HybridClock: node id must be 16 lowercase hex characters, got ${nodeId}`);
    if (!Number.isSafeInteger(maxDriftMs) || maxDriftMs < 0) throw new TypeError(`HybridClock: maxDriftMs must be a non-negative integer, got ${maxDriftMs}`);
    this.nodeId = nodeId;
    this.wallClock = now;
    this.maxDriftMs = maxDriftMs;
  }

  /** The wall clock in whole milliseconds within the stamp range (a reading that is not a number counts as 0). */
  private wall(): number {
    const ms = Math.floor(this.wallClock());
    return Number.isNaN(ms) ? 0 : Math.min(Math.max(0, ms), MAX_MS);
  }

  /** True when `stamp` is more than {@link HybridClock.maxDriftMs} ahead of this clock's wall clock. */
  isTooFarAhead(stamp: Stamp): boolean {
    return Number.parseInt(stamp.slice(0, 12), 16) > this.wall() + this.maxDriftMs;
  }

  /** A new stamp, greater than every stamp this clock made or observed before. */
  now(): Stamp {
    const wall = this.wall();
    if (wall > this.ms) {
      this.ms = wall;
      this.counter = 0;
    } else if (this.counter < MAX_COUNTER) {
      this.counter += 1;
    } else if (this.ms < MAX_MS) {
      this.ms += 1;
      this.counter = 0;
    } else {
      // Only reachable with a wall clock past the year 10889: refuse rather than repeat a stamp.
      throw new RangeError('HybridClock: the 48-bit millisecond range of stamps is exhausted');
    }
    if (this.msHexOf !== this.ms) {
      this.msHex = this.ms.toString(16).padStart(12, '0');
      this.msHexOf = this.ms;
    }
    // The same text as formatStamp(ms, counter, nodeId): 0x1000000 + counter has 7 hex digits.
    return this.msHex + (0x1000000 + this.counter).toString(16).slice(1) + this.nodeId;
  }

  /**
   * Moves the clock past `stamp`, so that the next {@link now} is greater than it. A stamp more
   * than {@link HybridClock.maxDriftMs} ahead of the wall clock is only followed up to that bound, so that
   * one bogus stamp (a writer with a broken clock, a forged message) cannot push this clock into
   * the far future.
   */
  observe(stamp: Stamp): void {
    const bound = this.wall() + this.maxDriftMs;
    const ms = Number.parseInt(stamp.slice(0, 12), 16);
    if (ms > bound) {
      if (bound > this.ms) {
        this.ms = Math.min(bound, MAX_MS);
        this.counter = 0;
      }
      return;
    }
    if (ms > this.ms) {
      this.ms = Math.min(ms, MAX_MS);
      this.counter = Number.parseInt(stamp.slice(12, 18), 16);
    } else if (ms === this.ms) {
      const counter = Number.parseInt(stamp.slice(12, 18), 16);
      if (counter > this.counter) this.counter = counter;
    }
  }
}
