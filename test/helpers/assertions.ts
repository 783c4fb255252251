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
