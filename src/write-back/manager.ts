/**
 * WriteBackCacheManager: local writes, dirty tracking, coalescing and batched, versioned flushes.
 *
 * `set` and `delete` change only local memory: the change gets a stamp from the store's hybrid
 * logical clock and its key becomes dirty; later changes to the same key replace it (coalescing).
 * Dirty entries live in their own map, outside the LRU, so eviction can never lose a write (I6) and
 * `maxPending` bounds their memory. A flush writes every dirty entry with the compare-and-set
 * script, one call per slot group and batch, each publishing one message. A key changed while its
 * flush was in flight stays dirty with the newer change (I7). Conflicts are decided by the
 * configured policy and every discarded or overridden local change is reported (I3).
 *
 * ```
 *  set/delete ──► dirty map ──flush()──► CAS script per slot ──► Redis + PUBLISH
 *                    ▲  │                      │
 *      newer change ─┘  └─ written & unchanged ┴─► clean entry in the LRU
 * ```
 *
 * @module
 */
import { PubSubCacheManager } from '../cache/cache-manager.js';
import type { LocalChanges } from '../cache/near-cache.js';
import { CACHE_MANAGER_OPTION_KEYS, type CacheEntry, type Conflict, type ConflictPolicyName, type ConflictSide, type FlushReport, type PubSubCacheManagerOptions } from '../cache/types.js';
import { bounded, type WaitOptions, waitOptions } from '../deadline.js';
import { BackpressureError, ClockSkewError, ClosedError, FlushError, TimeoutError, asError } from '../errors.js';
import { type DictKey, normalizeKey, normalizeKeys } from '../protocol/keys.js';
import type { MessageEntry } from '../protocol/messages.js';
import { pickOptions } from '../options.js';
import type { PubSubRedisDict } from '../store/pubsub-redis-dict.js';
import { collectEntries } from '../store/redis-dict.js';
import type { Stamp } from '../protocol/stamp.js';
import { isCluster } from '../store/topology.js';
import { type ConflictPolicy, decideConflict, policyName } from './conflict.js';
import { resolveWriteBackOptions } from './resolve-options.js';
import { FlushScheduler } from './scheduler.js';
import { type SetOptions, type VersionedChange, type WriteOutcome } from '../store/types.js';

/** Options of {@link WriteBackCacheManager}. */
export interface WriteBackCacheManagerOptions<V> extends PubSubCacheManagerOptions {
  /**
   * How conflicts are decided.
   *
   * @defaultValue `'last-writer-wins'`
   */
  conflictPolicy?: ConflictPolicy<V>;
  /**
   * Flush automatically every this many ms; 0 = only explicit and size-triggered flushes.
   *
   * @defaultValue `1000`
   */
  flushIntervalMs?: number;
  /**
   * Flush automatically when this many keys are dirty. With `flushIntervalMs: 0` it must not exceed
   * `maxPending` (nothing else would flush before changes are refused).
   *
   * @defaultValue 10,000; with `flushIntervalMs: 0`, the smaller of 10,000 and `maxPending`
   */
  maxDirty?: number;
  /**
   * Most dirty keys held; beyond it a change of a clean key is refused (or waits).
   *
   * @defaultValue `100000`
   */
  maxPending?: number;
  /**
   * At `maxPending`: `'reject'` with `E_BACKPRESSURE` (default), or `'wait'` until a flush makes room.
   *
   * @defaultValue `'reject'`
   */
  onBackpressure?: 'reject' | 'wait';
  /**
   * How long `close()` waits for its final flush, in ms.
   *
   * @defaultValue `10000`
   */
  closeTimeoutMs?: number;
  /**
   * First retry delay after a failed flush, doubled up to 30 s.
   *
   * @defaultValue `100`
   */
  retryDelayMs?: number;
}

/** The answer of a local change recorded at once. */
const DONE: Promise<void> = Promise.resolve();

