/**
 * PubSubCacheManager: a write-through near cache over a {@link PubSubRedisDict}, kept coherent by
 * the store's events.
 *
 * Coherence rules (see `docs/consistency.md`):
 * - every cached entry carries the stamp of the write it shows; an event applies only when its
 *   stamp is newer (I4), so duplicated and reordered messages change nothing;
 * - a read from Redis is cached only if no event newer than what it read arrived while it was in
 *   flight, and only if no gap happened meanwhile (I5);
 * - nothing is served from the cache until the subscription is live, nor while the link is down,
 *   nor during a resync after a gap (I8).
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { LRUCache } from 'lru-cache';
import { bounded, type WaitOptions, waitOptions } from './deadline.js';
import { ClosedError, type DictWarning, InvalidArgumentError, LoaderError, TimeoutError, asError } from './errors.js';
import { type DictKey, normalizeKey, normalizeKeys } from './keys.js';
import { MalformedMessageError, type Message, type MessageEntry } from './messages.js';
import { booleanOption, checkOptions, describe, enumOption, functionOption, integerOption, invalidOption } from './options.js';
import { PubSubRedisDict } from './pubsub-redis-dict.js';
import { collectEntries, type SetOptions, type WriteOutcome } from './redis-dict.js';
import type { VersionedValue } from './record.js';
import { type Stamp } from './stamp.js';
import { type ResyncReason, Subscriber } from './subscriber.js';
import type { Conflict } from './write-back/conflict.js';
import type { FlushReport } from './write-back/manager.js';

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
   */
  sync?: 'invalidate' | 'update';
  /** Local time-to-live of an entry in ms, a safety net; 0 = none. Default 0. */
  ttlMs?: number;
  /** Cache misses (a later write anywhere invalidates them through its event). Default true. */
  cacheMisses?: boolean;
  /** After a gap: `'revalidate'` cached stamps in pipelined batches and drop what changed (default), or `'clear'`. */
  onReconnect?: 'revalidate' | 'clear';
  /**
   * Keep serving cached entries while the subscription is down (they may be stale). Default false:
   * reads go to Redis until the link is back and the cache is resynced.
   */
  serveStaleWhileDisconnected?: boolean;
  /** Heartbeat period on the subscriber connection, in ms. Default 1000. */
  heartbeatIntervalMs?: number;
  /** A heartbeat unanswered this long means a silent partition, in ms. Default 2 × `heartbeatIntervalMs`. */
  heartbeatTimeoutMs?: number;
  /** Largest message decoded, in bytes; larger ones are counted as malformed. Default 8 MiB. */
  maxMessageBytes?: number;
  /** Clock in ms for `ttlMs` and expiry times; injectable for tests. Default: the store's `clock`. */
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

/** Option names of {@link GetOrSetOptions}, for validation. */
const GET_OR_SET_OPTION_KEYS = ['ttlMs', 'staleWhileRevalidateMs', 'graceMs', 'timeoutMs', 'lockTtlMs'] as const;

/** Why `getOrSet` served a stale value. */
export type StaleReason = 'revalidate' | 'grace' | 'timeout';

/** Validated {@link GetOrSetOptions}. */
interface LoadOptions {
  readonly expiresAt: number | undefined;
  readonly ttlMs: number;
  readonly swr: number;
  readonly grace: number;
  readonly timeoutMs: number;
  readonly lockTtlMs: number;
}

/** How often a caller waiting for another instance's lock looks again (a message wakes it sooner), in ms. */
const LOCK_POLL_MS = 50;

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
   * 0 = no time limit. The default leaves room for sharded pub/sub, whose subscription (2 x 16,384
   * channels, one SSUBSCRIBE per slot) took up to 20-30 s on a loaded 2-core host with ioredis 6.
   * @defaultValue 60000
   */
  timeoutMs?: number;
  /** Reject with `E_ABORTED` when this signal is aborted. */
  signal?: AbortSignal;
}

/** Default bound of {@link PubSubCacheManager.ready}, in ms. */
export const DEFAULT_READY_TIMEOUT_MS = 60_000;

interface PendingRead<V> {
  promise: Promise<VersionedValue<V> | undefined>;
  /** Newest stamp of an event or local write for this key seen while the read was in flight. */
  newest: Stamp | '';
  readonly generation: number;
}

/** Storage behind the cache: `Map` or `LRUCache`, both seen through the calls used here. */
interface Storage<V> {
  get(key: string): CacheEntry<V> | undefined;
  peek(key: string): CacheEntry<V> | undefined;
  set(key: string, entry: CacheEntry<V>): void;
  delete(key: string): boolean;
  clear(): void;
  has(key: string): boolean;
  keys(): IterableIterator<string>;
  entries(): IterableIterator<[string, CacheEntry<V>]>;
  readonly size: number;
}

function mapStorage<V>(): Storage<V> {
  const map = new Map<string, CacheEntry<V>>();
  return Object.assign(map, { peek: (key: string) => map.get(key) }) as unknown as Storage<V>;
}

/**
 * A read-only view of what a cache manager holds. For a `WriteBackCacheManager` it holds the
 * clean entries (what was last read from or written to Redis): a local change not flushed yet is
 * not in it, though reads see it (`dirtyKeys()` lists those keys), and the key's clean entry, if
 * any, stays until the flush replaces it.
 */
export class CacheView<V> {
  /** @internal */
  constructor(private readonly storage: Storage<V>) {}

  /** Number of cached entries (cached misses included). */
  get size(): number {
    return this.storage.size;
  }

  /** True when `key` has a cached entry (a value or a cached miss). */
  has(key: DictKey): boolean {
    return this.storage.has(normalizeKey(key));
  }

  /** The cached entry of `key` without touching its LRU position. */
  peek(key: DictKey): CacheEntry<V> | undefined {
    return this.storage.peek(normalizeKey(key));
  }

  /** Cached keys (cached misses included). */
  keys(): IterableIterator<string> {
    return this.storage.keys();
  }

