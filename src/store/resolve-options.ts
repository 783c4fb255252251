/**
 * Resolution of the store's options: pure functions that validate raw options, apply the defaults
 * and return a complete, typed object (the options themselves are declared with their classes).
 * A constructor resolves its options first and calls nothing overridable to do it.
 *
 * @module
 */
import { booleanOption, checkOptions, functionOption, integerOption, invalidOption } from '../options.js';
import { CHANNEL_PREFIX } from '../protocol/channels.js';
import { type Codec, msgpackCodec } from '../protocol/codec.js';
import { FrameSigner } from '../protocol/signing.js';
import { MAX_DRIFT_MS } from '../protocol/stamp.js';
import { DEFAULT_RETRY_TIMEOUT_MS } from './topology.js';

/** Keys of `RedisDictOptions`, for validation. */
export const REDIS_DICT_OPTION_KEYS = ['codec', 'maxValueBytes', 'tombstoneTtlMs', 'batchSize', 'clock', 'maxDriftMs', 'retryTimeoutMs', 'defaultTtlMs'] as const;

/** Keys of `PubSubRedisDictOptions`, for validation. */
const PUBSUB_OPTION_KEYS = [...REDIS_DICT_OPTION_KEYS, 'shardedPubSub', 'publishValues', 'maxPublishedValueBytes', 'channelPrefix', 'signingKeys'] as const;

/** `RedisDictOptions` validated, every default applied. */
export interface ResolvedRedisDictOptions<V> {
  readonly codec: Codec<V>;
  readonly maxValueBytes: number;
  readonly tombstoneTtlMs: number;
  readonly batchSize: number;
  readonly clock: () => number;
  readonly maxDriftMs: number;
  readonly retryTimeoutMs: number;
  readonly defaultTtlMs: number;
}

/** `PubSubRedisDictOptions` validated, every default applied (`signingKeys` made into its signer). */
export interface ResolvedPubSubRedisDictOptions<V> extends ResolvedRedisDictOptions<V> {
  readonly shardedPubSub: boolean;
  readonly publishValues: boolean;
  readonly maxPublishedValueBytes: number;
  /** `''` when none. */
  readonly channelPrefix: string;
  /** `undefined` without `signingKeys`. */
  readonly signer: FrameSigner | undefined;
}

/**
 * Validates `RedisDictOptions` and applies their defaults; throws `E_INVALID_OPTION` naming the
 * option at fault (`where` names the class in the message).
 */
export function resolveRedisDictOptions<V>(raw: unknown, where = 'RedisDict'): ResolvedRedisDictOptions<V> {
  return resolveBase<V>(where, checkOptions(where, raw, REDIS_DICT_OPTION_KEYS));
}

/** Validates `PubSubRedisDictOptions` and applies their defaults (see {@link resolveRedisDictOptions}). */
export function resolvePubSubRedisDictOptions<V>(raw: unknown, where = 'PubSubRedisDict'): ResolvedPubSubRedisDictOptions<V> {
  const opts = checkOptions(where, raw, PUBSUB_OPTION_KEYS);
  const base = resolveBase<V>(where, opts);
  const channelPrefix = opts['channelPrefix'];
  if (channelPrefix !== undefined && (typeof channelPrefix !== 'string' || !CHANNEL_PREFIX.test(channelPrefix))) {
    invalidOption(where, 'channelPrefix', '1-128 printable ASCII characters without space, `{` or `}`', channelPrefix);
  }
  return {
    ...base,
    shardedPubSub: booleanOption(where, 'shardedPubSub', opts['shardedPubSub'], false),
    publishValues: booleanOption(where, 'publishValues', opts['publishValues'], false),
    maxPublishedValueBytes: integerOption(where, 'maxPublishedValueBytes', opts['maxPublishedValueBytes'], 64 * 1024, 0),
    channelPrefix: (channelPrefix as string | undefined) ?? '',
    signer: FrameSigner.fromOption(where, opts['signingKeys']),
  };
}

function resolveBase<V>(where: string, opts: Record<string, unknown>): ResolvedRedisDictOptions<V> {
  const codec = opts['codec'];
  if (codec !== undefined && (codec === null || typeof codec !== 'object' || typeof (codec as Codec<V>).encode !== 'function' || typeof (codec as Codec<V>).decode !== 'function')) {
    invalidOption(where, 'codec', 'an object with encode() and decode()', codec);
  }
  return {
    codec: (codec as Codec<V> | undefined) ?? msgpackCodec<V>(),
    maxValueBytes: integerOption(where, 'maxValueBytes', opts['maxValueBytes'], 1 << 20),
    tombstoneTtlMs: integerOption(where, 'tombstoneTtlMs', opts['tombstoneTtlMs'], 86_400_000),
    batchSize: integerOption(where, 'batchSize', opts['batchSize'], 500),
    maxDriftMs: integerOption(where, 'maxDriftMs', opts['maxDriftMs'], MAX_DRIFT_MS, 0),
    retryTimeoutMs: integerOption(where, 'retryTimeoutMs', opts['retryTimeoutMs'], DEFAULT_RETRY_TIMEOUT_MS),
    clock: functionOption(where, 'clock', opts['clock'], Date.now),
    defaultTtlMs: integerOption(where, 'defaultTtlMs', opts['defaultTtlMs'], 0, 0),
  };
}
