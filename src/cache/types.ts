/**
 * Public types of the cache layer: options, entries, events and stats of a cache manager, and the
 * payloads of the write-back events it declares (`conflict`, `flush`), so that no module of this
 * layer imports the write-back layer above it.
 *
 * @module
 */
import type { WaitOptions } from '../deadline.js';
import type { DictWarning } from '../errors.js';
import type { MalformedMessageError } from '../protocol/messages.js';
import type { Stamp } from '../protocol/stamp.js';
import type { ResyncReason } from './subscriber.js';

/** A cached entry: a value (or a cached miss) and the stamp of the write it shows. */
export interface CacheEntry<V> {
  /** The value; `undefined` for a cached miss. */
  readonly value: V | undefined;
  /** Stamp of the write this entry shows (`''` for a miss, older than every write). */
  readonly stamp: Stamp | '';
  /** False for a cached miss. */
  readonly present: boolean;
  /**
   * When the entry stops being served (clock ms): the earlier of the stored value's own expiry
   * (its write's `ttlMs`) and the manager's local `ttlMs`; `Infinity` when neither applies.
   */
  readonly expiresAt: number;
}

/**
 * Your own `LRUCache` as the cache's storage, seen through the calls the manager makes: an
 * `LRUCache` of any version (10 and 11 are tested) or copy of lru-cache, checked by duck typing
 * (`get`, `peek`, `set`, `delete`, `clear`, `has`, `keys`, `entries` and `size`).
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export interface LRUCacheLike<V = any> {
  get(key: string): V | undefined;
  peek(key: string): V | undefined;
  set(key: string, value: V): unknown;
  delete(key: string): boolean;
  clear(): void;
  has(key: string): boolean;
  keys(): IterableIterator<string>;
  entries(): IterableIterator<[string, V]>;
  readonly size: number;
}

/** Where cached entries live: a max entry count (LRU), your own `LRUCache`, or `'unbounded'` (a `Map`). */
export type CacheOption = number | 'unbounded' | LRUCacheLike;

/** Options of {@link PubSubCacheManager}. */
export interface PubSubCacheManagerOptions {
  /**
   * Cache storage: a max entry count (LRU), your own `LRUCache` instance (any version or copy of
   * lru-cache, see {@link LRUCacheLike}), or `'unbounded'`.
   * @defaultValue 10,000 entries (LRU)
   */
  cache?: CacheOption;
  /**
   * `'invalidate'`: events carry keys and stamps, peers drop their entry (default).
   * `'update'`: events carry values (up to the store's `maxPublishedValueBytes`), peers install
   * them without a round trip; switches the store's `publishValues` on.
   *
   * @defaultValue `'invalidate'`
   */
  sync?: 'invalidate' | 'update';
  /**
   * Local time-to-live of an entry in ms, a safety net; 0 = none.
   *
   * @defaultValue `0` (none)
   */
  ttlMs?: number;
  /**
   * Cache misses (a later write anywhere invalidates them through its event).
   *
   * @defaultValue `true`
   */
  cacheMisses?: boolean;
  /**
   * After a gap: `'revalidate'` cached stamps in pipelined batches and drop what changed (default), or `'clear'`.
   *
   * @defaultValue `'revalidate'`
   */
  onReconnect?: 'revalidate' | 'clear';
  /**
   * Keep serving cached entries while the subscription is down (they may be stale). Default false:
   * reads go to Redis until the link is back and the cache is resynced.
   *
   * @defaultValue `false`
   */
  serveStaleWhileDisconnected?: boolean;
  /**
   * Heartbeat period on the subscriber connection, in ms.
   *
   * @defaultValue `1000`
   */
  heartbeatIntervalMs?: number;
  /**
   * A heartbeat unanswered this long means a silent partition, in ms.
   *
   * @defaultValue 2 × `heartbeatIntervalMs`
   */
  heartbeatTimeoutMs?: number;
  /**
   * Largest message decoded, in bytes; larger ones are counted as malformed.
   *
   * @defaultValue `8388608` (8 MiB)
   */
  maxMessageBytes?: number;
  /**
   * Clock in ms for `ttlMs` and expiry times; injectable for tests. Default: the store's `clock`.
   *
   * @defaultValue the store's `clock`
   */
  clock?: () => number;
  /**
   * Least time between two resyncs caused by sequence gaps, in ms. Gaps noticed meanwhile are
   * coalesced into one resync when the interval ends; until then the cache is not served (unless
   * `serveStaleWhileDisconnected`), so no entry a lost message may have changed is served. A flood
   * of gaps (lost messages, or forged ones on an unsigned deployment) costs at most one stamp read
   * per interval. Resyncs after a reconnect, a heartbeat timeout or a failover are not limited.
   *
   * @defaultValue `1000`
   */
  gapResyncIntervalMs?: number;
}

