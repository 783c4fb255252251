/**
 * PubSubRedisDict: a {@link RedisDict} whose every change is published, in the same atomic script
 * that writes it, on the dictionary's channels (`<scope>/update` for values, `<scope>/delete` for
 * tombstones; with `shardedPubSub`, one pair per hash slot, published with SPUBLISH so an event
 * stays inside its shard). Channel names carry everything that scopes a key — the client's
 * `keyPrefix`, the database index, the namespace — since Redis pub/sub ignores both the database
 * and ioredis' key prefix. The format is in `docs/protocol.md`.
 *
 * @module
 */
import { booleanOption, invalidOption, pickOptions } from '../options.js';
import { RedisDict, type RedisDictOptions } from './redis-dict.js';
import { REDIS_DICT_OPTION_KEYS, resolvePubSubRedisDictOptions } from './resolve-options.js';
import { FrameSigner } from '../protocol/signing.js';
import { isCluster, type RedisClient, type RedisClientLike } from './topology.js';
import { type ChannelScope, channelNames, shardableScope } from '../protocol/channels.js';
import { type PublishTarget } from './types.js';

/** Options of {@link PubSubRedisDict}. */
export interface PubSubRedisDictOptions<V> extends RedisDictOptions<V> {
  /**
   * On a Cluster, publish with SPUBLISH on per-slot channels (`<ns>/changes{tag}`) so events stay
   * inside their shard instead of being broadcast to every node. Every instance sharing the
   * namespace must use the same setting. Requires Redis 7.
   *
   * @defaultValue `false`
   */
  shardedPubSub?: boolean;
  /**
   * Put values in update messages so that peers install them without a round trip. Switched on by a
   * {@link PubSubCacheManager} in `sync: 'update'` mode.
   *
   * @defaultValue `false`
   */
  publishValues?: boolean;
  /**
   * Values larger than this (encoded, bytes) are announced without their value.
   *
   * @defaultValue `65536` (64 KiB)
   */
  maxPublishedValueBytes?: number;
  /**
   * Extra text put in every channel name, after the client's `keyPrefix` and before the namespace
   * (`<keyPrefix><channelPrefix><ns>/update[@<db>]`), for deployments that must name their
   * channels (ACL channel patterns, a proxy that hides the database or prefix). 1-128 printable
   * ASCII characters, no space, `{` or `}`. Every instance sharing the namespace must use the same.
   *
   * @defaultValue `''` (names derived from the key prefix, the database and the namespace only)
   */
  channelPrefix?: string;
  /**
   * Message authentication: `[current, ...previous]` keys (strings, UTF-8, or bytes; at least 32
   * bytes each, at most 8 keys). Messages are signed with the first (HMAC-SHA-256, 128-bit tags
   * bound to the channel), and a cache manager on this store applies only messages that verify
   * with one of them; anything else is counted as malformed. Rotate by deploying `[new, old]`
   * everywhere, then `[new]`. See `docs/protocol.md`.
   *
   * @defaultValue `undefined` (unsigned messages, and none is refused)
   */
  signingKeys?: readonly (string | Uint8Array)[];
}

/**
 * A {@link RedisDict} that publishes every change (set, delete, batch, clear) atomically with it.
 *
 * @typeParam V - type of the values.
 */
export class PubSubRedisDict<V = unknown> extends RedisDict<V> {
  /** True when events use sharded pub/sub (SPUBLISH per slot). */
  readonly shardedPubSub: boolean;
  private withValues: boolean;
  private readonly maxPublishedValueBytes: number;
  private readonly seqs = new Map<number, number>();
  private readonly classicTarget: PublishTarget | undefined;
  private readonly slotTargets = new Map<number, PublishTarget>();
  /** Set by the cache manager that owns this store's subscription (one per store). */
  private owner: object | undefined;
  /** What scopes this store's channel names (see {@link channelNames}). */
  private readonly scope: ChannelScope;
  /** The client's `keyPrefix`, which ioredis adds to the channels of SSUBSCRIBE and SPUBLISH. */
  private readonly clientKeyPrefix: string;
  /** @internal Signs and verifies messages; `undefined` without `signingKeys`. */
  readonly signer: FrameSigner | undefined;