  /** Cached `[key, value]` pairs (values only, no cached misses). */
  *entries(): IterableIterator<[string, V]> {
    for (const [key, entry] of this.storage.entries()) if (entry.present) yield [key, entry.value as V];
  }

  /** Cached values. */
  *values(): IterableIterator<V> {
    for (const [, value] of this.entries()) yield value;
  }
}

/**
 * A write-through near cache: reads are served from local memory, misses go to Redis (concurrent
 * misses of one key share one read), writes go through the store and then update the local entry,
 * and the store's events keep every instance coherent.
 *
 * @typeParam V - type of the values.
 */
export class PubSubCacheManager<V = unknown> extends EventEmitter<CacheManagerEvents<V>> implements AsyncIterable<[string, V]> {
  /** The store this cache reads through and writes to. */
  readonly store: PubSubRedisDict<V>;
  /** What is cached (read-only view). */
  readonly cache: CacheView<V>;
  /** Sync mode. */
  readonly sync: 'invalidate' | 'update';

  /** @internal */ protected readonly storage: Storage<V>;
  /** @internal */ protected readonly subscriber: Subscriber;
  /** @internal */ protected closed = false;
  /** @internal */ protected readonly now: () => number;
  private readonly ttlMs: number;
  private readonly cacheMisses: boolean;
  private readonly onReconnect: 'revalidate' | 'clear';
  private readonly serveStale: boolean;
  private readonly reads = new Map<string, PendingRead<V>>();
  /** Per key with write-through writes in flight: how many, and the newest stamp noted meanwhile. */
  private readonly writing = new Map<string, { pending: number; newest: Stamp | '' }>();
  /** Bumped by every gap and resync; reads started before a bump are not cached. */
  private generation = 0;
  /**
   * Bumped by every change of the link (down, up, gap): a resync that saw one meanwhile leaves
   * serving to the resync that change causes. Not bumped by `clear()`, which bumps
   * {@link PubSubCacheManager.generation} only: a resync it overlaps still completes.
   */
  private linkEpoch = 0;
  /** True when cached entries may be served. */
  private serving = false;
  private resyncing = false;
  private resyncAgain: ResyncReason | undefined;
  private readonly counters = {
    hits: 0,
    misses: 0,
    eventsReceived: 0,
    eventsApplied: 0,
    eventsIgnored: 0,
    malformed: 0,
    resyncs: 0,
    evictions: 0,
    unverified: 0,
    gapResyncsDeferred: 0,
    loads: 0,
    loadErrors: 0,
    staleServed: 0,
    refreshes: 0,
    lockWaits: 0,
  };
  private readonly gapResyncIntervalMs: number;
  /** When the last resync for a sequence gap started (performance.now()), -Infinity before. */
  private lastGapResyncAt = -Infinity;
  /** The deferred resync of gaps noticed during the quiet interval. */
  private gapTimer: NodeJS.Timeout | undefined;
  /** `getOrSet` loads in flight, one per key; `fail` rejects its callers when the manager closes. */
  private readonly flights = new Map<string, { promise: Promise<V>; fail: (error: Error) => void }>();
  /** Callers waiting for a write of a key (another instance's load). */
  private readonly writeWaiters = new Map<string, Set<() => void>>();
  /** How long an expired entry is kept for `getOrSet`'s stale-while-revalidate and grace, in ms. */
  private retainMs = 0;

  /**
   * @param store - a {@link PubSubRedisDict}; one cache manager per store.
   * @param options - see {@link PubSubCacheManagerOptions}.
   */
  constructor(store: PubSubRedisDict<V>, options?: PubSubCacheManagerOptions) {
    super();
    const where = new.target.name;
    if (!(store instanceof PubSubRedisDict)) invalidOption(where, 'store', 'a PubSubRedisDict', store);
    const opts = checkOptions(where, options, this.optionKeys());
    this.store = store;
    this.storage = makeStorage<V>(where, opts['cache'], () => this.counters.evictions++);
    this.cache = new CacheView(this.storage);
    this.sync = enumOption(where, 'sync', opts['sync'], ['invalidate', 'update'] as const, 'invalidate');
    this.ttlMs = integerOption(where, 'ttlMs', opts['ttlMs'], 0, 0);
    this.cacheMisses = booleanOption(where, 'cacheMisses', opts['cacheMisses'], true);
    this.onReconnect = enumOption(where, 'onReconnect', opts['onReconnect'], ['revalidate', 'clear'] as const, 'revalidate');
    this.serveStale = booleanOption(where, 'serveStaleWhileDisconnected', opts['serveStaleWhileDisconnected'], false);
    const heartbeatIntervalMs = integerOption(where, 'heartbeatIntervalMs', opts['heartbeatIntervalMs'], 1000, 10);
    const heartbeatTimeoutMs = integerOption(where, 'heartbeatTimeoutMs', opts['heartbeatTimeoutMs'], 2 * heartbeatIntervalMs, 10);
    // A timeout within one period would declare every answered heartbeat late.
    if (heartbeatTimeoutMs <= heartbeatIntervalMs) {
      invalidOption(where, 'heartbeatTimeoutMs', `greater than \`heartbeatIntervalMs\` (${heartbeatIntervalMs})`, heartbeatTimeoutMs);
    }
    const maxMessageBytes = integerOption(where, 'maxMessageBytes', opts['maxMessageBytes'], 8 << 20);
    this.now = functionOption(where, 'clock', opts['clock'], store.wallClock);
    this.gapResyncIntervalMs = integerOption(where, 'gapResyncIntervalMs', opts['gapResyncIntervalMs'], 1000, 0);
    store.claim(this);
    if (this.sync === 'update') store.setPublishValues(true);
    this.subscriber = new Subscriber(
      store.redis,
      {
        origin: store.clock.nodeId,
        channels: (slot) => store.channels(slot),
        commandKeyPrefix: store.commandKeyPrefix,
        signer: store.signer,
        sharded: store.shardedPubSub,
        heartbeatIntervalMs,
        heartbeatTimeoutMs,
        maxMessageBytes,
        maxValueBytes: store.maxValueBytes,
        maxEntries: Math.max(store.batchSize, 1000),
      },
      {
        onMessage: (message, channel) => this.onMessage(message, channel),
        onMalformed: (error, channel, unverified) => {
          this.counters.malformed++;
          if (unverified) this.counters.unverified++;
          this.emit('malformed', error, channel);
        },
        onDown: (reason) => this.onDown(reason),
        onUp: (reason) => this.onUp(reason),
        onError: (error) => this.reportError(error),
      },
    );
    this.subscriber.start();
  }