/**
 * A local change not written yet. Under last-writer-wins it is also the {@link VersionedChange}
 * its flush sends (no guard), so a flush does not copy each change.
 */
interface DirtyEntry<V> extends CacheEntry<V> {
  readonly key: string;
  readonly stamp: Stamp;
  readonly deleted: boolean;
  readonly payload: Uint8Array | undefined;
  /** Remote writes above this count as concurrent (the moment the key became dirty, or our own last write). */
  since: string;
}

/**
 * A dirty entry: a value write when `payload` is given, a delete otherwise. `expiresAt` is the
 * value's expiry time, fixed when the change was made and kept through the flush (`Infinity`: none).
 */
function dirtyEntry<V>(key: string, value: V | undefined, stamp: Stamp, payload: Uint8Array | undefined, since: string, expiresAt = Infinity): DirtyEntry<V> {
  const present = payload !== undefined;
  return { key, value, stamp, present, deleted: !present, expiresAt: present ? expiresAt : Infinity, payload, since };
}

/** What a dirty change whose value has expired serves: nothing (not the clean entry it replaced). */
const EXPIRED_CHANGE: CacheEntry<never> = Object.freeze({ value: undefined, stamp: '', present: false, expiresAt: Infinity });

/** A change that could not be written before `close()` finished. */
export interface UnwrittenChange<V> {
  readonly key: string;
  readonly value: V | undefined;
  readonly deleted: boolean;
  readonly stamp: Stamp;
}

/**
 * Error of `close()` when some changes could not be written: code `E_TIMEOUT` when the final flush
 * did not finish within `closeTimeoutMs` (the changes are not confirmed: a call already sent may
 * still be applied), else `E_FLUSH`.
 */
export class CloseFlushError<V> extends FlushError {
  /** The changes that were not written, so that nothing is lost silently. */
  readonly unwritten: readonly UnwrittenChange<V>[];

  constructor(unwritten: UnwrittenChange<V>[], cause: unknown) {
    super(
      unwritten.map((u) => ({ key: u.key, error: asError(cause) })),
      `close(): ${unwritten.length} change(s) could not be written; see \`unwritten\``,
      cause instanceof TimeoutError ? 'E_TIMEOUT' : 'E_FLUSH',
    );
    this.unwritten = unwritten;
  }
}

/** Flush statistics added to {@link PubSubCacheManager.stats}. */
export interface WriteBackStats {
  /** Keys dirty now. */
  dirty: number;
  /** Flushes completed (successful or not). */
  flushes: number;
  /** Keys written by flushes. */
  flushedKeys: number;
  /** Conflicts reported. */
  conflicts: number;
  /** Flushes that failed for at least one key. */
  flushErrors: number;
}

/**
 * A write-back cache over a {@link PubSubRedisDict}: writes are local and immediate, `flush()`
 * (explicit, timed, or size-triggered) writes them in batches with version stamps.
 *
 * @typeParam V - type of the values.
 */
export class WriteBackCacheManager<V = unknown> extends PubSubCacheManager<V> {
  /** The conflict policy. */
  readonly conflictPolicy: ConflictPolicy<V>;
  private readonly policy: ConflictPolicyName;
  private readonly dirty = new Map<string, DirtyEntry<V>>();
  private readonly maxDirty: number;
  private readonly maxPending: number;
  private readonly onBackpressure: 'reject' | 'wait';
  private readonly closeTimeoutMs: number;
  /** Changes dropped for clock skew by `close()`'s final flush: reported in its {@link CloseFlushError}. */
  private droppedWhileClosing: UnwrittenChange<V>[] = [];
  /** When to flush: timer, size trigger, requests, retries with back-off. */
  private readonly scheduler: FlushScheduler<FlushReport<V>>;
  private pendingConflicts: Conflict<V>[] = [];
  /** While a flush round is in flight: per key, the newest write announced since it started. */
  private flushNotes: Map<string, Stamp> | undefined;
  /** Report of the flush in flight: conflicts found by messages meanwhile go into it. */
  private currentReport: FlushReport<V> | undefined;
  /** The eviction policy check of ready(), once started. */
  private policyCheck: Promise<void> | undefined;
  private readonly wb: Omit<WriteBackStats, 'dirty'> = { flushes: 0, flushedKeys: 0, conflicts: 0, flushErrors: 0 };

