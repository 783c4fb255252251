/**
 * The near-cache core: the cached entries and the rules that keep them coherent, shared by the
 * write-through cache manager and the write-back manager, which compose it (neither overrides it).
 *
 * - Every entry carries the stamp of the write it shows; {@link NearCache.install} replaces an entry
 *   only with a newer one (I4).
 * - A read from Redis is tracked while in flight ({@link NearCache.track}): it is cached only if no
 *   write newer than what it read was announced meanwhile ({@link NearCache.noteWrite}) and no gap
 *   happened ({@link NearCache.invalidateReads} bumps the generation) (I5).
 * - Nothing is served nor installed while the cache is not serving (link down, resyncing) (I8).
 * - A layer of local changes ({@link LocalChanges}, the write-back manager's dirty map) can be
 *   attached: its entries are served first, and nothing read from Redis is installed under them.
 *
 * @module
 */
import type { MessageEntry } from '../protocol/messages.js';
import type { VersionedValue } from '../protocol/record.js';
import type { Stamp } from '../protocol/stamp.js';
import type { Storage } from './storage.js';
import type { CacheEntry } from './types.js';

/** A layer of local changes over the cache (the write-back manager's dirty map), as the core sees it. */
export interface LocalChanges<V> {
  /** What to serve for `k` when it has a local change (it hides the cached entry), else undefined. */
  lookup(k: string): CacheEntry<V> | undefined;
  /** True when `k` has a local change: nothing read from Redis is installed for it. */
  has(k: string): boolean;
  /**
   * Decides a remote change of a key that has a local change (the conflict policy); true when it
   * changed something. `decode` decodes a value carried by the message (undefined, and counted as
   * malformed, when it cannot be).
   */
  onRemote(entry: MessageEntry, deleted: boolean, decode: (entry: MessageEntry) => { value: V } | undefined): boolean;
  /** Hears every write announced for a key (a message or a local write), after the core noted it. */
  noteWrite(k: string, stamp: Stamp): void;
}

/** What the core needs of its manager. */
export interface NearCacheSettings<V> {
  /** Clock in ms of expiry times and of the local `ttlMs`. */
  readonly now: () => number;
  /** Local time-to-live of an entry in ms (0 = none). */
  readonly ttlMs: number;
  /** Cache the misses. */
  readonly cacheMisses: boolean;
  /** Reads values with their stamps from Redis, aligned with `keys`. */
  readonly read: (keys: string[]) => Promise<(VersionedValue<V> | undefined)[]>;
  /** True for a stamp too far ahead of this instance's clock to be cached (it would hide later writes). */
  readonly isTooFarAhead: (stamp: Stamp | '') => boolean;
  /** Hears every write announced for a key, before the core notes it (wakes `getOrSet` waiters). */
  readonly onWrite: (k: string) => void;
}

/** A read of Redis in flight. */
interface PendingRead<V> {
  promise: Promise<VersionedValue<V> | undefined>;
  /** Newest stamp of an event or local write for this key seen while the read was in flight. */
  newest: Stamp | '';
  readonly generation: number;
}

/** Write-through writes of a key in flight: how many, and the newest stamp noted meanwhile. */
export interface WriteMark {
  pending: number;
  newest: Stamp | '';
}

/** The entry of a cached miss. */
const MISS: CacheEntry<never> = Object.freeze({ value: undefined, stamp: '', present: false, expiresAt: Infinity });

/** The near-cache core (see the module's description). */
export class NearCache<V> {
  /** True when cached entries may be served. */
  serving = false;
  readonly #storage: Storage<V>;
  readonly #settings: NearCacheSettings<V>;
  readonly #reads = new Map<string, PendingRead<V>>();
  readonly #writing = new Map<string, WriteMark>();
  #local: LocalChanges<V> | undefined;
  /** Bumped by every gap, resync and clear; reads started before a bump are not cached. */
  #generation = 0;
  #closed = false;
  /** How long an expired entry is kept for `getOrSet`'s stale-while-revalidate and grace, in ms. */
  #retainMs = 0;

  constructor(storage: Storage<V>, settings: NearCacheSettings<V>) {
    this.#storage = storage;
    this.#settings = settings;
  }

  /** The layer of local changes, when one is attached. */
  get local(): LocalChanges<V> | undefined {
    return this.#local;
  }

  /** Attaches the layer of local changes (once, by the write-back manager). */
  attach(local: LocalChanges<V>): void {
    this.#local = local;
  }

  /** The clock of expiry times, in ms. */
  now(): number {
    return this.#settings.now();
  }

  /** The generation: bumped by every gap, resync and clear. */
  get generation(): number {
    return this.#generation;
  }

  /** Reads in flight started before this are not cached (a gap, a resync, a clear). */
  invalidateReads(): void {
    this.#generation++;
  }

  /** Number of cached entries. */
  get size(): number {
    return this.#storage.size;
  }