  /** Option names this class accepts; subclasses extend the list. */
  protected optionKeys(): readonly string[] {
    return CACHE_MANAGER_OPTION_KEYS;
  }

  /**
   * Resolves once the subscription is live; nothing is cached before that. Rejects with a
   * `ConnectionError` (`E_CONNECTION`, the underlying error as `cause`) when the failure is one
   * retrying will not fix: wrong credentials, or a server TLS certificate that does not verify; with
   * a `PermissionError` (`E_NOPERM`) when the ACL refuses the subscription (the user lacks the
   * channel pattern). The manager keeps retrying in the background and works uncached meanwhile.
   * Rejects with `E_TIMEOUT` after `timeoutMs` (default 60 s; an unreachable Redis, say), with
   * `E_ABORTED` when `signal` fires, and with `E_CLOSED` once the manager is closed (also when it is
   * closed while waiting).
   *
   * @param options - see {@link ReadyOptions}.
   */
  ready(options?: ReadyOptions): Promise<void> {
    const where = `${this.constructor.name}.ready()`;
    let timeoutMs: number;
    let signal: AbortSignal | undefined;
    try {
      ({ timeoutMs, signal } = waitOptions(where, options, DEFAULT_READY_TIMEOUT_MS));
    } catch (error) {
      return Promise.reject(error as Error);
    }
    if (this.closed) return Promise.reject(new ClosedError(this.constructor.name));
    return bounded(this.whenReady(), where, timeoutMs, signal);
  }

  /** What {@link ready} waits for: the subscription (subclasses add their own checks). */
  protected async whenReady(): Promise<void> {
    await this.subscriber.whenLive();
    // close() settles the subscriber's waiters: a closed manager is not ready.
    if (this.closed) throw new ClosedError(this.constructor.name);
  }

  /** True while cached entries are served (subscribed, heartbeat answering, not resyncing). */
  get isServing(): boolean {
    return this.serving && !this.closed;
  }

  // ---------------------------------------------------------------- reads

  /**
   * The value of `key`: from the cache on a hit, else from Redis (and cached).
   *
   * A hit allocates nothing: it returns the entry's value as an already settled promise, made on
   * the entry's first hit and reused by the next ones (entries are never changed, only replaced).
   */
  get(key: DictKey): Promise<V | undefined> {
    // Hot path: a string key is looked up as is (only validated keys were ever cached); the full
    // validation runs on a miss, before anything reaches Redis.
    if (typeof key === 'string' && !this.closed) {
      const entry = this.lookup(key) as Settled<V> | undefined;
      if (entry !== undefined) {
        this.counters.hits++;
        if (!entry.present) return UNDEFINED;
        return (entry[SETTLED] ??= Promise.resolve(entry.value));
      }
    }
    return this.getSlow(key);
  }

  private async getSlow(key: DictKey): Promise<V | undefined> {
    if (this.closed) throw new ClosedError(this.constructor.name);
    const k = normalizeKey(key);
    const entry = this.lookup(k);
    if (entry !== undefined) {
      this.counters.hits++;
      return entry.value;
    }
    this.counters.misses++;
    return (await this.load(k))?.value;
  }

  /** True when `key` has a value (a cached miss never answers true). */
  async has(key: DictKey): Promise<boolean> {
    const k = normalizeKey(key);
    if (this.closed) throw new ClosedError(this.constructor.name);
    const entry = this.lookup(k);
    if (entry !== undefined) {
      this.counters.hits++;
      return entry.present;
    }
    this.counters.misses++;
    return (await this.load(k)) !== undefined;
  }

  /** Values of `keys`, aligned with them; the misses are read in one round trip per node. */
  async getMany(keys: Iterable<DictKey>): Promise<(V | undefined)[]> {
    const ks = normalizeKeys(keys);
    if (this.closed) throw new ClosedError(this.constructor.name);
    const out: (V | undefined)[] = new Array(ks.length);
    // Each missed key once (a Set: the batch costs O(n), not one scan of the misses per key),
    // either joining a read already in flight or in this call's own read.
    const missing = new Set<string>();
    const joined = new Map<string, Promise<VersionedValue<V> | undefined>>();
    let missed = false;
    for (let i = 0; i < ks.length; i++) {
      const k = ks[i]!;
      const entry = this.lookup(k);
      if (entry !== undefined) {
        this.counters.hits++;
        out[i] = entry.value;
        continue;
      }
      this.counters.misses++;
      missed = true;
      if (missing.has(k) || joined.has(k)) continue;
      const pending = this.reads.get(k);
      if (pending) joined.set(k, pending.promise);
      else missing.add(k);
    }
    if (!missed) return out;
    const resolved = new Map<string, VersionedValue<V> | undefined>();
    const waits: Promise<unknown>[] = [];
    if (missing.size > 0) {
      const list = [...missing];
      const batch = this.store.readVersioned(list);
      // One promise for the whole batch (not one per key): each key's read is tracked for I5, and
      // the results are collected once the batch is in.
      const tracked = list.map((k, j) => this.track(k, batch.then((found) => found[j])));
      waits.push(
        Promise.all(tracked).then((found) => {
          for (let j = 0; j < list.length; j++) resolved.set(list[j]!, found[j]);
        }),
      );
    }
    for (const [k, p] of joined) waits.push(p.then((found) => resolved.set(k, found)));
    await Promise.all(waits);
    for (let i = 0; i < ks.length; i++) {
      if (out[i] === undefined) {
        const found = resolved.get(ks[i]!);
        if (found !== undefined) out[i] = found.value;
      }
    }
    return out;
  }