  /**
   * @param store - a {@link PubSubRedisDict}; one cache manager per store.
   * @param options - see {@link WriteBackCacheManagerOptions}.
   */
  constructor(store: PubSubRedisDict<V>, options?: WriteBackCacheManagerOptions<V>) {
    const where = 'WriteBackCacheManager';
    // Everything is validated before the base class opens a subscription.
    const o = resolveWriteBackOptions<V>(options, where);
    super(store, pickOptions(options, CACHE_MANAGER_OPTION_KEYS) as PubSubCacheManagerOptions | undefined);
    this.core.attach(this.localChanges());
    this.conflictPolicy = o.conflictPolicy;
    this.policy = policyName(o.conflictPolicy as ConflictPolicy<unknown>);
    this.maxDirty = o.maxDirty;
    this.maxPending = o.maxPending;
    this.onBackpressure = o.onBackpressure;
    this.closeTimeoutMs = o.closeTimeoutMs;
    this.scheduler = new FlushScheduler<FlushReport<V>>(
      {
        run: () => this.runFlush(),
        flush: () => this.flush(),
        pending: () => this.dirty.size,
        onError: (error) => this.reportError(error),
        closed: () => this.closed,
        closedError: () => new ClosedError(this.constructor.name),
      },
      o.flushIntervalMs,
      o.retryDelayMs,
    );
  }

  // ---------------------------------------------------------------- dirty tracking

  /** Keys with a local change not yet written. */
  dirtyKeys(): string[] {
    return [...this.dirty.keys()];
  }

  /** True when `key` has a local change not yet written. */
  isDirty(key: DictKey): boolean {
    return this.dirty.has(normalizeKey(key));
  }

  /** Number of dirty keys. */
  get dirtyCount(): number {
    return this.dirty.size;
  }

  /** Counters since creation, including flush statistics. */
  override stats(): ReturnType<PubSubCacheManager<V>['stats']> & WriteBackStats {
    return { ...super.stats(), ...this.wb, dirty: this.dirty.size };
  }

  /**
   * The dirty map as the near-cache core sees it: served before the cache, never overwritten by a
   * read, deciding remote changes of its keys (the conflict policy), and noting announced writes
   * for the flush in flight.
   */
  private localChanges(): LocalChanges<V> {
    return {
      lookup: (k) => {
        const local = this.dirty.get(k);
        if (local === undefined) return undefined;
        return local.expiresAt !== Infinity && local.expiresAt <= this.core.now() ? EXPIRED_CHANGE : local;
      },
      has: (k) => this.dirty.has(k),
      onRemote: (entry, deleted, decode) => this.decideRemote(entry, deleted, decode),
      noteWrite: (k, stamp) => this.noteFlushWrite(k, stamp),
    };
  }

  // ---------------------------------------------------------------- local writes

  /**
   * Changes `key` locally; written by the next flush. Rejects with `E_BACKPRESSURE` at `maxPending`.
   * With `ttlMs`, the expiry time is fixed now and kept through the flush: the local change stops
   * being served at that time, and Redis expires the key at that same time.
   */
  override set(key: DictKey, value: V, options?: SetOptions): Promise<void> {
    let k: string;
    let payload: Uint8Array;
    let expiresAt: number | undefined;
    try {
      k = normalizeKey(key);
      this.assertOpen(true);
      expiresAt = this.store.expiryOf('set', options);
      payload = this.store.encodeValue(k, value);
    } catch (error) {
      return Promise.reject(error as Error);
    }
    // The common case has room: recorded at once, answered with a settled promise.
    if (this.dirty.size < this.maxPending || this.dirty.has(k)) {
      this.markDirty(k, value, payload, expiresAt);
      return DONE;
    }
    return this.setWhenRoom(k, value, payload, expiresAt);
  }

