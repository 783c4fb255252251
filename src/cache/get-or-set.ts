/**
 * `getOrSet`, the cache-aside read of {@link PubSubCacheManager}: its hot path (a hit), one load
 * per key in the process (concurrent callers share the load in flight) and in the fleet (a short
 * lock in Redis, in the key's hash slot: the other instances wait for the loader's write, woken by
 * its message, and take over if the lock expires), stale-while-revalidate, grace and timeouts.
 *
 * The manager composes it: it hands over the near-cache core, the store, its counters and what a
 * load needs of it (write-through, events, its open/closed state). See `docs/consistency.md`.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { ClosedError, InvalidArgumentError, LoaderError, TimeoutError, asError } from '../errors.js';
import { type DictKey, normalizeKey } from '../protocol/keys.js';
import type { Stamp } from '../protocol/stamp.js';
import { checkOptions, describe, integerOption } from '../options.js';
import type { PubSubRedisDict } from '../store/pubsub-redis-dict.js';
import { type NearCache, SETTLED, type Settled } from './near-cache.js';
import type { CacheEntry, CacheStats, GetOrSetOptions, StaleReason } from './types.js';

/** Option names of {@link GetOrSetOptions}, for validation. */
const GET_OR_SET_OPTION_KEYS = ['ttlMs', 'staleWhileRevalidateMs', 'graceMs', 'timeoutMs', 'lockTtlMs'] as const;

/** How often a caller waiting for another instance's lock looks again (a message wakes it sooner), in ms. */
const LOCK_POLL_MS = 50;

/** Largest `ttlMs` the hot path accepts without the full check (which also bounds the expiry time). */
const FAST_MAX_TTL_MS = 1e15;

/** Default `lockTtlMs`, in ms. */
const DEFAULT_LOCK_TTL_MS = 10_000;

/** Validated {@link GetOrSetOptions}. */
interface LoadOptions {
  readonly ttlMs: number;
  readonly swr: number;
  readonly grace: number;
  readonly timeoutMs: number;
  readonly lockTtlMs: number;
}

/** The counters of the manager's stats that `getOrSet` moves (the manager's own object, shared). */
type LoadCounters = Pick<CacheStats, 'hits' | 'misses' | 'loads' | 'loadErrors' | 'staleServed' | 'refreshes' | 'lockWaits'>;

/** A loaded value to write through, as the manager's write-through takes it. */
interface LoadedChange<V> {
  readonly key: string;
  readonly stamp: Stamp;
  readonly deleted: false;
  readonly value: V;
  readonly payload: Uint8Array;
  readonly expiresAt: number | undefined;
}

/** What a load needs of the manager that composes it. */
interface LoadHost<V> {
  isClosed(): boolean;
  /** Throws `E_CLOSED` once the manager is closed. */
  assertOpen(): void;
  /** Writes a loaded value through (stored, published, cached). */
  write(change: LoadedChange<V>): Promise<unknown>;
  /** The `stale` event. */
  onStale(k: string, reason: StaleReason, error: Error | undefined): void;
  /** The `loadError` event. */
  onLoadError(k: string, error: LoaderError): void;
  /** The `error` event (a failed write of a loaded value, a failed lock release). */
  reportError(error: Error): void;
}

/** A load in flight; `fail` rejects its callers when the manager closes. */
interface Flight<V> {
  readonly promise: Promise<V>;
  readonly fail: (error: Error) => void;
}

/** `getOrSet` of one manager: loads in flight, callers waiting for another instance's write. */
export class GetOrSet<V> {
  /** Loads in flight, one per key. */
  readonly #flights = new Map<string, Flight<V>>();
  /** Callers waiting for a write of a key (another instance's load). */
  readonly #writeWaiters = new Map<string, Set<() => void>>();
  readonly #core: NearCache<V>;
  readonly #store: PubSubRedisDict<V>;
  readonly #counters: LoadCounters;
  readonly #host: LoadHost<V>;

  constructor(core: NearCache<V>, store: PubSubRedisDict<V>, counters: LoadCounters, host: LoadHost<V>) {
    this.#core = core;
    this.#store = store;
    this.#counters = counters;
    this.#host = host;
  }

  /** See `PubSubCacheManager.getOrSet`. */
  getOrSet(key: DictKey, loader: () => V | Promise<V>, options?: GetOrSetOptions): Promise<V> {
    // Hot path, as in get(): a string key is looked up as is (only validated keys were ever
    // cached), and valid options are checked without allocating; anything else takes the full path.
    if (typeof key === 'string' && !this.#host.isClosed() && typeof loader === 'function' && validLoadOptions(options)) {
      // An expired entry must still be there for this call's stale-while-revalidate and grace.
      if (options !== undefined) {
        const keep = Math.max(options.staleWhileRevalidateMs ?? 0, options.graceMs ?? 0);
        this.#core.retain(keep);
      }
      const entry = this.#core.lookup(key) as Settled<V> | undefined;
      if (entry !== undefined && entry.present) {
        this.#counters.hits++;
        return (entry[SETTLED] ??= Promise.resolve(entry.value)) as Promise<V>;
      }
    }
    return this.#getOrSetSlow(key, loader, options);
  }

