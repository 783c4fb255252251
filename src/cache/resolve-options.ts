/**
 * Resolution of a cache manager's options: a pure function that validates the raw options, applies
 * the defaults and the cross-option checks, and returns a complete, typed object.
 *
 * @module
 */
import { booleanOption, checkOptions, enumOption, functionOption, integerOption, invalidOption } from '../options.js';
import { checkCacheOption, type StorageSpec } from './storage.js';
import { CACHE_MANAGER_OPTION_KEYS } from './types.js';

/** `PubSubCacheManagerOptions` validated, every default applied. */
export interface ResolvedCacheManagerOptions {
  readonly cache: StorageSpec;
  readonly sync: 'invalidate' | 'update';
  readonly ttlMs: number;
  readonly cacheMisses: boolean;
  readonly onReconnect: 'revalidate' | 'clear';
  readonly serveStaleWhileDisconnected: boolean;
  readonly heartbeatIntervalMs: number;
  readonly heartbeatTimeoutMs: number;
  readonly maxMessageBytes: number;
  /** `undefined`: the store's clock. */
  readonly clock: (() => number) | undefined;
  readonly gapResyncIntervalMs: number;
}

/**
 * Validates `PubSubCacheManagerOptions` and applies their defaults; throws `E_INVALID_OPTION`
 * naming the option at fault. `allowed` lists the option names accepted (a subclass's include
 * these); `where` names the class in messages.
 */
export function resolveCacheManagerOptions(raw: unknown, where = 'PubSubCacheManager', allowed: readonly string[] = CACHE_MANAGER_OPTION_KEYS): ResolvedCacheManagerOptions {
  const opts = checkOptions(where, raw, allowed);
  const cache = checkCacheOption(where, opts['cache']);
  const sync = enumOption(where, 'sync', opts['sync'], ['invalidate', 'update'] as const, 'invalidate');
  const ttlMs = integerOption(where, 'ttlMs', opts['ttlMs'], 0, 0);
  const cacheMisses = booleanOption(where, 'cacheMisses', opts['cacheMisses'], true);
  const onReconnect = enumOption(where, 'onReconnect', opts['onReconnect'], ['revalidate', 'clear'] as const, 'revalidate');
  const serveStaleWhileDisconnected = booleanOption(where, 'serveStaleWhileDisconnected', opts['serveStaleWhileDisconnected'], false);
  const heartbeatIntervalMs = integerOption(where, 'heartbeatIntervalMs', opts['heartbeatIntervalMs'], 1000, 10);
  const heartbeatTimeoutMs = integerOption(where, 'heartbeatTimeoutMs', opts['heartbeatTimeoutMs'], 2 * heartbeatIntervalMs, 10);
  // A timeout within one period would declare every answered heartbeat late.
  if (heartbeatTimeoutMs <= heartbeatIntervalMs) {
    invalidOption(where, 'heartbeatTimeoutMs', `greater than \`heartbeatIntervalMs\` (${heartbeatIntervalMs})`, heartbeatTimeoutMs);
  }
  const maxMessageBytes = integerOption(where, 'maxMessageBytes', opts['maxMessageBytes'], 8 << 20);
  const clock = functionOption<(() => number) | undefined>(where, 'clock', opts['clock'], undefined);
  const gapResyncIntervalMs = integerOption(where, 'gapResyncIntervalMs', opts['gapResyncIntervalMs'], 1000, 0);
  return { cache, sync, ttlMs, cacheMisses, onReconnect, serveStaleWhileDisconnected, heartbeatIntervalMs, heartbeatTimeoutMs, maxMessageBytes, clock, gapResyncIntervalMs };
}
