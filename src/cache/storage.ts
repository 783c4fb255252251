/**
 * Where a cache manager's entries live: a `Map`, an `LRUCache` it makes, or the caller's own
 * `LRUCache` (any version or copy of lru-cache, duck-typed), all seen through {@link Storage}; and
 * {@link CacheView}, the read-only view of them that a manager exposes as `cache`.
 *
 * @module
 */
import { LRUCache } from 'lru-cache';
import { invalidOption } from '../options.js';
import { type DictKey, normalizeKey } from '../protocol/keys.js';
import type { CacheEntry, LRUCacheLike } from './types.js';

/** Storage behind the cache: `Map` or `LRUCache`, both seen through the calls used here. */
export interface Storage<V> {
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

/** The methods of a user's cache that the manager calls (see {@link LRUCacheLike}). */
const LRU_METHODS = ['get', 'peek', 'set', 'delete', 'clear', 'has', 'keys', 'entries'] as const;

/** True for an object with every method of {@link LRUCacheLike} and a numeric `size`. */
function isLRUCacheLike(option: unknown): option is LRUCacheLike {
  if (option === null || typeof option !== 'object') return false;
  const candidate = option as Record<string, unknown>;
  return LRU_METHODS.every((name) => typeof candidate[name] === 'function') && typeof candidate['size'] === 'number';
}

/** A validated `cache` option: an entry count, `'unbounded'`, or the caller's own LRU cache. */
export type StorageSpec = number | 'unbounded' | LRUCacheLike;

/** Validates the `cache` option (default: 10,000 entries); throws `E_INVALID_OPTION`. */
export function checkCacheOption(where: string, option: unknown): StorageSpec {
  if (option === undefined) return 10_000;
  if (option === 'unbounded') return option;
  if (typeof option === 'number') {
    if (!Number.isSafeInteger(option) || option < 1) invalidOption(where, 'cache', "a positive integer, an LRUCache or 'unbounded'", option);
    return option;
  }
  // Duck typing, not instanceof: an LRUCache of another version or copy of lru-cache is welcome.
  if (isLRUCacheLike(option)) return option;
  return invalidOption(where, 'cache', "a positive integer, an LRUCache or 'unbounded'", option);
}

/** The storage a validated `cache` option names; `onEvict` hears each entry the library's own LRU evicts. */
export function makeStorage<V>(spec: StorageSpec, onEvict: () => void): Storage<V> {
  if (spec === 'unbounded') return mapStorage<V>();
  if (typeof spec !== 'number') return spec as unknown as Storage<V>;
  return new LRUCache<string, CacheEntry<V>>({
    max: spec,
    dispose: (_entry, _key, reason) => {
      if (reason === 'evict') onEvict();
    },
  }) as unknown as Storage<V>;
}
