/**
 * Keys and namespaces. An entry `key` of namespace `ns` is stored under the Redis key `ns/key`.
 *
 * A namespace is 1–128 characters from `[A-Za-z0-9_.:-]`: no `/`, so the prefix `ns/` of one
 * namespace can never be a prefix of another's keys, and no glob characters, so the SCAN pattern
 * `ns/*` matches exactly this namespace. Keys may contain anything (including `/`, `*`, `{`,
 * spaces and unicode) except lone surrogates; numbers are converted with `String()`.
 *
 * @module
 */
import { InvalidArgumentError } from '../errors.js';
import { describe } from '../options.js';

/** A dictionary key: strings, or finite numbers converted with `String()` (`1` and `'1'` are one entry). */
export type DictKey = string | number;

/** Longest accepted key, in characters. */
export const MAX_KEY_LENGTH = 4096;

const NAMESPACE_PATTERN = /^[A-Za-z0-9_.:-]{1,128}$/;

/** Validates a namespace; throws `E_INVALID_NAMESPACE`. */
export function checkNamespace(namespace: unknown): string {
  if (typeof namespace !== 'string' || !NAMESPACE_PATTERN.test(namespace)) {
    throw new InvalidArgumentError(
      'E_INVALID_NAMESPACE',
      `Expected the namespace to be 1-128 characters from [A-Za-z0-9_.:-], got ${describe(namespace)}`,
    );
  }
  return namespace;
}

/** Converts and validates a key; throws `E_INVALID_KEY`. */
export function normalizeKey(key: unknown): string {
  if (typeof key === 'string') {
    if (key.length === 0) throw new InvalidArgumentError('E_INVALID_KEY', 'Expected a non-empty key, got `""`');
    if (key.length > MAX_KEY_LENGTH) {
      throw new InvalidArgumentError('E_INVALID_KEY', `Expected a key of at most ${MAX_KEY_LENGTH} characters, got ${key.length}`);
    }
    if (!key.isWellFormed()) throw new InvalidArgumentError('E_INVALID_KEY', `Expected a well-formed unicode key, got ${describe(key)}`);
    return key;
  }
  if (typeof key === 'number' && Number.isFinite(key)) return String(key);
  throw new InvalidArgumentError('E_INVALID_KEY', `Expected a key to be a string or a finite number, got ${describe(key)}`);
}

/** Converts and validates every key of an iterable; throws before returning anything. */
export function normalizeKeys(keys: Iterable<DictKey>): string[] {
  if (keys === null || typeof keys !== 'object' || typeof (keys as Iterable<DictKey>)[Symbol.iterator] !== 'function') {
    throw new InvalidArgumentError('E_INVALID_KEY', `Expected an iterable of keys, got ${describe(keys)}`);
  }
  return Array.from(keys, normalizeKey);
}