  /** Hook: the entry to serve for `k`, or undefined for a miss. */
  protected lookup(k: string): CacheEntry<V> | undefined {
    if (!this.serving) return undefined;
    const entry = this.storage.get(k);
    if (entry === undefined) return undefined;
    if (entry.expiresAt !== Infinity) {
      const now = this.now();
      if (entry.expiresAt <= now) {
        // Kept a while for getOrSet's stale-while-revalidate and grace, never served by get().
        if (now >= entry.expiresAt + this.retainMs) this.storage.delete(k);
        return undefined;
      }
    }
    return entry;
  }

  /** Reads `k` from Redis, sharing the read with concurrent callers, and caches the result when allowed. */
  protected load(k: string): Promise<VersionedValue<V> | undefined> {
    const pending = this.reads.get(k);
    if (pending) return pending.promise;
    return this.track(
      k,
      this.store.readVersioned([k]).then((found) => found[0]),
    );
  }

  private track(k: string, read: Promise<VersionedValue<V> | undefined>): Promise<VersionedValue<V> | undefined> {
    // A write of this key still in flight may reach Redis after this read (a NOSCRIPT retry, a
    // redirection): the read must not cache anything older than it.
    const pending: PendingRead<V> = { promise: read, newest: this.writing.get(k)?.newest ?? '', generation: this.generation };
    pending.promise = read.then(
      (found) => {
        if (this.reads.get(k) === pending) this.reads.delete(k);
        const stamp = found?.stamp ?? '';
        // I5: an event or write newer than what was read arrived meanwhile: do not cache the read.
        // A record stamped too far ahead is served but not cached: its stamp would hide later writes.
        const cacheable = found === undefined ? this.cacheMisses : !this.store.clock.isTooFarAhead(stamp);
        if (pending.generation === this.generation && pending.newest <= stamp && cacheable) {
          this.install(k, found === undefined ? missEntry : { value: found.value, stamp, present: true, expiresAt: found.expiresAt ?? Infinity });
        }
        return found;
      },
      (error: unknown) => {
        if (this.reads.get(k) === pending) this.reads.delete(k);
        throw error;
      },
    );
    this.reads.set(k, pending);
    return pending.promise;
  }

  /**
   * Installs an entry if it is newer than the cached one. While the cache is not serving (down or
   * resyncing) nothing is installed and the key's cached entry is dropped instead (see
   * {@link replace}).
   */
  protected install(k: string, entry: CacheEntry<V>): boolean {
    if (this.serving) {
      const current = this.storage.peek(k);
      if (current !== undefined && current.stamp >= entry.stamp) return false;
    }
    return this.replace(k, entry);
  }

  /**
   * Caches `entry` for `k` without comparing it with the cached entry, for a caller that knows it
   * is the newest; true when cached. While the cache is not serving the key's entry is dropped
   * instead: the caller knows of a state at least as new, and a resync in flight may already have
   * checked that entry against a stamp read before it.
   */
  protected replace(k: string, entry: CacheEntry<V>): boolean {
    if (this.closed) return false;
    if (!this.serving) {
      this.storage.delete(k);
      return false;
    }
    this.storage.set(k, this.ttlMs > 0 ? { ...entry, expiresAt: Math.min(entry.expiresAt, this.now() + this.ttlMs) } : entry);
    return true;
  }

  /** Records that a write with `stamp` happened to `k`, so that a read in flight does not cache an older value. */
  protected noteWrite(k: string, stamp: Stamp): void {
    const waiters = this.writeWaiters.get(k);
    if (waiters !== undefined) {
      this.writeWaiters.delete(k);
      for (const wake of waiters) wake();
    }
    const pending = this.reads.get(k);
    if (pending !== undefined && pending.newest < stamp) pending.newest = stamp;
    const writing = this.writing.get(k);
    if (writing !== undefined && writing.newest < stamp) writing.newest = stamp;
  }

  // ---------------------------------------------------------------- cache-aside

  /**
   * Cache-aside read: the value of `key` when it has one (a cache hit costs about a `get` hit);
   * else `loader()` is called and its result stored (with `ttlMs`) and returned.
   *
   * One load per key at a time in the process (concurrent callers share it) and in the fleet: the
   * loading instance holds a short lock in Redis, in the key's hash slot; other instances wait for
   * its write (its message, or the lock going away) and read the value. See {@link GetOrSetOptions}
   * for stale-while-revalidate, grace and timeouts, and `docs/consistency.md`.
   *
   * On a {@link WriteBackCacheManager} the loaded value is written at once (not at the next flush),
   * so that waiting instances get it; a key with a local change is a hit.
   *
   * @throws LoaderError `E_LOADER` when the loader fails (its error is the `cause`); nothing is stored.
   * @throws TimeoutError `E_TIMEOUT` after `timeoutMs` when no stale value can be served.
   * @throws InvalidArgumentError `E_INVALID_KEY`, `E_INVALID_OPTION` or `E_INVALID_ARGUMENT` (loader not a function).
   */
  getOrSet(key: DictKey, loader: () => V | Promise<V>, options?: GetOrSetOptions): Promise<V> {
    // Hot path, as in get(): a string key is looked up as is (only validated keys were ever
    // cached), and valid options are checked without allocating; anything else takes the full path.
    if (typeof key === 'string' && !this.closed && typeof loader === 'function' && validLoadOptions(options)) {
      // An expired entry must still be there for this call's stale-while-revalidate and grace.
      if (options !== undefined) {
        const keep = Math.max(options.staleWhileRevalidateMs ?? 0, options.graceMs ?? 0);
        if (keep > this.retainMs) this.retainMs = keep;
      }
      const entry = this.lookup(key) as Settled<V> | undefined;
      if (entry !== undefined && entry.present) {
        this.counters.hits++;
        return (entry[SETTLED] ??= Promise.resolve(entry.value)) as Promise<V>;
      }
    }
    return this.getOrSetSlow(key, loader, options);
  }