  private async setWhenRoom(k: string, value: V, payload: Uint8Array, expiresAt: number | undefined): Promise<void> {
    // Checked again after each wait, right before recording: changes woken by one flush share its room.
    while (!this.dirty.has(k) && this.dirty.size >= this.maxPending) await this.makeRoom(1);
    this.markDirty(k, value, payload, expiresAt);
  }

  /** Changes every pair locally (with the same `ttlMs` if given); all values are validated first. */
  override async setMany(entries: Iterable<readonly [DictKey, V]>, options?: SetOptions): Promise<void> {
    this.assertOpen(true);
    const expiresAt = this.store.expiryOf('setMany', options);
    const changes: [string, V, Uint8Array][] = [];
    for (const [k, value] of collectEntries(entries)) changes.push([k, value, this.store.encodeValue(k, value)]);
    const keys = new Set(changes.map(([k]) => k));
    for (let fresh = this.freshCount(keys); fresh > 0 && this.dirty.size + fresh > this.maxPending; fresh = this.freshCount(keys)) {
      await this.makeRoom(fresh);
    }
    for (const [k, value, payload] of changes) this.markDirty(k, value, payload, expiresAt);
  }

  /** Deletes `key` locally (a tombstone written by the next flush); true when it had a value. */
  override async delete(key: DictKey): Promise<boolean> {
    return (await this.deleteMany([key])) === 1;
  }

  /** Deletes every key locally; returns how many had a value (unknown keys are read once). */
  override async deleteMany(keys: Iterable<DictKey>): Promise<number> {
    const ks = [...new Set(normalizeKeys(keys))];
    this.assertOpen(true);
    const before = await this.getMany(ks);
    this.assertOpen(true);
    for (let fresh = this.freshCount(ks); fresh > 0 && this.dirty.size + fresh > this.maxPending; fresh = this.freshCount(ks)) {
      await this.makeRoom(fresh);
    }
    for (const k of ks) this.markDirty(k, undefined, undefined);
    return before.filter((v) => v !== undefined).length;
  }

  /** Discards local changes, then deletes every entry of the namespace in Redis (published). */
  override async clear(): Promise<void> {
    this.assertOpen(true);
    this.dirty.clear();
    await super.clear();
    this.scheduler.wake();
  }

  /**
   * Writes the local changes before a read of Redis as a whole. Rejects with the flush's
   * {@link FlushError} when one fails (Redis down, READONLY, OOM, ...): a read that waited for
   * the retries could wait forever.
   */
  private async flushBeforeRead(): Promise<void> {
    this.assertOpen(true);
    await this.flushAll();
  }

  /** Number of entries in Redis, after flushing local changes; rejects with `E_FLUSH` when they cannot be written. */
  override async size(): Promise<number> {
    await this.flushBeforeRead();
    return super.size();
  }

  /** Keys in Redis, after flushing local changes; rejects with `E_FLUSH` when they cannot be written. */
  override async *keys(): AsyncGenerator<string, void, undefined> {
    await this.flushBeforeRead();
    yield* super.keys();
  }

  /** Values in Redis, after flushing local changes; rejects with `E_FLUSH` when they cannot be written. */
  override async *values(): AsyncGenerator<V, void, undefined> {
    await this.flushBeforeRead();
    yield* super.values();
  }

  /** `[key, value]` pairs in Redis, after flushing local changes; rejects with `E_FLUSH` when they cannot be written. */
  override async *entries(): AsyncGenerator<[string, V], void, undefined> {
    await this.flushBeforeRead();
    yield* super.entries();
  }