  /** Wakes the callers waiting for a write of `k` (see {@link GetOrSet.#waitForWrite}): the core's `onWrite`. */
  wake(k: string): void {
    const waiters = this.#writeWaiters.get(k);
    if (waiters !== undefined) {
      this.#writeWaiters.delete(k);
      for (const wake of waiters) wake();
    }
  }

  /** Rejects every caller of a load in flight with `error` (the manager closes). */
  close(error: ClosedError): void {
    for (const { fail } of this.#flights.values()) fail(error);
    this.#flights.clear();
  }

  #getOrSetSlow(key: DictKey, loader: () => V | Promise<V>, options?: GetOrSetOptions): Promise<V> {
    let k: string;
    let opts: LoadOptions;
    try {
      this.#host.assertOpen();
      k = normalizeKey(key);
      if (typeof loader !== 'function') throw new InvalidArgumentError('E_INVALID_ARGUMENT', `getOrSet: expected \`loader\` to be a function, got ${describe(loader)}`);
      opts = options === undefined ? this.#defaultLoadOptions() : this.#loadOptions(options);
    } catch (error) {
      return Promise.reject(error as Error);
    }
    const entry = this.#core.lookup(k) as Settled<V> | undefined;
    if (entry !== undefined && entry.present) {
      this.#counters.hits++;
      return (entry[SETTLED] ??= Promise.resolve(entry.value)) as Promise<V>;
    }
    this.#counters.misses++;
    return this.#getOrLoad(k, loader, opts);
  }

  #defaultLoadOptions(): LoadOptions {
    return { ttlMs: this.#store.defaultTtlMs, swr: 0, grace: 0, timeoutMs: 0, lockTtlMs: DEFAULT_LOCK_TTL_MS };
  }

  #loadOptions(options: GetOrSetOptions): LoadOptions {
    const where = 'getOrSet';
    const o = checkOptions(where, options, GET_OR_SET_OPTION_KEYS);
    const ttlMs = integerOption(where, 'ttlMs', o['ttlMs'], this.#store.defaultTtlMs, 0);
    // Validated as set() would (range of the expiry time); the time itself is fixed at the write.
    this.#store.expiryOf(where, { ttlMs });
    const swr = integerOption(where, 'staleWhileRevalidateMs', o['staleWhileRevalidateMs'], 0, 0);
    const grace = integerOption(where, 'graceMs', o['graceMs'], 0, 0);
    const timeoutMs = integerOption(where, 'timeoutMs', o['timeoutMs'], 0, 1);
    const lockTtlMs = integerOption(where, 'lockTtlMs', o['lockTtlMs'], DEFAULT_LOCK_TTL_MS, 1);
    this.#core.retain(Math.max(swr, grace));
    return { ttlMs, swr, grace, timeoutMs, lockTtlMs };
  }

