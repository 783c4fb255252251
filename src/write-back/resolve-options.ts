/**
 * Resolution of a write-back manager's options: a pure function that validates the raw options,
 * applies the defaults and the cross-option checks, and returns a complete, typed object.
 *
 * @module
 */
import { type ResolvedCacheManagerOptions, resolveCacheManagerOptions } from '../cache/resolve-options.js';
import { CACHE_MANAGER_OPTION_KEYS } from '../cache/types.js';
import { checkOptions, enumOption, integerOption, invalidOption } from '../options.js';
import type { ConflictPolicy } from './conflict.js';

/** Keys of `WriteBackCacheManagerOptions`, for validation. */
const WRITE_BACK_OPTION_KEYS = [...CACHE_MANAGER_OPTION_KEYS, 'conflictPolicy', 'flushIntervalMs', 'maxDirty', 'maxPending', 'onBackpressure', 'closeTimeoutMs', 'retryDelayMs'] as const;

/** `WriteBackCacheManagerOptions` validated, every default applied. */
export interface ResolvedWriteBackOptions<V> extends ResolvedCacheManagerOptions {
  readonly conflictPolicy: ConflictPolicy<V>;
  readonly flushIntervalMs: number;
  readonly maxDirty: number;
  readonly maxPending: number;
  readonly onBackpressure: 'reject' | 'wait';
  readonly closeTimeoutMs: number;
  readonly retryDelayMs: number;
}

/**
 * Validates `WriteBackCacheManagerOptions` (the write-back's own, then the cache manager's) and
 * applies their defaults; throws `E_INVALID_OPTION` naming the option at fault.
 */
export function resolveWriteBackOptions<V>(raw: unknown, where = 'WriteBackCacheManager'): ResolvedWriteBackOptions<V> {
  const opts = checkOptions(where, raw, WRITE_BACK_OPTION_KEYS);
  const conflictPolicy = (opts['conflictPolicy'] ?? 'last-writer-wins') as ConflictPolicy<V>;
  if (typeof conflictPolicy !== 'function' && conflictPolicy !== 'last-writer-wins' && conflictPolicy !== 'discard-on-remote-update') {
    invalidOption(where, 'conflictPolicy', "'last-writer-wins', 'discard-on-remote-update' or a function", conflictPolicy);
  }
  const flushIntervalMs = integerOption(where, 'flushIntervalMs', opts['flushIntervalMs'], 1000, 0);
  const maxPending = integerOption(where, 'maxPending', opts['maxPending'], 100_000);
  // Without a timer, only the size trigger flushes by itself: it must fire before `maxPending`
  // refuses changes, or every change past `maxPending` would wait for a manual flush.
  const maxDirty = integerOption(where, 'maxDirty', opts['maxDirty'], flushIntervalMs === 0 ? Math.min(10_000, maxPending) : 10_000);
  if (flushIntervalMs === 0 && maxDirty > maxPending) {
    invalidOption(where, 'maxDirty', `at most \`maxPending\` (${maxPending}) when \`flushIntervalMs\` is 0`, maxDirty);
  }
  const onBackpressure = enumOption(where, 'onBackpressure', opts['onBackpressure'], ['reject', 'wait'] as const, 'reject');
  const closeTimeoutMs = integerOption(where, 'closeTimeoutMs', opts['closeTimeoutMs'], 10_000, 0);
  const retryDelayMs = integerOption(where, 'retryDelayMs', opts['retryDelayMs'], 100);
  const base = resolveCacheManagerOptions(raw, where, WRITE_BACK_OPTION_KEYS);
  return { ...base, conflictPolicy, flushIntervalMs, maxDirty, maxPending, onBackpressure, closeTimeoutMs, retryDelayMs };
}