  private markDirty(k: string, value: V | undefined, payload: Uint8Array | undefined, expiresAt?: number): void {
    const stamp = this.store.clock.now();
    const previous = this.dirty.get(k);
    // The key's clean entry, if cached, stays under the change: lookups read the dirty map first,
    // install() refuses a dirty key, and the flush replaces (or drops) it. Not touching the LRU here
    // saves a lookup in a large map per change.
    this.dirty.set(k, dirtyEntry(k, value, stamp, payload, previous?.since ?? stamp, expiresAt));
    this.core.noteWrite(k, stamp);
    if (this.dirty.size >= this.maxDirty) this.scheduler.trigger();
  }

  /** How many of `keys` are not dirty. */
  private freshCount(keys: Iterable<string>): number {
    let n = 0;
    for (const k of keys) if (!this.dirty.has(k)) n++;
    return n;
  }

  private async makeRoom(needed: number): Promise<void> {
    // More new keys than maxPending can never fit: waiting would flush nothing, forever.
    if (this.onBackpressure === 'reject' || needed > this.maxPending) throw new BackpressureError(this.dirty.size, this.maxPending);
    while (this.dirty.size + needed > this.maxPending) {
      this.assertOpen(true);
      this.scheduler.trigger();
      const failure = await this.scheduler.nextFlush();
      // A flush that failed and made no room (Redis down, READONLY, OOM): waiting for its retries
      // could last forever; the change is refused with the reason.
      if (failure !== undefined && this.dirty.size + needed > this.maxPending) {
        this.assertOpen(true);
        throw failure;
      }
    }
    // close() wakes the waiters after dropping what it could not write: refuse the change, do not record it.
    this.assertOpen(true);
  }

  // ---------------------------------------------------------------- flushing

  /**
   * Writes every dirty entry. Resolves with what was written and every conflict; rejects with a
   * {@link FlushError} listing the keys that could not be written (they stay dirty and are retried
   * with back-off). A flush requested while another runs starts when it ends.
   */
  flush(): Promise<FlushReport<V>> {
    return this.scheduler.flush();
  }

  /**
   * Resolves when no key is dirty and no flush runs (flushing, and retrying failed flushes with
   * back-off, as needed). Rejects with `E_TIMEOUT` after `timeoutMs` (default 0: no limit, it
   * waits for Redis to accept the changes) and with `E_ABORTED` when `signal` fires; the changes
   * stay dirty either way. Resolves once `close()` has written or handed back (in its
   * {@link CloseFlushError}) every change.
   *
   * @param options - bounds of the wait: `timeoutMs` (default 0, no limit) and `signal`.
   */
  onIdle(options?: WaitOptions): Promise<void> {
    const where = `${this.constructor.name}.onIdle()`;
    let timeoutMs: number;
    let signal: AbortSignal | undefined;
    try {
      ({ timeoutMs, signal } = waitOptions(where, options, 0));
    } catch (error) {
      return Promise.reject(error as Error);
    }
    return bounded(this.scheduler.untilIdle(), where, timeoutMs, signal);
  }

  private async runFlush(): Promise<FlushReport<V>> {
    this.scheduler.begin();
    const started = performance.now();
    const report: { -readonly [K in keyof FlushReport<V>]: FlushReport<V>[K] } = { written: [], conflicts: this.pendingConflicts, failed: [], durationMs: 0 };
    this.pendingConflicts = [];
    this.currentReport = report;
    try {
      // A resolver that keeps or merges a value makes a new change: write it in the same flush.
      for (let round = 0; round < 3 && this.dirty.size > 0; round++) {
        const again = await this.flushRound(report);
        if (!again) break;
      }
    } finally {
      this.scheduler.end();
      this.currentReport = undefined;
      this.wb.flushes++;
      report.durationMs = performance.now() - started;
    }
    this.wb.flushedKeys += report.written.length;
    if (report.failed.length > 0) {
      this.wb.flushErrors++;
      this.scheduler.scheduleRetry();
      const error = Object.assign(new FlushError(report.failed), { report });
      this.scheduler.wake(error);
      throw error;
    }
    this.scheduler.succeeded();
    this.emit('flush', report);
    this.scheduler.wake();
    return report;
  }