  private getOrSetSlow(key: DictKey, loader: () => V | Promise<V>, options?: GetOrSetOptions): Promise<V> {
    let k: string;
    let opts: LoadOptions;
    try {
      if (this.closed) throw new ClosedError(this.constructor.name);
      k = normalizeKey(key);
      if (typeof loader !== 'function') throw new InvalidArgumentError('E_INVALID_ARGUMENT', `getOrSet: expected \`loader\` to be a function, got ${describe(loader)}`);
      opts = options === undefined ? this.defaultLoadOptions() : this.loadOptions(options);
    } catch (error) {
      return Promise.reject(error as Error);
    }
    const entry = this.lookup(k) as Settled<V> | undefined;
    if (entry !== undefined && entry.present) {
      this.counters.hits++;
      return (entry[SETTLED] ??= Promise.resolve(entry.value)) as Promise<V>;
    }
    this.counters.misses++;
    return this.getOrLoad(k, loader, opts);
  }

  private defaultLoadOptions(): LoadOptions {
    const ttlMs = this.store.defaultTtlMs;
    return { expiresAt: undefined, ttlMs, swr: 0, grace: 0, timeoutMs: 0, lockTtlMs: 10_000 };
  }

  private loadOptions(options: GetOrSetOptions): LoadOptions {
    const where = 'getOrSet';
    const o = checkOptions(where, options, GET_OR_SET_OPTION_KEYS);
    const ttlMs = integerOption(where, 'ttlMs', o['ttlMs'], this.store.defaultTtlMs, 0);
    // Validated as set() would (range of the expiry time); the time itself is fixed at the write.
    this.store.expiryOf(where, { ttlMs });
    const swr = integerOption(where, 'staleWhileRevalidateMs', o['staleWhileRevalidateMs'], 0, 0);
    const grace = integerOption(where, 'graceMs', o['graceMs'], 0, 0);
    const timeoutMs = integerOption(where, 'timeoutMs', o['timeoutMs'], 0, 1);
    const lockTtlMs = integerOption(where, 'lockTtlMs', o['lockTtlMs'], 10_000, 1);
    const keep = Math.max(swr, grace);
    if (keep > this.retainMs) this.retainMs = keep;
    return { expiresAt: undefined, ttlMs, swr, grace, timeoutMs, lockTtlMs };
  }

  /** The last known value of `k` if it is within `windowMs` of its expiry (expired or not). */
  private staleEntry(k: string, windowMs: number): CacheEntry<V> | undefined {
    if (windowMs <= 0) return undefined;
    const entry = this.storage.peek(k);
    if (entry === undefined || !entry.present) return undefined;
    return this.now() < entry.expiresAt + windowMs ? entry : undefined;
  }

  private serveStaleValue(k: string, entry: CacheEntry<V>, reason: StaleReason, error?: Error): V {
    this.counters.staleServed++;
    this.emit('stale', k, reason, error);
    return entry.value as V;
  }

