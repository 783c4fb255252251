/**
 * Each class resolves its options with a pure function: validation, defaults and cross-option
 * checks, returning a complete object (src/store/resolve-options.ts, src/cache/resolve-options.ts,
 * src/write-back/resolve-options.ts). No Redis: nothing is created.
 */
import { LRUCache } from 'lru-cache';
import { describe, expect, it } from 'vitest';
import { resolveCacheManagerOptions } from '../../src/cache/resolve-options.js';
import { msgpackCodec } from '../../src/protocol/codec.js';
import { MAX_DRIFT_MS } from '../../src/protocol/stamp.js';
import { resolvePubSubRedisDictOptions, resolveRedisDictOptions } from '../../src/store/resolve-options.js';
import { resolveWriteBackOptions } from '../../src/write-back/resolve-options.js';

/** Asserts that `fn` throws E_INVALID_OPTION with a message matching `pattern`. */
function refused(fn: () => unknown, pattern: RegExp): void {
  let error: unknown;
  try {
    fn();
  } catch (e) {
    error = e;
  }
  expect(error, 'expected an error').toBeDefined();
  expect((error as { code?: string }).code).toBe('E_INVALID_OPTION');
  expect((error as Error).message).toMatch(pattern);
}

const KEY = 'k'.repeat(32);

describe('resolveRedisDictOptions', () => {
  it('applies every default', () => {
    const o = resolveRedisDictOptions(undefined);
    expect({ ...o, codec: undefined, clock: undefined }).toEqual({
      codec: undefined,
      clock: undefined,
      maxValueBytes: 1 << 20,
      tombstoneTtlMs: 86_400_000,
      batchSize: 500,
      maxDriftMs: MAX_DRIFT_MS,
      retryTimeoutMs: 20_000,
      defaultTtlMs: 0,
    });
    expect(o.clock).toBe(Date.now);
    expect(typeof o.codec.encode).toBe('function');
  });

  it('keeps what is given, and is pure: the input is not changed and the same input gives the same result', () => {
    const codec = msgpackCodec<number>();
    const clock = (): number => 5;
    const raw = Object.freeze({ codec, clock, batchSize: 7, maxDriftMs: 0, defaultTtlMs: 1000 });
    const a = resolveRedisDictOptions<number>(raw);
    expect(a).toMatchObject({ codec, clock, batchSize: 7, maxDriftMs: 0, defaultTtlMs: 1000 });
    expect(resolveRedisDictOptions<number>(raw)).toEqual(a);
  });

  it('refuses unknown options and bad values, naming the option and the class', () => {
    refused(() => resolveRedisDictOptions({ shardedPubSub: true }), /RedisDict.*shardedPubSub/);
    refused(() => resolveRedisDictOptions({ batchSize: 0 }), /`batchSize`/);
    refused(() => resolveRedisDictOptions({ codec: {} }), /`codec`/);
    refused(() => resolveRedisDictOptions(42), /options to be an object/);
  });
});

describe('resolvePubSubRedisDictOptions', () => {
  it('applies every default on top of the RedisDict ones', () => {
    expect(resolvePubSubRedisDictOptions(undefined)).toMatchObject({
      batchSize: 500,
      shardedPubSub: false,
      publishValues: false,
      maxPublishedValueBytes: 64 * 1024,
      channelPrefix: '',
      signer: undefined,
    });
  });

  it('validates the channel prefix and the signing keys', () => {
    refused(() => resolvePubSubRedisDictOptions({ channelPrefix: 'a{b}' }), /`channelPrefix`/);
    refused(() => resolvePubSubRedisDictOptions({ signingKeys: ['short'] }), /`signingKeys`/);
    expect(resolvePubSubRedisDictOptions({ signingKeys: [KEY] }).signer).toBeDefined();
    refused(() => resolvePubSubRedisDictOptions({ cache: 10 }), /PubSubRedisDict.*`cache`/);
  });
});

describe('resolveCacheManagerOptions', () => {
  it('applies every default', () => {
    expect(resolveCacheManagerOptions(undefined)).toEqual({
      cache: 10_000,
      sync: 'invalidate',
      ttlMs: 0,
      cacheMisses: true,
      onReconnect: 'revalidate',
      serveStaleWhileDisconnected: false,
      heartbeatIntervalMs: 1000,
      heartbeatTimeoutMs: 2000,
      maxMessageBytes: 8 << 20,
      clock: undefined,
      gapResyncIntervalMs: 1000,
    });
  });

  it('derives heartbeatTimeoutMs from heartbeatIntervalMs, and refuses a timeout within one period', () => {
    expect(resolveCacheManagerOptions({ heartbeatIntervalMs: 300 }).heartbeatTimeoutMs).toBe(600);
    refused(() => resolveCacheManagerOptions({ heartbeatIntervalMs: 500, heartbeatTimeoutMs: 500 }), /`heartbeatTimeoutMs`.*greater than `heartbeatIntervalMs` \(500\)/);
  });

  it("accepts an entry count, 'unbounded' or an LRUCache as cache, and nothing else", () => {
    const lru = new LRUCache<string, never>({ max: 3 });
    expect(resolveCacheManagerOptions({ cache: lru }).cache).toBe(lru);
    expect(resolveCacheManagerOptions({ cache: 'unbounded' }).cache).toBe('unbounded');
    refused(() => resolveCacheManagerOptions({ cache: 0 }), /`cache`/);
    refused(() => resolveCacheManagerOptions({ cache: new Map() }), /`cache`/);
    refused(() => resolveCacheManagerOptions({ maxDirty: 3 }), /PubSubCacheManager.*`maxDirty`/);
  });
});

describe('resolveWriteBackOptions', () => {
  it('applies every default, the cache manager ones included', () => {
    expect(resolveWriteBackOptions(undefined)).toMatchObject({
      conflictPolicy: 'last-writer-wins',
      flushIntervalMs: 1000,
      maxDirty: 10_000,
      maxPending: 100_000,
      onBackpressure: 'reject',
      closeTimeoutMs: 10_000,
      retryDelayMs: 100,
      sync: 'invalidate',
      heartbeatTimeoutMs: 2000,
    });
  });

  it('without a timer, maxDirty defaults to at most maxPending and may not exceed it', () => {
    expect(resolveWriteBackOptions({ flushIntervalMs: 0, maxPending: 3 }).maxDirty).toBe(3);
    expect(resolveWriteBackOptions({ flushIntervalMs: 0 }).maxDirty).toBe(10_000);
    refused(() => resolveWriteBackOptions({ flushIntervalMs: 0, maxPending: 3, maxDirty: 4 }), /`maxDirty`.*at most `maxPending` \(3\)/);
    expect(resolveWriteBackOptions({ maxPending: 3, maxDirty: 4 }).maxDirty).toBe(4);
  });

  it('validates its own options before the cache manager ones', () => {
    refused(() => resolveWriteBackOptions({ conflictPolicy: 'newest', heartbeatIntervalMs: 1 }), /`conflictPolicy`/);
    refused(() => resolveWriteBackOptions({ heartbeatIntervalMs: 1 }), /WriteBackCacheManager.*`heartbeatIntervalMs`/);
    const resolver = (): 'local' => 'local';
    expect(resolveWriteBackOptions({ conflictPolicy: resolver }).conflictPolicy).toBe(resolver);
  });
});