  /** Records, per key of the flush in flight, the newest write announced meanwhile (see {@link written}). */
  private noteFlushWrite(k: string, stamp: Stamp): void {
    const notes = this.flushNotes;
    if (notes === undefined) return;
    const seen = notes.get(k);
    if (seen === undefined || seen < stamp) notes.set(k, stamp);
  }

  /** One pass over the dirty entries; true when a conflict produced a new change to write. */
  private async flushRound(report: FlushReport<V>): Promise<boolean> {
    const snapshot: DirtyEntry<V>[] = [];
    const guarded = this.policy !== 'last-writer-wins';
    for (const entry of this.dirty.values()) snapshot.push(entry);
    // Under last-writer-wins each entry is its own change; the other policies add the guard.
    const changes: readonly VersionedChange<V>[] = guarded ? snapshot.map((entry) => ({ ...entry, guard: entry.since })) : snapshot;
    this.flushNotes = new Map();
    let again = false;
    // Each key is settled as soon as its batch replies (later batches may still be executing), with
    // the newest write announced for it until then.
    const settled = new Uint8Array(snapshot.length);
    const settle = (i: number, outcome: WriteOutcome<V>): void => {
      if (settled[i] === 1) return;
      settled[i] = 1;
      const entry = snapshot[i]!;
      const { key } = entry;
      const newest = this.flushNotes?.get(key) ?? '';
      if (outcome.status === 'failed') {
        report.failed.push({ key, error: outcome.error });
        // Refused for clock skew: its stamp would be refused again on every retry (until this
        // clock is fixed), so the change is dropped, reported once, instead of retried forever.
        if (outcome.error instanceof ClockSkewError) this.dropSkewed(key, entry);
        return;
      }
      if (outcome.status === 'written' || outcome.stored.stamp === entry.stamp) {
        report.written.push(key);
        this.written(key, entry, newest);
        return;
      }
      const { stored } = outcome;
      if (stored.stamp < entry.stamp && stored.stamp.endsWith(this.store.clock.nodeId)) {
        // Our own earlier write is in Redis: an attempt whose reply was lost (a timeout, a cut
        // connection) and that Redis applied after all. It is not a conflict: it precedes this
        // change, which is written over it in the next round.
        this.ownWriteFound(key, stored.stamp as Stamp);
        again = true;
        return;
      }
      const conflict = this.decide(key, { stamp: stored.stamp as Stamp, deleted: stored.deleted, value: stored.value, known: true, expiresAt: stored.expiresAt }, 'flush', report, newest);
      if (conflict !== undefined && conflict.outcome !== 'remote') again = true;
    };
    try {
      const outcomes = await this.store.writeVersioned(changes, settle);
      // A store that does not report outcomes as they come (a wrapper, say): settle them now.
      outcomes.forEach((outcome, i) => settle(i, outcome));
    } finally {
      this.flushNotes = undefined;
    }
    return again;
  }

  /** A change refused for clock skew is dropped: the key is clean and reads go to Redis. */
  private dropSkewed(key: string, entry: DirtyEntry<V>): void {
    if (this.dirty.get(key) !== entry) return;
    this.dirty.delete(key);
    this.core.drop(key);
    if (this.closing) this.droppedWhileClosing.push({ key, value: entry.value, deleted: !entry.present, stamp: entry.stamp });
  }