  /**
   * @param redis - an ioredis `Redis` or `Cluster`; the dictionary never closes it.
   * @param namespace - 1-128 characters from `[A-Za-z0-9_.:-]`.
   * @param options - see {@link PubSubRedisDictOptions}.
   */
  constructor(redis: RedisClientLike, namespace: string, options?: PubSubRedisDictOptions<V>) {
    const where = 'PubSubRedisDict';
    const o = resolvePubSubRedisDictOptions<V>(options, where);
    super(redis, namespace, pickOptions(options, REDIS_DICT_OPTION_KEYS));
    this.shardedPubSub = o.shardedPubSub;
    if (this.shardedPubSub && !this.isCluster) invalidOption(where, 'shardedPubSub', '`false` on a standalone server (sharded pub/sub needs a Cluster)', true);
    this.withValues = o.publishValues;
    this.maxPublishedValueBytes = o.maxPublishedValueBytes;
    const channelPrefix = o.channelPrefix;
    this.signer = o.signer;
    const client = redis as { options?: { keyPrefix?: unknown; db?: unknown }; condition?: { select?: unknown } };
    const keyPrefix = client.options?.keyPrefix;
    this.clientKeyPrefix = typeof keyPrefix === 'string' ? keyPrefix : '';
    // Redis pub/sub ignores the database: a database other than 0 is part of the name. The
    // database is the one selected when the dictionary is created (ioredis keeps it in `condition`
    // once connected, in `options.db` before).
    const db = isCluster(redis as RedisClient) ? 0 : (client.condition?.select ?? client.options?.db ?? 0);
    this.scope = { namespace: this.namespace, keyPrefix: this.clientKeyPrefix, channelPrefix, db: typeof db === 'number' ? db : 0 };
    if (this.shardedPubSub && !shardableScope(`${this.clientKeyPrefix}${channelPrefix}${this.namespace}/`)) {
      invalidOption(where, 'shardedPubSub', '`false` with a client keyPrefix whose first `{` opens no non-empty hash tag (sharded channels would hash to other slots than their keys)', true);
    }
    if (!this.shardedPubSub) this.classicTarget = this.makeTarget('PUBLISH', this.channels());
  }

  /** True when update messages carry values. */
  get publishValues(): boolean {
    return this.withValues;
  }

  /** Turns values in update messages on or off (a cache manager in `sync: 'update'` mode turns them on). */
  setPublishValues(enabled: boolean): void {
    this.withValues = booleanOption('PubSubRedisDict', 'publishValues', enabled, false);
  }

  /**
   * Channel names as Redis sees them: `<keyPrefix><channelPrefix><ns>/update[@<db>]` and
   * `…/delete[@<db>]`, or with sharded pub/sub, the one channel of a slot, `…/changes{<tag>}`
   * (`<tag>` hashes to `slot`), as both `update` and `delete`. ioredis adds a client's `keyPrefix` to the channels of SSUBSCRIBE and
   * SPUBLISH (not of SUBSCRIBE and PUBLISH): strip it before passing a sharded name to such a client.
   */
  channels(slot = 0): { update: string; delete: string } {
    return channelNames(this.scope, this.shardedPubSub ? slot : undefined);
  }

  /** @internal The client's `keyPrefix` ('' when none). */
  get commandKeyPrefix(): string {
    return this.clientKeyPrefix;
  }

  /** @internal Claims the store for one cache manager; a second claim is refused. */
  claim(owner: object): void {
    if (this.owner !== undefined && this.owner !== owner) {
      invalidOption('PubSubCacheManager', 'store', 'a PubSubRedisDict not already used by another cache manager (create one store per manager)', this);
    }
    this.owner = owner;
  }

  /** @internal Releases the claim of {@link PubSubRedisDict.claim}. */
  release(owner: object): void {
    if (this.owner === owner) this.owner = undefined;
  }

  protected override publishTarget(slot = 0): PublishTarget | undefined {
    if (this.classicTarget) return this.classicTarget;
    let target = this.slotTargets.get(slot);
    if (!target) {
      target = this.makeTarget('SPUBLISH', this.channels(slot));
      this.slotTargets.set(slot, target);
    }
    return target;
  }

  private makeTarget(command: 'PUBLISH' | 'SPUBLISH', channels: { update: string; delete: string }): PublishTarget {
    const isPublishingValues = (): boolean => this.withValues;
    return {
      command,
      updateChannel: channels.update,
      deleteChannel: channels.delete,
      signer: this.signer,
      updateChannelBytes: Buffer.from(channels.update, 'utf8'),
      deleteChannelBytes: Buffer.from(channels.delete, 'utf8'),
      get withValues() {
        return isPublishingValues();
      },
      maxPublishedValueBytes: this.maxPublishedValueBytes,
      nextSeq: (group: number) => {
        const next = (this.seqs.get(group) ?? 0) + 1;
        this.seqs.set(group, next);
        return next;
      },
    };
  }
}