  /** The last known value of `k` if it is within `windowMs` of its expiry (expired or not). */
  #staleEntry(k: string, windowMs: number): CacheEntry<V> | undefined {
    if (windowMs <= 0) return undefined;
    const entry = this.#core.peek(k);
    if (entry === undefined || !entry.present) return undefined;
    return this.#core.now() < entry.expiresAt + windowMs ? entry : undefined;
  }

  #serveStaleValue(k: string, entry: CacheEntry<V>, reason: StaleReason, error?: Error): V {
    this.#counters.staleServed++;
    this.#host.onStale(k, reason, error);
    return entry.value as V;
  }

  async #getOrLoad(k: string, loader: () => V | Promise<V>, opts: LoadOptions): Promise<V> {
    // Stale-while-revalidate: the previous value at once, one refresh in the background.
    if (opts.swr > 0 && this.#core.serving) {
      const stale = this.#staleEntry(k, opts.swr);
      if (stale !== undefined && stale.expiresAt <= this.#core.now()) {
        if (!this.#flights.has(k)) {
          this.#counters.refreshes++;
          this.#flight(k, loader, opts).promise.catch(() => undefined);
        }
        return this.#serveStaleValue(k, stale, 'revalidate');
      }
    }
    const { promise } = this.#flight(k, loader, opts);
    let result: Promise<V> = promise;
    let timer: NodeJS.Timeout | undefined;
    let timedOut = false;
    if (opts.timeoutMs > 0) {
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          timedOut = true;
          reject(new TimeoutError(`getOrSet: key \`${k}\` was not loaded within ${opts.timeoutMs} ms`));
        }, opts.timeoutMs);
      });
      result = Promise.race([promise, timeout]);
    }
    try {
      return await result;
    } catch (error) {
      const failure = asError(error);
      if (failure instanceof ClosedError) throw failure;
      // Fail-safe: the last known value, within the grace (or, on a timeout, the refresh window).
      const stale = this.#staleEntry(k, timedOut ? Math.max(opts.grace, opts.swr) : opts.grace);
      if (stale !== undefined) return this.#serveStaleValue(k, stale, timedOut ? 'timeout' : 'grace', failure);
      throw failure;
    } finally {
      clearTimeout(timer);
    }
  }

  /** The load of `k` in flight, or a new one: one per key in the process. */
  #flight(k: string, loader: () => V | Promise<V>, opts: LoadOptions): Flight<V> {
    let flight = this.#flights.get(k);
    if (flight !== undefined) return flight;
    let fail!: (error: Error) => void;
    const done = (): void => {
      if (this.#flights.get(k) === flight) this.#flights.delete(k);
    };
    const promise = new Promise<V>((resolve, reject) => {
      fail = reject;
      this.#loadAcrossFleet(k, loader, opts).then(
        (value) => {
          done();
          resolve(value);
        },
        (error: unknown) => {
          // Gone from the map first: a call made when the error is reported starts a new load.
          done();
          if (error instanceof LoaderError) {
            this.#counters.loadErrors++;
            this.#host.onLoadError(k, error);
          }
          reject(error as Error);
        },
      );
    });
    flight = { promise, fail };
    this.#flights.set(k, flight);
    return flight;
  }

  /**
   * Reads `k` from Redis; when it has no value, takes the fleet-wide load lock and loads, or waits
   * for the instance holding it (its write wakes us; the lock expiring lets us take over).
   */
  async #loadAcrossFleet(k: string, loader: () => V | Promise<V>, opts: LoadOptions): Promise<V> {
    let waited = false;
    for (;;) {
      this.#host.assertOpen();
      const found = await this.#core.load(k);
      if (found !== undefined) return found.value;
      const token = randomBytes(12).toString('base64');
      if (await this.#store.acquireLock(k, token, opts.lockTtlMs)) {
        try {
          // Written between our read and the lock: no load needed.
          const again = await this.#core.load(k);
          if (again !== undefined) return again.value;
          return await this.#callLoader(k, loader, opts);
        } finally {
          this.#store.releaseLock(k, token).catch((error: unknown) => this.#host.reportError(asError(error)));
        }
      }
      if (!waited) {
        waited = true;
        this.#counters.lockWaits++;
      }
      await this.#waitForWrite(k, LOCK_POLL_MS);
    }
  }

  async #callLoader(k: string, loader: () => V | Promise<V>, opts: LoadOptions): Promise<V> {
    this.#counters.loads++;
    let value: V;
    try {
      value = await loader();
    } catch (cause) {
      throw new LoaderError(k, cause);
    }
    if (this.#host.isClosed()) return value;
    // The expiry time is fixed now, when the value is stored.
    const expiresAt = this.#store.expiryOf('getOrSet', { ttlMs: opts.ttlMs });
    const payload = this.#store.encodeValue(k, value);
    try {
      await this.#host.write({ key: k, stamp: this.#store.clock.now(), deleted: false, value, payload, expiresAt });
    } catch (error) {
      // The value is returned though not stored; the next call loads again.
      this.#host.reportError(asError(error));
    }
    return value;
  }

  /** Resolves on the next write announced for `k` (message or local write), or after `ms`. */
  #waitForWrite(k: string, ms: number): Promise<void> {
    return new Promise((resolve) => {
      let waiters = this.#writeWaiters.get(k);
      if (waiters === undefined) this.#writeWaiters.set(k, (waiters = new Set()));
      const wake = (): void => {
        clearTimeout(timer);
        waiters.delete(wake);
        if (waiters.size === 0 && this.#writeWaiters.get(k) === waiters) this.#writeWaiters.delete(k);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      timer.unref();
      waiters.add(wake);
    });
  }
}

/** Optional safe integer in `[min, max]`. */
function optionalCount(value: unknown, min: number, max = Number.MAX_SAFE_INTEGER): boolean {
  return value === undefined || (typeof value === 'number' && Number.isSafeInteger(value) && value >= min && value <= max);
}

/**
 * True when `options` are valid {@link GetOrSetOptions}, checked without allocating (the hot path of
 * a hit); false sends the call to the full check, which throws the precise error.
 */
function validLoadOptions(options: unknown): boolean {
  if (options === undefined) return true;
  if (typeof options !== 'object' || options === null || Array.isArray(options)) return false;
  for (const name in options) {
    if (name !== 'ttlMs' && name !== 'staleWhileRevalidateMs' && name !== 'graceMs' && name !== 'timeoutMs' && name !== 'lockTtlMs') return false;
  }
  const o = options as GetOrSetOptions;
  return (
    optionalCount(o.ttlMs, 0, FAST_MAX_TTL_MS) &&
    optionalCount(o.staleWhileRevalidateMs, 0) &&
    optionalCount(o.graceMs, 0) &&
    optionalCount(o.timeoutMs, 1) &&
    optionalCount(o.lockTtlMs, 1)
  );
}