  /** A flushed change is in Redis: the key is clean unless it changed meanwhile (I7). */
  private written(key: string, entry: DirtyEntry<V>, newestNoted: Stamp | ''): void {
    const current = this.dirty.get(key);
    if (current === entry) {
      this.dirty.delete(key);
      // Ours is in Redis: it replaces the clean entry the key had before it became dirty. Unless a
      // newer write announced while it was in flight (one the policy left undecided, e.g. a
      // resolver without the remote value) has overwritten it in Redis: then neither is current.
      if (newestNoted <= entry.stamp) this.core.replace(key, { value: entry.value, stamp: entry.stamp, present: entry.present, expiresAt: entry.expiresAt });
      else this.core.drop(key);
    } else if (current !== undefined) {
      // Our own write is in Redis now; only writes above it are concurrent with the newer change.
      const floor = `${entry.stamp}g`;
      if (current.since < floor) current.since = floor;
    }
  }

  /**
   * Redis holds `stamp`, a write of this instance older than the key's local change: only writes
   * above it are concurrent with the change (the same floor as after a successful flush).
   */
  private ownWriteFound(key: string, stamp: Stamp): void {
    const current = this.dirty.get(key);
    const floor = `${stamp}g`;
    if (current !== undefined && current.since < floor) current.since = floor;
  }

  // ---------------------------------------------------------------- conflicts

  /** A remote change of a dirty key: the conflict policy decides. */
  private decideRemote(entry: MessageEntry, deleted: boolean, decode: (entry: MessageEntry) => { value: V } | undefined): boolean {
    let value: V | undefined;
    let known = deleted;
    if (!deleted && entry.payload !== undefined) {
      const decoded = decode(entry);
      if (decoded !== undefined) {
        value = decoded.value;
        known = true;
      }
    }
    return this.decide(entry.key, { stamp: entry.stamp, deleted, value, known, expiresAt: entry.expiresAt }, 'message') !== undefined;
  }

  /**
   * Decides a remote write against the key's local change under the policy; reports and returns
   * the conflict, or undefined when there is none (or it must wait for the flush to know the value).
   */
  private decide(
    key: string,
    remote: ConflictSide<V> & { known: boolean; expiresAt?: number | undefined },
    detectedBy: 'message' | 'flush',
    report?: FlushReport<V>,
    newestNoted: Stamp | '' = '',
  ): Conflict<V> | undefined {
    const local = this.dirty.get(key);
    if (local === undefined) return undefined;
    const decision = decideConflict(this.conflictPolicy, local, remote, key);
    if (decision.kind === 'none' || decision.kind === 'undecided') return undefined;
    let failure = decision.kind === 'failed' ? decision.error : undefined;
    let payload: Uint8Array | undefined;
    if (decision.kind === 'merged') {
      try {
        payload = this.store.encodeValue(key, decision.value);
      } catch (error) {
        failure = error as Error;
      }
    }
    if (failure !== undefined || decision.kind === 'failed') {
      failure ??= new Error('conflict resolver failed');
      // Keep the local change (nothing is lost). At flush time the key counts as failed, so the flush
      // is retried with back-off instead of at once (onIdle() would spin on it).
      this.reportError(failure);
      report?.failed.push({ key, error: failure });
      return undefined;
    }
    const localSide: ConflictSide<V> = { value: local.value, deleted: !local.present, stamp: local.stamp };
    const outcome: Conflict<V>['outcome'] = decision.kind;
    let stamp: Stamp | undefined;
    if (decision.kind === 'remote') {
      this.dirty.delete(key);
      this.core.drop(key);
      // Not when a newer write was announced while the flush that found this one was in flight.
      if (remote.known && remote.stamp >= newestNoted) {
        this.core.install(key, { value: remote.value, stamp: remote.stamp, present: !remote.deleted, expiresAt: remote.expiresAt ?? Infinity });
      }
      this.scheduler.wake();
    } else {
      this.store.clock.observe(remote.stamp);
      stamp = this.store.clock.now();
      // A kept or merged value keeps the local change's expiry time.
      this.dirty.set(
        key,
        decision.kind === 'merged'
          ? dirtyEntry(key, decision.value, stamp, payload, `${remote.stamp}g`, local.expiresAt)
          : dirtyEntry(key, local.value, stamp, local.payload, `${remote.stamp}g`, local.expiresAt),
      );
      this.core.noteWrite(key, stamp);
    }
    const conflict: Conflict<V> = { key, policy: this.policy, local: localSide, remote, outcome, stamp, detectedBy };
    this.wb.conflicts++;
    const target = report ?? this.currentReport;
    if (target !== undefined) target.conflicts.push(conflict);
    else this.pendingConflicts.push(conflict);
    this.emit('conflict', conflict);
    return conflict;
  }

