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
import { EventEmitter } from 'node:events';
import { bounded, waitOptions } from '../deadline.js';
import { ClosedError } from '../errors.js';
import { type DictKey, normalizeKey, normalizeKeys } from '../protocol/keys.js';
import { MalformedMessageError, type Message, type MessageEntry } from '../protocol/messages.js';
import { invalidOption } from '../options.js';
import { PubSubRedisDict } from '../store/pubsub-redis-dict.js';
import { collectEntries } from '../store/redis-dict.js';
import type { VersionedValue } from '../protocol/record.js';
import { type Stamp } from '../protocol/stamp.js';
import { type ResyncReason, Subscriber } from './subscriber.js';
import { GetOrSet } from './get-or-set.js';
import { NearCache, SETTLED, type Settled } from './near-cache.js';
import { resolveCacheManagerOptions } from './resolve-options.js';
import { CacheView, makeStorage } from './storage.js';
import {
  type CacheManagerEvents,
  type CacheStats,
  DEFAULT_READY_TIMEOUT_MS,
  type GetOrSetOptions,
  type PubSubCacheManagerOptions,
  type ReadyOptions,
} from './types.js';
import { type SetOptions, type WriteOutcome } from '../store/types.js';

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

  /**
   * The near-cache core: entries, install/replace, read tracking (I5), generations. A write-back
   * manager composes it too, attaching its dirty map as the layer of local changes.
   *
   * @internal
   */
  protected readonly core: NearCache<V>;
  private readonly subscriber: Subscriber;
  /** @internal */ protected closed = false;
  /** True once a `close()` that finishes asynchronously (a write-back's final flush) has started. @internal */
  protected closing = false;
  private readonly onReconnect: 'revalidate' | 'clear';
  private readonly serveStale: boolean;
  /**
   * Bumped by every change of the link (down, up, gap): a resync that saw one meanwhile leaves
   * serving to the resync that change causes. Not bumped by `clear()`, which bumps the core's
   * generation only: a resync it overlaps still completes.
   */
  private linkEpoch = 0;
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
  /** `getOrSet`: its hot path, loads in flight (one per key), the fleet-wide lock, stale serving. */
  private readonly loads: GetOrSet<V>;

  /**
   * @param store - a {@link PubSubRedisDict}; one cache manager per store.
   * @param options - see {@link PubSubCacheManagerOptions}.
   */
  constructor(store: PubSubRedisDict<V>, options?: PubSubCacheManagerOptions) {
    super();
    const where = new.target.name;
    if (!(store instanceof PubSubRedisDict)) invalidOption(where, 'store', 'a PubSubRedisDict', store);
    const o = resolveCacheManagerOptions(options, where);
    this.store = store;
    const storage = makeStorage<V>(o.cache, () => this.counters.evictions++);
    this.cache = new CacheView(storage);
    this.sync = o.sync;
    this.onReconnect = o.onReconnect;
    this.serveStale = o.serveStaleWhileDisconnected;
    this.core = new NearCache<V>(storage, {
      now: o.clock ?? store.wallClock,
      ttlMs: o.ttlMs,
      cacheMisses: o.cacheMisses,
      read: (keys) => store.readVersioned(keys),
      isTooFarAhead: (stamp) => store.clock.isTooFarAhead(stamp),
      onWrite: (k) => this.loads.wake(k),
    });
    this.loads = new GetOrSet<V>(this.core, store, this.counters, {
      isClosed: () => this.closed,
      assertOpen: () => this.assertOpen(),
      write: (change) => this.writeThrough([change]),
      onStale: (k, reason, error) => this.emit('stale', k, reason, error),
      onLoadError: (k, error) => this.emit('loadError', k, error),
      reportError: (error) => this.reportError(error),
    });
    this.gapResyncIntervalMs = o.gapResyncIntervalMs;
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
        heartbeatIntervalMs: o.heartbeatIntervalMs,
        heartbeatTimeoutMs: o.heartbeatTimeoutMs,
        maxMessageBytes: o.maxMessageBytes,
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
    try {
      this.assertOpen();
    } catch (error) {
      return Promise.reject(error as Error);
    }
    return bounded(this.whenReady(), where, timeoutMs, signal);
  }

  /** What {@link ready} waits for: the subscription (subclasses add their own checks). */
  protected async whenReady(): Promise<void> {
    await this.subscriber.whenLive();
    // close() settles the subscriber's waiters: a closed manager is not ready.
    this.assertOpen();
  }

  /** True while cached entries are served (subscribed, heartbeat answering, not resyncing). */
  get isServing(): boolean {
    return this.core.serving && !this.closed;
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
      const entry = this.core.lookup(key) as Settled<V> | undefined;
      if (entry !== undefined) {
        this.counters.hits++;
        if (!entry.present) return UNDEFINED;
        return (entry[SETTLED] ??= Promise.resolve(entry.value));
      }
    }
    return this.getSlow(key);
  }

  private async getSlow(key: DictKey): Promise<V | undefined> {
    this.assertOpen();
    const k = normalizeKey(key);
    const entry = this.core.lookup(k);
    if (entry !== undefined) {
      this.counters.hits++;
      return entry.value;
    }
    this.counters.misses++;
    return (await this.core.load(k))?.value;
  }

  /** True when `key` has a value (a cached miss never answers true). */
  async has(key: DictKey): Promise<boolean> {
    const k = normalizeKey(key);
    this.assertOpen();
    const entry = this.core.lookup(k);
    if (entry !== undefined) {
      this.counters.hits++;
      return entry.present;
    }
    this.counters.misses++;
    return (await this.core.load(k)) !== undefined;
  }

  /** Values of `keys`, aligned with them; the misses are read in one round trip per node. */
  async getMany(keys: Iterable<DictKey>): Promise<(V | undefined)[]> {
    const ks = normalizeKeys(keys);
    this.assertOpen();
    const out: (V | undefined)[] = new Array(ks.length);
    // Each missed key once (a Set: the batch costs O(n), not one scan of the misses per key),
    // either joining a read already in flight or in this call's own read.
    const missing = new Set<string>();
    const joined = new Map<string, Promise<VersionedValue<V> | undefined>>();
    let missed = false;
    for (let i = 0; i < ks.length; i++) {
      const k = ks[i]!;
      const entry = this.core.lookup(k);
      if (entry !== undefined) {
        this.counters.hits++;
        out[i] = entry.value;
        continue;
      }
      this.counters.misses++;
      missed = true;
      if (missing.has(k) || joined.has(k)) continue;
      const pending = this.core.pendingRead(k);
      if (pending) joined.set(k, pending);
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
      const tracked = list.map((k, j) => this.core.track(k, batch.then((found) => found[j])));
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
    return this.loads.getOrSet(key, loader, options);
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
    this.assertOpen();
    const expiresAt = this.store.expiryOf('set', options);
    const payload = this.store.encodeValue(k, value);
    await this.writeThrough([{ key: k, stamp: this.store.clock.now(), deleted: false, value, payload, expiresAt }]);
  }

  /** Writes every pair (with the same `ttlMs` if given) in one round trip per node, then caches them. */
  async setMany(entries: Iterable<readonly [DictKey, V]>, options?: SetOptions): Promise<void> {
    this.assertOpen();
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
    this.assertOpen();
    const outcomes = await this.writeThrough(ks.map((k) => ({ key: k, stamp: this.store.clock.now(), deleted: true })));
    return outcomes.filter((o) => o.status === 'written' && o.existed).length;
  }

  private async writeThrough(changes: { key: string; stamp: Stamp; deleted: boolean; value?: V; payload?: Uint8Array; expiresAt?: number | undefined }[]) {
    const generation = this.core.generation;
    const marks = changes.map((change) => this.core.startWrite(change.key));
    for (const change of changes) this.core.noteWrite(change.key, change.stamp);
    let outcomes: WriteOutcome<V>[];
    try {
      outcomes = await this.store.writeVersioned(changes);
    } finally {
      changes.forEach((change, i) => this.core.endWrite(change.key, marks[i]!));
    }
    // Like a read (I5): what this write knows is not cached when a newer write or event was noted
    // for the key while it was in flight, or a gap happened meanwhile.
    const stale = (i: number, stamp: Stamp): boolean => generation !== this.core.generation || marks[i]!.newest > stamp;
    let failure: Error | undefined;
    outcomes.forEach((outcome, i) => {
      const change = changes[i]!;
      if (outcome.status === 'written') {
        // Not cached, and whatever was cached for the key is dropped: an older entry left in place
        // (kept by a resync that compared it while this write was in flight, a failover say) would
        // stay stale, since a writer ignores its own events.
        if (stale(i, change.stamp)) {
          this.core.drop(change.key);
          return;
        }
        if (change.deleted) this.core.install(change.key, { value: undefined, stamp: change.stamp, present: false, expiresAt: Infinity });
        else this.core.install(change.key, { value: this.store.decodeValue(change.key, change.payload!), stamp: change.stamp, present: true, expiresAt: change.expiresAt ?? Infinity });
      } else if (outcome.status === 'conflict') {
        // Redis holds a newer write: it wins (last-writer-wins); cache what Redis holds.
        const { stored } = outcome;
        if (stored.stamp !== '') {
          this.core.noteWrite(change.key, stored.stamp);
          if (!stale(i, stored.stamp)) this.core.install(change.key, { value: stored.value, stamp: stored.stamp, present: !stored.deleted, expiresAt: stored.expiresAt ?? Infinity });
          else this.core.drop(change.key);
        } else this.core.drop(change.key);
      } else {
        this.core.drop(change.key);
        failure ??= outcome.error;
      }
    });
    if (failure) throw failure;
    return outcomes;
  }

  // ---------------------------------------------------------------- whole-dictionary operations

  /** Number of entries in Redis (SCAN); the cache is not involved. */
  async size(): Promise<number> {
    this.assertOpen();
    return this.store.size();
  }

  /** Deletes every entry of the namespace in Redis (published) and empties the local cache. */
  async clear(): Promise<void> {
    this.assertOpen();
    this.core.invalidateReads();
    this.core.clear();
    await this.store.clear();
    this.core.invalidateReads();
    this.core.clear();
  }

  /** Keys in Redis (SCAN). */
  async *keys(): AsyncGenerator<string, void, undefined> {
    this.assertOpen();
    yield* this.store.keys();
  }

  /** Values in Redis (SCAN). */
  async *values(): AsyncGenerator<V, void, undefined> {
    this.assertOpen();
    yield* this.store.values();
  }

  /** `[key, value]` pairs in Redis (SCAN). */
  async *entries(): AsyncGenerator<[string, V], void, undefined> {
    this.assertOpen();
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
      size: this.core.size,
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
        this.core.noteWrite(entry.key, entry.stamp);
        if (this.core.drop(entry.key)) {
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
        this.core.noteWrite(entry.key, entry.stamp);
        if (this.core.drop(entry.key)) this.emit('invalidate', entry.key, entry.stamp);
        continue;
      }
      this.counters.eventsReceived++;
      this.store.clock.observe(entry.stamp);
      this.core.noteWrite(entry.key, entry.stamp);
      if (this.applyRemote(entry, deleted)) this.counters.eventsApplied++;
      else this.counters.eventsIgnored++;
    }
  }

  /** Applies one remote change (a key with a local change: its layer decides); true when it changed the cache. */
  /** @internal */
  protected applyRemote(entry: MessageEntry, deleted: boolean): boolean {
    const local = this.core.local;
    if (local !== undefined && local.has(entry.key)) return local.onRemote(entry, deleted, (e) => this.decodeRemote(e));
    const current = this.core.peek(entry.key);
    if (current === undefined) return false;
    // A cached value ignores an event no newer than itself (a late copy). A cached miss ignores
    // only the event of its own delete: its stamp (the delete's, or '' for a miss read) vouches
    // for a tombstone that may be gone — lost in a restart without persistence, or expired after
    // tombstoneTtlMs — and Redis then applies a write stamped before the delete. Dropping is
    // always safe; ignoring would serve "no value" while Redis holds one (nemesis seed 1120478144).
    if (current.present ? current.stamp >= entry.stamp : current.stamp === entry.stamp) return false;
    // A cached miss has no stamp (''), so every event looks newer than it, even a late copy of a
    // write older than the delete the miss was read after: drop the miss, never install over it.
    if (current.present && !deleted && this.sync === 'update' && entry.payload !== undefined && this.core.serving) {
      const value = this.decodeRemote(entry);
      if (value !== undefined) {
        this.core.replace(entry.key, { value: value.value, stamp: entry.stamp, present: true, expiresAt: entry.expiresAt ?? Infinity });
        this.emit('update', entry.key, value.value, entry.stamp);
        return true;
      }
    }
    this.core.drop(entry.key);
    this.emit('invalidate', entry.key, entry.stamp);
    return true;
  }

  /** Decodes a value carried by a message; undefined (and counted as malformed) when it cannot be decoded. */
  private decodeRemote(entry: MessageEntry): { value: V } | undefined {
    try {
      return { value: this.store.decodeValue(entry.key, entry.payload!) };
    } catch (error) {
      this.counters.malformed++;
      this.reportError(error as Error);
      return undefined;
    }
  }

  private onDown(reason: ResyncReason): void {
    this.core.invalidateReads();
    this.linkEpoch++;
    if (!this.serveStale) this.core.serving = false;
    this.emit('down', reason);
  }

  private onUp(reason: ResyncReason | 'initial'): void {
    this.core.invalidateReads();
    this.linkEpoch++;
    if (reason === 'initial') {
      this.core.serving = true;
      return;
    }
    if (reason === 'sequence-gap') {
      // At most one gap resync per interval: a gap noticed during the quiet interval stops serving
      // at once and gets one resync when the interval ends (one for all the gaps meanwhile).
      const wait = this.lastGapResyncAt + this.gapResyncIntervalMs - performance.now();
      if (wait > 0 || this.gapTimer !== undefined) {
        this.counters.gapResyncsDeferred++;
        if (!this.serveStale) this.core.serving = false;
        if (this.gapTimer === undefined && !this.closed) {
          this.gapTimer = setTimeout(() => {
            this.gapTimer = undefined;
            if (this.closed) return;
            this.core.invalidateReads();
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
      if (!this.serveStale) this.core.serving = false;
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
    if (!this.serveStale) this.core.serving = false;
    this.counters.resyncs++;
    let dropped = 0;
    let kept = 0;
    if (this.onReconnect === 'clear') {
      dropped = this.core.size;
      this.core.clear();
    } else {
      const keys = [...this.core.keys()];
      try {
        const stamps = await this.store.readStamps(keys);
        keys.forEach((k, i) => {
          const entry = this.core.peek(k);
          if (entry === undefined) return;
          const stored = stamps[i];
          const same = entry.present ? stored === entry.stamp : stored === '';
          if (same) kept++;
          else {
            this.core.drop(k);
            dropped++;
          }
        });
      } catch (error) {
        // Cannot compare: an empty cache is a coherent cache.
        dropped = this.core.size;
        this.core.clear();
        this.reportError(error as Error);
      }
    }
    // A down, up or gap meanwhile has its own resync coming (or the link is down): leave serving
    // to it. Anything else (a clear() say, which only invalidates reads in flight) must not stop
    // this one from serving again: no other resync would.
    if (epoch !== this.linkEpoch || this.closed) return;
    if (this.subscriber.healthy) this.core.serving = true;
    this.emit('resync', { reason, mode: this.onReconnect, dropped, kept, durationMs: performance.now() - started });
  }

  /**
   * Throws `E_CLOSED` once the manager is closed; with `refuseWhileClosing`, also while a `close()`
   * is finishing (a write-back manager refuses new changes during its final flush).
   *
   * @internal
   */
  protected assertOpen(refuseWhileClosing = false): void {
    if (this.closed || (refuseWhileClosing && this.closing)) throw new ClosedError(this.constructor.name);
  }

  /** @internal */
  protected reportError(error: Error): void {
    if (this.listenerCount('error') > 0) this.emit('error', error);
  }

  // ---------------------------------------------------------------- lifecycle

  /** Unsubscribes and closes the connection the manager opened (never the caller's). Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.core.close();
    if (this.gapTimer !== undefined) clearTimeout(this.gapTimer);
    this.gapTimer = undefined;
    this.loads.close(new ClosedError(this.constructor.name));
    await this.subscriber.close();
    this.store.release(this);
    this.core.clear();
  }

  /** Same as {@link PubSubCacheManager.close}, for `await using`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** The hit answer of a cached miss. */
const UNDEFINED: Promise<undefined> = Promise.resolve(undefined);