/** Option names of {@link PubSubCacheManager}, for validation. */
export const CACHE_MANAGER_OPTION_KEYS = [
  'cache',
  'sync',
  'ttlMs',
  'cacheMisses',
  'onReconnect',
  'serveStaleWhileDisconnected',
  'heartbeatIntervalMs',
  'heartbeatTimeoutMs',
  'maxMessageBytes',
  'clock',
  'gapResyncIntervalMs',
] as const;

/** Counters of {@link PubSubCacheManager.stats}. */
export interface CacheStats {
  /** Reads served from the cache. */
  hits: number;
  /** Reads that went to Redis. */
  misses: number;
  /** hits / (hits + misses), 0 when there was no read. */
  hitRatio: number;
  /** Entries received in valid messages from other instances. */
  eventsReceived: number;
  /** Entries that changed the cache. */
  eventsApplied: number;
  /** Entries that changed nothing (not cached, or not newer than the cached entry). */
  eventsIgnored: number;
  /** Malformed messages (and undecodable values in messages). */
  malformed: number;
  /** Resynchronisations after a gap. */
  resyncs: number;
  /**
   * Entries the LRU dropped to stay within its `max` (not counted for your own `LRUCache` given
   * as `cache`: count them with its `dispose` option).
   */
  evictions: number;
  /** Messages refused because their signature did not verify (or was missing); also counted in `malformed`. */
  unverified: number;
  /** Sequence gaps that did not start a resync at once (`gapResyncIntervalMs`): each was coalesced into a later one. */
  gapResyncsDeferred: number;
  /** Entries cached now. */
  size: number;
  /** Writer origins (per slot group) whose message sequence numbers are tracked now; bounded, idle ones age out. */
  trackedOrigins: number;
  /** `getOrSet`: loader calls made by this instance (first loads and refreshes). */
  loads: number;
  /** `getOrSet`: loader calls that failed (threw, rejected). */
  loadErrors: number;
  /** `getOrSet`: stale values served (stale-while-revalidate, grace, timeout). */
  staleServed: number;
  /** `getOrSet`: background refreshes started by stale-while-revalidate. */
  refreshes: number;
  /** `getOrSet`: times this instance waited for another instance's load lock. */
  lockWaits: number;
}

/** Options of {@link PubSubCacheManager.getOrSet}. */
export interface GetOrSetOptions {
  /**
   * Time to live of the loaded value, in ms (stored in Redis, see `set`'s `ttlMs`); 0 = none.
   *
   * @defaultValue the store's `defaultTtlMs`
   */
  ttlMs?: number;
  /**
   * For this long after the value's expiry, `getOrSet` answers at once with the previous value
   * while one background refresh (one in the whole fleet) replaces it. A failed refresh is reported
   * (`loadError` event, `loadErrors`) and tried again by the next call.
   *
   * @defaultValue 0 (off)
   */
  staleWhileRevalidateMs?: number;
  /**
   * Fail-safe: when Redis or the loader fails (or `timeoutMs` passes), serve the last known value
   * for up to this long after its expiry, never longer (`stale` event, `staleServed`).
   *
   * @defaultValue 0 (off)
   */
  graceMs?: number;
  /**
   * Longest wait for a load, in ms. Past it, `getOrSet` answers with a stale value when one is
   * available (within `graceMs` or `staleWhileRevalidateMs` of its expiry) and lets the load finish
   * in the background; without one it rejects with `E_TIMEOUT`.
   *
   * @defaultValue none
   */
  timeoutMs?: number;
  /**
   * Lifetime of the load lock in Redis, in ms: if the loading instance dies, others take over after
   * this. A load that takes longer may run twice in the fleet.
   *
   * @defaultValue 10,000
   */
  lockTtlMs?: number;
}

/** Why `getOrSet` served a stale value. */
export type StaleReason = 'revalidate' | 'grace' | 'timeout';