  // ---------------------------------------------------------------- lifecycle

  /** The subscription, then (once) the eviction policy check: its `warning` comes before `ready()` resolves. */
  protected override async whenReady(): Promise<void> {
    await super.whenReady();
    // Bounded on its own: a server that does not answer CONFIG must not hold every later ready().
    this.policyCheck ??= bounded(this.checkEvictionPolicy(), 'the eviction policy check', 5_000, undefined).catch(() => undefined);
    await this.policyCheck;
  }

  /**
   * Emits a `warning` (`E_EVICTION_POLICY`) for each server (every master of a Cluster) whose
   * `maxmemory-policy` is not `noeviction`: an evicted tombstone lets an older change come back
   * without a conflict, an evicted record loses a written change. Best effort: a server that
   * refuses CONFIG (ACL, managed services) is skipped silently.
   */
  private async checkEvictionPolicy(): Promise<void> {
    const redis = this.store.redis;
    const nodes = isCluster(redis) ? redis.nodes('master') : [redis];
    await Promise.all(
      nodes.map(async (node) => {
        let policy: string;
        try {
          const reply = (await node.call('CONFIG', 'GET', 'maxmemory-policy')) as unknown;
          if (!Array.isArray(reply) || reply.length < 2) return;
          policy = String(reply[1]);
        } catch {
          return;
        }
        if (policy === 'noeviction' || this.closed) return;
        const where = `${String(node.options.host ?? 'localhost')}:${String(node.options.port ?? 6379)}`;
        this.emit('warning', {
          code: 'E_EVICTION_POLICY',
          message:
            `maxmemory-policy is \`${policy}\` on ${where}: Redis may evict this library's records and tombstones, ` +
            'losing written changes or letting older ones come back without a conflict; use `noeviction` with a write-back cache',
          node: where,
          policy,
        });
      }),
    );
  }

  /**
   * Flushes (waiting at most `closeTimeoutMs`), then unsubscribes and closes what the manager
   * opened. Rejects with a {@link CloseFlushError} listing the changes that could not be written.
   * Idempotent.
   */
  override async close(): Promise<void> {
    if (this.closed || this.closing) return;
    this.closing = true;
    this.scheduler.stop();
    let failure: unknown;
    if (this.dirty.size > 0 || this.scheduler.running) {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new TimeoutError(`close(): the final flush did not finish within ${this.closeTimeoutMs} ms`)), this.closeTimeoutMs);
      });
      try {
        await Promise.race([this.flushAll(), timeout]);
      } catch (error) {
        failure = error;
      } finally {
        clearTimeout(timer);
      }
    }
    // Changes the final flush dropped for clock skew were not written either: close() reports them.
    const unwritten: UnwrittenChange<V>[] = [...this.droppedWhileClosing, ...[...this.dirty].map(([key, e]) => ({ key, value: e.value, deleted: !e.present, stamp: e.stamp }))];
    this.droppedWhileClosing = [];
    this.dirty.clear();
    await super.close();
    this.scheduler.wake();
    if (unwritten.length > 0) throw new CloseFlushError(unwritten, failure ?? new Error('not written'));
  }

  /** Flushes until nothing is dirty or a flush fails. */
  private async flushAll(): Promise<void> {
    for (let i = 0; i < 5 && (this.dirty.size > 0 || this.scheduler.running); i++) await this.flush();
  }
}