  private async getOrLoad(k: string, loader: () => V | Promise<V>, opts: LoadOptions): Promise<V> {
    // Stale-while-revalidate: the previous value at once, one refresh in the background.
    if (opts.swr > 0 && this.serving) {
      const stale = this.staleEntry(k, opts.swr);
      if (stale !== undefined && stale.expiresAt <= this.now()) {
        if (!this.flights.has(k)) {
          this.counters.refreshes++;
          this.flight(k, loader, opts).promise.catch(() => undefined);
        }
        return this.serveStaleValue(k, stale, 'revalidate');
      }
    }
    const { promise } = this.flight(k, loader, opts);
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
      const stale = this.staleEntry(k, timedOut ? Math.max(opts.grace, opts.swr) : opts.grace);
      if (stale !== undefined) return this.serveStaleValue(k, stale, timedOut ? 'timeout' : 'grace', failure);
      throw failure;
    } finally {
      clearTimeout(timer);
    }
  }

  /** The load of `k` in flight, or a new one: one per key in the process. */
  private flight(k: string, loader: () => V | Promise<V>, opts: LoadOptions): { promise: Promise<V>; fail: (error: Error) => void } {
    let flight = this.flights.get(k);
    if (flight !== undefined) return flight;
    let fail!: (error: Error) => void;
    const done = (): void => {
      if (this.flights.get(k) === flight) this.flights.delete(k);
    };
    const promise = new Promise<V>((resolve, reject) => {
      fail = reject;
      this.loadAcrossFleet(k, loader, opts).then(
        (value) => {
          done();
          resolve(value);
        },
        (error: unknown) => {
          // Gone from the map first: a call made when the error is reported starts a new load.
          done();
          if (error instanceof LoaderError) {
            this.counters.loadErrors++;
            this.emit('loadError', k, error);
          }
          reject(error as Error);
        },
      );
    });
    flight = { promise, fail };
    this.flights.set(k, flight);
    return flight;
  }

  /**
   * Reads `k` from Redis; when it has no value, takes the fleet-wide load lock and loads, or waits
   * for the instance holding it (its write wakes us; the lock expiring lets us take over).
   */
  private async loadAcrossFleet(k: string, loader: () => V | Promise<V>, opts: LoadOptions): Promise<V> {
    let waited = false;
    for (;;) {
      if (this.closed) throw new ClosedError(this.constructor.name);
      const found = await this.load(k);
      if (found !== undefined) return found.value;
      const token = randomBytes(12).toString('base64');
      if (await this.store.acquireLock(k, token, opts.lockTtlMs)) {
        try {
          // Written between our read and the lock: no load needed.
          const again = await this.load(k);
          if (again !== undefined) return again.value;
          return await this.callLoader(k, loader, opts);
        } finally {
          this.store.releaseLock(k, token).catch((error: unknown) => this.reportError(asError(error)));
        }
      }
      if (!waited) {
        waited = true;
        this.counters.lockWaits++;
      }
      await this.waitForWrite(k, LOCK_POLL_MS);
    }
  }

  private async callLoader(k: string, loader: () => V | Promise<V>, opts: LoadOptions): Promise<V> {
    this.counters.loads++;
    let value: V;
    try {
      value = await loader();
    } catch (cause) {
      throw new LoaderError(k, cause);
    }
    if (this.closed) return value;
    // The expiry time is fixed now, when the value is stored.
    const expiresAt = this.store.expiryOf('getOrSet', { ttlMs: opts.ttlMs });
    const payload = this.store.encodeValue(k, value);
    try {
      await this.writeThrough([{ key: k, stamp: this.store.clock.now(), deleted: false, value, payload, expiresAt }]);
    } catch (error) {
      // The value is returned though not stored; the next call loads again.
      this.reportError(asError(error));
    }
    return value;
  }

  /** Resolves on the next write announced for `k` (message or local write), or after `ms`. */
  private waitForWrite(k: string, ms: number): Promise<void> {
    return new Promise((resolve) => {
      let waiters = this.writeWaiters.get(k);
      if (waiters === undefined) this.writeWaiters.set(k, (waiters = new Set()));
      const wake = (): void => {
        clearTimeout(timer);
        waiters.delete(wake);
        if (waiters.size === 0 && this.writeWaiters.get(k) === waiters) this.writeWaiters.delete(k);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      timer.unref();
      waiters.add(wake);
    });
  }

  // ---------------------------------------------------------------- writes (write-through)

  /**
   * Writes `value` to Redis (published to peers), then caches it.
   *
   * @param options - `ttlMs`: the entry expires that long after now, in Redis and in every cache.
   * @throws InvalidArgumentError `E_INVALID_OPTION` for an unknown option or a bad `ttlMs`.
   */
  async set(key: DictKey, value: V, options?: SetOptions): Promise<void> {
    const k = normalizeKey(key);
    if (this.closed) throw new ClosedError(this.constructor.name);
    const expiresAt = this.store.expiryOf('set', options);
    const payload = this.store.encodeValue(k, value);
    await this.writeThrough([{ key: k, stamp: this.store.clock.now(), deleted: false, value, payload, expiresAt }]);
  }

  /** Writes every pair (with the same `ttlMs` if given) in one round trip per node, then caches them. */
  async setMany(entries: Iterable<readonly [DictKey, V]>, options?: SetOptions): Promise<void> {
    if (this.closed) throw new ClosedError(this.constructor.name);
    const expiresAt = this.store.expiryOf('setMany', options);
    const byKey = new Map<string, V>();
    for (const [k, value] of collectEntries(entries)) {
      byKey.delete(k);
      byKey.set(k, value);
    }
    const changes = [...byKey].map(([k, value]) => ({ key: k, stamp: this.store.clock.now(), deleted: false, value, payload: this.store.encodeValue(k, value), expiresAt }));
    await this.writeThrough(changes);
  }

  /** Deletes `key` in Redis (a published tombstone); true when it had a value. */
  async delete(key: DictKey): Promise<boolean> {
    return (await this.deleteMany([key])) === 1;
  }

  /** Deletes every key; returns how many had a value. */
  async deleteMany(keys: Iterable<DictKey>): Promise<number> {
    const ks = [...new Set(normalizeKeys(keys))];
    if (this.closed) throw new ClosedError(this.constructor.name);
    const outcomes = await this.writeThrough(ks.map((k) => ({ key: k, stamp: this.store.clock.now(), deleted: true })));
    return outcomes.filter((o) => o.status === 'written' && o.existed).length;
  }

  private async writeThrough(changes: { key: string; stamp: Stamp; deleted: boolean; value?: V; payload?: Uint8Array; expiresAt?: number | undefined }[]) {
    const generation = this.generation;
    const marks = changes.map((change) => {
      let mark = this.writing.get(change.key);
      if (mark === undefined) this.writing.set(change.key, (mark = { pending: 0, newest: '' }));
      mark.pending++;
      return mark;
    });
    for (const change of changes) this.noteWrite(change.key, change.stamp);
    let outcomes: WriteOutcome<V>[];
    try {
      outcomes = await this.store.writeVersioned(changes);
    } finally {
      changes.forEach((change, i) => {
        if (--marks[i]!.pending === 0 && this.writing.get(change.key) === marks[i]) this.writing.delete(change.key);
      });
    }
    // Like a read (I5): what this write knows is not cached when a newer write or event was noted
    // for the key while it was in flight, or a gap happened meanwhile.
    const stale = (i: number, stamp: Stamp): boolean => generation !== this.generation || marks[i]!.newest > stamp;
    let failure: Error | undefined;
    outcomes.forEach((outcome, i) => {
      const change = changes[i]!;
      if (outcome.status === 'written') {
        // Not cached, and whatever was cached for the key is dropped: an older entry left in place
        // (kept by a resync that compared it while this write was in flight, a failover say) would
        // stay stale, since a writer ignores its own events.
        if (stale(i, change.stamp)) {
          this.storage.delete(change.key);
          return;
        }
        if (change.deleted) this.install(change.key, { value: undefined, stamp: change.stamp, present: false, expiresAt: Infinity });
        else this.install(change.key, { value: this.store.decodeValue(change.key, change.payload!), stamp: change.stamp, present: true, expiresAt: change.expiresAt ?? Infinity });
      } else if (outcome.status === 'conflict') {
        // Redis holds a newer write: it wins (last-writer-wins); cache what Redis holds.
        const { stored } = outcome;
        if (stored.stamp !== '') {
          this.noteWrite(change.key, stored.stamp);
          if (!stale(i, stored.stamp)) this.install(change.key, { value: stored.value, stamp: stored.stamp, present: !stored.deleted, expiresAt: stored.expiresAt ?? Infinity });
          else this.storage.delete(change.key);
        } else this.storage.delete(change.key);
      } else {
        this.storage.delete(change.key);
        failure ??= outcome.error;
      }
    });
    if (failure) throw failure;
    return outcomes;
  }

  // ---------------------------------------------------------------- whole-dictionary operations

  /** Number of entries in Redis (SCAN); the cache is not involved. */
  async size(): Promise<number> {
    if (this.closed) throw new ClosedError(this.constructor.name);
    return this.store.size();
  }

  /** Deletes every entry of the namespace in Redis (published) and empties the local cache. */
  async clear(): Promise<void> {
    if (this.closed) throw new ClosedError(this.constructor.name);
    this.generation++;
    this.storage.clear();
    await this.store.clear();
    this.generation++;
    this.storage.clear();
  }

  /** Keys in Redis (SCAN). */
  async *keys(): AsyncGenerator<string, void, undefined> {
    if (this.closed) throw new ClosedError(this.constructor.name);
    yield* this.store.keys();
  }

  /** Values in Redis (SCAN). */
  async *values(): AsyncGenerator<V, void, undefined> {
    if (this.closed) throw new ClosedError(this.constructor.name);
    yield* this.store.values();
  }

  /** `[key, value]` pairs in Redis (SCAN). */
  async *entries(): AsyncGenerator<[string, V], void, undefined> {
    if (this.closed) throw new ClosedError(this.constructor.name);
    yield* this.store.entries();
  }

  /** Same as {@link PubSubCacheManager.entries}. */
  [Symbol.asyncIterator](): AsyncGenerator<[string, V], void, undefined> {
    return this.entries();
  }

  /** Counters since creation. */
  stats(): CacheStats {
    const { hits, misses } = this.counters;
    return {
      ...this.counters,
      hitRatio: hits + misses === 0 ? 0 : hits / (hits + misses),
      size: this.storage.size,
      trackedOrigins: this.subscriber.trackedOrigins,
    };
  }

  // ---------------------------------------------------------------- events and resync

  private onMessage(message: Message, channel: string): void {
    const deleted = message.type === 'd';
    if (message.partial) {
      // A signed batch that was partly refused lists all its changes, applied or not: drop those
      // keys (always safe), install nothing, decide no conflict (a write-back flush finds any in
      // Redis), and take no stamp for the clock.
      for (const entry of message.entries) {
        this.counters.eventsReceived++;
        this.noteWrite(entry.key, entry.stamp);
        if (this.storage.delete(entry.key)) {
          this.counters.eventsApplied++;
          this.emit('invalidate', entry.key, entry.stamp);
        } else this.counters.eventsIgnored++;
      }
      return;
    }
    for (const entry of message.entries) {
      if (this.store.clock.isTooFarAhead(entry.stamp)) {
        // Stamped more than maxDriftMs ahead of this clock: applying it (or following it) would pin
        // the entry. It is not applied and the clock does not follow it; but the key did change
        // (or someone says so): drop the cached entry, which is always safe, and keep a read in
        // flight from caching what it finds.
        this.counters.malformed++;
        this.emit('malformed', new MalformedMessageError(`stamp ${entry.stamp} of key is more than maxDriftMs (${this.store.clock.maxDriftMs} ms) ahead`), channel);
        this.noteWrite(entry.key, entry.stamp);
        if (this.storage.delete(entry.key)) this.emit('invalidate', entry.key, entry.stamp);
        continue;
      }
      this.counters.eventsReceived++;
      this.store.clock.observe(entry.stamp);
      this.noteWrite(entry.key, entry.stamp);
      if (this.applyRemote(entry, deleted)) this.counters.eventsApplied++;
      else this.counters.eventsIgnored++;
    }
  }

  /** Hook: applies one remote change; true when it changed the cache. */
  protected applyRemote(entry: MessageEntry, deleted: boolean): boolean {
    const current = this.storage.peek(entry.key);
    if (current === undefined) return false;
    // A cached value ignores an event no newer than itself (a late copy). A cached miss ignores
    // only the event of its own delete: its stamp (the delete's, or '' for a miss read) vouches
    // for a tombstone that may be gone — lost in a restart without persistence, or expired after
    // tombstoneTtlMs — and Redis then applies a write stamped before the delete. Dropping is
    // always safe; ignoring would serve "no value" while Redis holds one (nemesis seed 1120478144).
    if (current.present ? current.stamp >= entry.stamp : current.stamp === entry.stamp) return false;
    // A cached miss has no stamp (''), so every event looks newer than it, even a late copy of a
    // write older than the delete the miss was read after: drop the miss, never install over it.
    if (current.present && !deleted && this.sync === 'update' && entry.payload !== undefined && this.serving) {
      const value = this.decodeRemote(entry);
      if (value !== undefined) {
        this.replace(entry.key, { value: value.value, stamp: entry.stamp, present: true, expiresAt: entry.expiresAt ?? Infinity });
        this.emit('update', entry.key, value.value, entry.stamp);
        return true;
      }
    }
    this.storage.delete(entry.key);
    this.emit('invalidate', entry.key, entry.stamp);
    return true;
  }

  /** Decodes a value carried by a message; undefined (and counted as malformed) when it cannot be decoded. */
  protected decodeRemote(entry: MessageEntry): { value: V } | undefined {
    try {
      return { value: this.store.decodeValue(entry.key, entry.payload!) };
    } catch (error) {
      this.counters.malformed++;
      this.reportError(error as Error);
      return undefined;
    }
  }

  private onDown(reason: ResyncReason): void {
    this.generation++;
    this.linkEpoch++;
    if (!this.serveStale) this.serving = false;
    this.emit('down', reason);
  }

  private onUp(reason: ResyncReason | 'initial'): void {
    this.generation++;
    this.linkEpoch++;
    if (reason === 'initial') {
      this.serving = true;
      return;
    }
    if (reason === 'sequence-gap') {
      // At most one gap resync per interval: a gap noticed during the quiet interval stops serving
      // at once and gets one resync when the interval ends (one for all the gaps meanwhile).
      const wait = this.lastGapResyncAt + this.gapResyncIntervalMs - performance.now();
      if (wait > 0 || this.gapTimer !== undefined) {
        this.counters.gapResyncsDeferred++;
        if (!this.serveStale) this.serving = false;
        if (this.gapTimer === undefined && !this.closed) {
          this.gapTimer = setTimeout(() => {
            this.gapTimer = undefined;
            if (this.closed) return;
            this.generation++;
            this.linkEpoch++;
            this.lastGapResyncAt = performance.now();
            void this.resync('sequence-gap');
          }, Math.max(0, wait));
          this.gapTimer.unref();
        }
        return;
      }
      this.lastGapResyncAt = performance.now();
    }
    void this.resync(reason);
  }

  private async resync(reason: ResyncReason): Promise<void> {
    // One resync at a time: gaps reported meanwhile (a burst of topology events) make one more.
    if (this.resyncing) {
      this.resyncAgain = reason;
      if (!this.serveStale) this.serving = false;
      return;
    }
    this.resyncing = true;
    try {
      await this.resyncOnce(reason);
    } finally {
      this.resyncing = false;
    }
    const again = this.resyncAgain;
    this.resyncAgain = undefined;
    if (again !== undefined && !this.closed) await this.resync(again);
  }

  private async resyncOnce(reason: ResyncReason): Promise<void> {
    const epoch = this.linkEpoch;
    const started = performance.now();
    if (!this.serveStale) this.serving = false;
    this.counters.resyncs++;
    let dropped = 0;
    let kept = 0;
    if (this.onReconnect === 'clear') {
      dropped = this.storage.size;
      this.storage.clear();
    } else {
      const keys = [...this.storage.keys()];
      try {
        const stamps = await this.store.readStamps(keys);
        keys.forEach((k, i) => {
          const entry = this.storage.peek(k);
          if (entry === undefined) return;
          const stored = stamps[i];
          const same = entry.present ? stored === entry.stamp : stored === '';
          if (same) kept++;
          else {
            this.storage.delete(k);
            dropped++;
          }
        });
      } catch (error) {
        // Cannot compare: an empty cache is a coherent cache.
        dropped = this.storage.size;
        this.storage.clear();
        this.reportError(error as Error);
      }
    }
    this.afterResync();
    // A down, up or gap meanwhile has its own resync coming (or the link is down): leave serving
    // to it. Anything else (a clear() say, which only invalidates reads in flight) must not stop
    // this one from serving again: no other resync would.
    if (epoch !== this.linkEpoch || this.closed) return;
    if (this.subscriber.healthy) this.serving = true;
    this.emit('resync', { reason, mode: this.onReconnect, dropped, kept, durationMs: performance.now() - started });
  }

  /** Hook for subclasses, run after each resync. */
  protected afterResync(): void {}

  /** @internal */
  protected reportError(error: Error): void {
    if (this.listenerCount('error') > 0) this.emit('error', error);
  }

  // ---------------------------------------------------------------- lifecycle

  /** Unsubscribes and closes the connection the manager opened (never the caller's). Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.serving = false;
    if (this.gapTimer !== undefined) clearTimeout(this.gapTimer);
    this.gapTimer = undefined;
    for (const { fail } of this.flights.values()) fail(new ClosedError(this.constructor.name));
    this.flights.clear();
    await this.subscriber.close();
    this.store.release(this);
    this.storage.clear();
  }

  /** Same as {@link PubSubCacheManager.close}, for `await using`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** Largest `ttlMs` the hot path of `getOrSet` accepts without the full check (which also bounds the expiry time). */
const FAST_MAX_TTL_MS = 1e15;

/** Optional non-negative safe integer. */
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

/** The hit answer of a cached miss. */
const UNDEFINED: Promise<undefined> = Promise.resolve(undefined);

/** Key of a served entry's value as a settled promise (internal, not part of {@link CacheEntry}). */
const SETTLED = Symbol('settled');

/** A cached entry as the hot path sees it. */
type Settled<V> = CacheEntry<V> & { [SETTLED]?: Promise<V | undefined> };

const missEntry: CacheEntry<never> = Object.freeze({ value: undefined, stamp: '', present: false, expiresAt: Infinity });

/** The methods of a user's cache that the manager calls (see {@link LRUCacheLike}). */
const LRU_METHODS = ['get', 'peek', 'set', 'delete', 'clear', 'has', 'keys', 'entries'] as const;

/** True for an object with every method of {@link LRUCacheLike} and a numeric `size`. */
function isLRUCacheLike(option: unknown): option is LRUCacheLike {
  if (option === null || typeof option !== 'object') return false;
  const candidate = option as Record<string, unknown>;
  return LRU_METHODS.every((name) => typeof candidate[name] === 'function') && typeof candidate['size'] === 'number';
}

function makeStorage<V>(where: string, option: unknown, onEvict: () => void): Storage<V> {
  const lru = (max: number): Storage<V> =>
    new LRUCache<string, CacheEntry<V>>({
      max,
      dispose: (_entry, _key, reason) => {
        if (reason === 'evict') onEvict();
      },
    }) as unknown as Storage<V>;
  if (option === undefined) return lru(10_000);
  if (option === 'unbounded') return mapStorage<V>();
  if (typeof option === 'number') {
    if (!Number.isSafeInteger(option) || option < 1) invalidOption(where, 'cache', "a positive integer, an LRUCache or 'unbounded'", option);
    return lru(option);
  }
  // Duck typing, not instanceof: an LRUCache of another version or copy of lru-cache is welcome.
  if (isLRUCacheLike(option)) return option as unknown as Storage<V>;
  return invalidOption(where, 'cache', "a positive integer, an LRUCache or 'unbounded'", option);
}