/** Details of a resync. */
export interface ResyncInfo {
  readonly reason: ResyncReason;
  readonly mode: 'revalidate' | 'clear';
  /** Entries dropped because Redis holds another version (all of them for `'clear'`). */
  readonly dropped: number;
  /** Entries kept because Redis holds the same version. */
  readonly kept: number;
  /** How long the resync took, in ms (reading the stamps back included). */
  readonly durationMs: number;
}

/** Events of a cache manager. */
export interface CacheManagerEvents<V> {
  /** A remote change dropped a cached entry. */
  invalidate: [key: string, stamp: Stamp];
  /** A remote change installed a value (`sync: 'update'`). */
  update: [key: string, value: V, stamp: Stamp];
  /** The cache was resynchronised after a gap. */
  resync: [info: ResyncInfo];
  /** The subscription went down; cached entries are not served until the next resync. */
  down: [reason: ResyncReason];
  /** A malformed message was received and ignored. */
  malformed: [error: MalformedMessageError, channel: string];
  /** A background error (connection, resync, automatic flush); emitted only when someone listens. */
  error: [error: Error];
  /** Write-back only: a local change was discarded, kept or merged by the conflict policy. */
  conflict: [conflict: Conflict<V>];
  /** Write-back only: a flush finished without failures. */
  flush: [report: FlushReport<V>];
  /**
   * A condition that threatens a guarantee without being an error, e.g. `E_EVICTION_POLICY`: a
   * write-back manager on a server whose `maxmemory-policy` may evict the library's keys.
   */
  warning: [warning: DictWarning];
  /** `getOrSet` served a stale value: during a refresh (`'revalidate'`), after a failure (`'grace'`), or a slow load (`'timeout'`). */
  stale: [key: string, reason: StaleReason, error?: Error];
  /** `getOrSet`: a loader failed (also a background refresh, which is tried again by the next call). */
  loadError: [key: string, error: Error];
}

/** Options of {@link PubSubCacheManager.ready}. */
export interface ReadyOptions extends WaitOptions {
  /**
   * Reject with `E_TIMEOUT` after this many ms (the subscription keeps trying in the background);
   * 0 = no time limit. The default leaves room for sharded pub/sub, whose subscription (16,384
   * channels, one SSUBSCRIBE per slot) took up to 20-30 s on a loaded 2-core host with ioredis 6.
   * @defaultValue 60000
   */
  timeoutMs?: number;
  /**
   * Reject with `E_ABORTED` when this signal is aborted.
   *
   * @defaultValue none
   */
  signal?: AbortSignal;
}

/** Default bound of {@link PubSubCacheManager.ready}, in ms. */
export const DEFAULT_READY_TIMEOUT_MS = 60_000;

/** One side of a conflict. */
export interface ConflictSide<V> {
  /** The value (`undefined` when deleted, or when a remote value was not carried by its message). */
  readonly value: V | undefined;
  /** True when this side is a delete. */
  readonly deleted: boolean;
  /** Stamp of the write. */
  readonly stamp: Stamp;
}

/** Name of a policy, as reported. */
export type ConflictPolicyName = 'last-writer-wins' | 'discard-on-remote-update' | 'custom';

/** A reported conflict. */
export interface Conflict<V> {
  /** The key. */
  readonly key: string;
  /** Policy that decided it. */
  readonly policy: ConflictPolicyName;
  /** The local change at the time of the conflict. */
  readonly local: ConflictSide<V>;
  /** The remote write. */
  readonly remote: ConflictSide<V> & { /** False when the remote value was not known (message without value). */ readonly known: boolean };
  /** `'remote'`: the local change was discarded; `'local'`: kept; `'merged'`: replaced by the resolver's value. */
  readonly outcome: 'local' | 'remote' | 'merged';
  /** Stamp of the kept or merged change (written by the next flush), for `'local'` and `'merged'`. */
  readonly stamp: Stamp | undefined;
  /** How the conflict was found. */
  readonly detectedBy: 'message' | 'flush';
}

/** What a flush did. */
export interface FlushReport<V> {
  /** Keys written to Redis. */
  readonly written: string[];
  /** Conflicts decided during this flush, and those detected by messages since the previous flush. */
  readonly conflicts: Conflict<V>[];
  /** Keys that could not be written (they stay dirty and are retried). */
  readonly failed: { key: string; error: Error }[];
  /** How long the flush took, in ms (waiting for a flush already running not included). */
  readonly durationMs: number;
}
