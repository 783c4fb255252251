/**
 * redis-pubsub-dict: async Map-like dictionaries in Redis, a coherent near cache, and a write-back
 * cache with version stamps and conflict policies.
 *
 * @packageDocumentation
 */
export { RedisDict, type RedisDictOptions } from './store/redis-dict.js';
export { PubSubRedisDict, type PubSubRedisDictOptions } from './store/pubsub-redis-dict.js';
export { PubSubCacheManager } from './cache/cache-manager.js';
export {
  type PubSubCacheManagerOptions,
  type CacheEntry,
  type CacheOption,
  type LRUCacheLike,
  type CacheStats,
  type CacheManagerEvents,
  type ResyncInfo,
  type ReadyOptions,
  DEFAULT_READY_TIMEOUT_MS,
  type GetOrSetOptions,
  type StaleReason,
  type Conflict,
  type ConflictSide,
  type ConflictPolicyName,
  type FlushReport,
} from './cache/types.js';
export type { WaitOptions } from './deadline.js';
export type { ResyncReason } from './cache/subscriber.js';
export {
  WriteBackCacheManager,
  CloseFlushError,
  type WriteBackCacheManagerOptions,
  type UnwrittenChange,
  type WriteBackStats,
} from './write-back/manager.js';
export type { ConflictPolicy, ConflictResolver } from './write-back/conflict.js';
export { type Codec, msgpackCodec, assertSerializable, MAX_DEPTH } from './protocol/codec.js';
export type { RedisClient, RedisClientLike } from './store/topology.js';
export { type DictKey, MAX_KEY_LENGTH } from './protocol/keys.js';
export type { VersionedValue } from './protocol/record.js';
export { HybridClock, MAX_DRIFT_MS, type Stamp, type StampParts, compareStamps, isStamp, parseStamp, ZERO_STAMP } from './protocol/stamp.js';
export {
  RedisDictError,
  InvalidArgumentError,
  SerializationError,
  CorruptDataError,
  ClosedError,
  BackpressureError,
  TimeoutError,
  AbortedError,
  ClusterError,
  ConnectionError,
  FlushError,
  PermissionError,
  ClockSkewError,
  LoaderError,
  WriteRefusedError,
  type ErrorCode,
  type WarningCode,
  type DictWarning,
} from './errors.js';
export { MalformedMessageError } from './protocol/messages.js';
export { type VersionedChange, type WriteOutcome, type OutcomeListener, type StoredState, type SetOptions } from './store/types.js';
export { CacheView } from './cache/storage.js';