  /** Keeps expired entries this long for `getOrSet`'s stale-while-revalidate and grace (only grows). */
  retain(ms: number): void {
    if (ms > this.#retainMs) this.#retainMs = ms;
  }

  /** The entry to serve for `k` (a local change first), or undefined for a miss. */
  lookup(k: string): CacheEntry<V> | undefined {
    if (this.#local !== undefined) {
      const local = this.#local.lookup(k);
      if (local !== undefined) return local;
    }
    if (!this.serving) return undefined;
    const entry = this.#storage.get(k);
    if (entry === undefined) return undefined;
    if (entry.expiresAt !== Infinity) {
      const now = this.#settings.now();
      if (entry.expiresAt <= now) {
        // Kept a while for getOrSet's stale-while-revalidate and grace, never served by get().
        if (now >= entry.expiresAt + this.#retainMs) this.#storage.delete(k);
        return undefined;
      }
    }
    return entry;
  }

  /** The cached entry of `k`, served or not, without touching its LRU position. */
  peek(k: string): CacheEntry<V> | undefined {
    return this.#storage.peek(k);
  }

  /** Cached keys. */
  keys(): IterableIterator<string> {
    return this.#storage.keys();
  }

  /** The read of `k` in flight, if any. */
  pendingRead(k: string): Promise<VersionedValue<V> | undefined> | undefined {
    return this.#reads.get(k)?.promise;
  }

  /** Reads `k` from Redis, sharing the read with concurrent callers, and caches the result when allowed. */
  load(k: string): Promise<VersionedValue<V> | undefined> {
    const pending = this.#reads.get(k);
    if (pending) return pending.promise;
    return this.track(
      k,
      this.#settings.read([k]).then((found) => found[0]),
    );
  }

  /** Tracks a read of `k` from Redis (I5) and caches what it finds when allowed. */
  track(k: string, read: Promise<VersionedValue<V> | undefined>): Promise<VersionedValue<V> | undefined> {
    // A write of this key still in flight may reach Redis after this read (a NOSCRIPT retry, a
    // redirection): the read must not cache anything older than it.
    const pending: PendingRead<V> = { promise: read, newest: this.#writing.get(k)?.newest ?? '', generation: this.#generation };
    pending.promise = read.then(
      (found) => {
        if (this.#reads.get(k) === pending) this.#reads.delete(k);
        const stamp = found?.stamp ?? '';
        // I5: an event or write newer than what was read arrived meanwhile: do not cache the read.
        // A record stamped too far ahead is served but not cached: its stamp would hide later writes.
        const cacheable = found === undefined ? this.#settings.cacheMisses : !this.#settings.isTooFarAhead(stamp);
        if (pending.generation === this.#generation && pending.newest <= stamp && cacheable) {
          this.install(k, found === undefined ? MISS : { value: found.value, stamp, present: true, expiresAt: found.expiresAt ?? Infinity });
        }
        return found;
      },
      (error: unknown) => {
        if (this.#reads.get(k) === pending) this.#reads.delete(k);
        throw error;
      },
    );
    this.#reads.set(k, pending);
    return pending.promise;
  }

  /**
   * Installs an entry if it is newer than the cached one, and `k` has no local change. While the
   * cache is not serving (down or resyncing) nothing is installed and the key's cached entry is
   * dropped instead (see {@link replace}).
   */
  install(k: string, entry: CacheEntry<V>): boolean {
    if (this.#local !== undefined && this.#local.has(k)) return false;
    if (this.serving) {
      const current = this.#storage.peek(k);
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
  replace(k: string, entry: CacheEntry<V>): boolean {
    if (this.#closed) return false;
    if (!this.serving) {
      this.#storage.delete(k);
      return false;
    }
    const { ttlMs } = this.#settings;
    this.#storage.set(k, ttlMs > 0 ? { ...entry, expiresAt: Math.min(entry.expiresAt, this.#settings.now() + ttlMs) } : entry);
    return true;
  }

  /** Drops the cached entry of `k`; true when there was one. */
  drop(k: string): boolean {
    return this.#storage.delete(k);
  }

  /** Drops every cached entry. */
  clear(): void {
    this.#storage.clear();
  }

  /** Stops serving and caching for good (the manager is closing); {@link clear} empties it. */
  close(): void {
    this.#closed = true;
    this.serving = false;
  }

  /** Records that a write with `stamp` happened to `k`, so that a read in flight does not cache an older value. */
  noteWrite(k: string, stamp: Stamp): void {
    this.#settings.onWrite(k);
    const pending = this.#reads.get(k);
    if (pending !== undefined && pending.newest < stamp) pending.newest = stamp;
    const writing = this.#writing.get(k);
    if (writing !== undefined && writing.newest < stamp) writing.newest = stamp;
    this.#local?.noteWrite(k, stamp);
  }

  /** Marks a write-through write of `k` in flight (reads started meanwhile cache nothing older). */
  startWrite(k: string): WriteMark {
    let mark = this.#writing.get(k);
    if (mark === undefined) this.#writing.set(k, (mark = { pending: 0, newest: '' }));
    mark.pending++;
    return mark;
  }

  /** Ends a write of `k` started with {@link startWrite}. */
  endWrite(k: string, mark: WriteMark): void {
    if (--mark.pending === 0 && this.#writing.get(k) === mark) this.#writing.delete(k);
  }
}

/**
 * Key of a served entry's value as a settled promise, made on the entry's first hit and reused by
 * the next ones (entries are never changed, only replaced): the hot paths of `get` and `getOrSet`
 * allocate nothing on a hit. Internal, not part of {@link CacheEntry}.
 */
export const SETTLED = Symbol('settled');

/** A cached entry as the hot paths see it. */
export type Settled<V> = CacheEntry<V> & { [SETTLED]?: Promise<V | undefined> };
