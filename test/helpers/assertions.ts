/**
 * Small assertion helpers shared by the test files.
 *
 * @module
 */
import { expect } from 'vitest';
import { RedisDictError } from '../../src/errors.js';

/** The rejection of `promise`, which must reject with a library error ({@link RedisDictError}). */
export async function rejection(promise: Promise<unknown>): Promise<RedisDictError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(RedisDictError);
    return error as RedisDictError;
  }
  throw new Error('expected the promise to reject');
}

/** A sorted copy of `keys`, for comparing key sets whatever their order. */
export const sorted = (keys: readonly string[]): string[] => [...keys].sort();

/**
 * Write-back options under which nothing flushes by itself during a test: a timer that never fires
 * within one (with `flushIntervalMs: 0`, `maxDirty` may not exceed `maxPending`, so a test of the
 * `maxPending` limit needs a timer that stays quiet instead).
 */
export const NO_AUTO_FLUSH = { flushIntervalMs: 3_600_000, maxDirty: 1_000_000 } as const;
