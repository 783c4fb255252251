/**
 * PubSubRedisDict: a {@link RedisDict} whose every change is published, in the same atomic script
 * that writes it, on the namespace's channels (`<ns>/update` for values, `<ns>/delete` for
 * tombstones; with `shardedPubSub`, one pair per hash slot, published with SPUBLISH so an event
 * stays inside its shard). The format is in `docs/protocol.md`.
 *
 * @module
 */
import { booleanOption, integerOption, invalidOption } from './options.js';
import { type PublishTarget, REDIS_DICT_OPTION_KEYS, RedisDict, type RedisDictOptions } from './redis-dict.js';
import { channelsOf, shardedChannelsOf } from './subscriber.js';
import type { RedisClientLike } from './topology.js';

/** Options of {@link PubSubRedisDict}. */
export interface PubSubRedisDictOptions<V> extends RedisDictOptions<V> {
  /**
   * On a Cluster, publish with SPUBLISH on per-slot channels (`<ns>/update{tag}`) so events stay
   * inside their shard instead of being broadcast to every node. Every instance sharing the
   * namespace must use the same setting. Requires Redis 7. Default `false`.
   */
  shardedPubSub?: boolean;
  /**
   * Put values in update messages so that peers install them without a round trip. Switched on by a
   * {@link PubSubCacheManager} in `sync: 'update'` mode. Default `false`.
   */
  publishValues?: boolean;
  /** Values larger than this (encoded, bytes) are announced without their value. Default 64 KiB. */
  maxPublishedValueBytes?: number;
}

const OPTION_KEYS = [...REDIS_DICT_OPTION_KEYS, 'shardedPubSub', 'publishValues', 'maxPublishedValueBytes'] as const;

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

  /**
   * @param redis - an ioredis `Redis` or `Cluster`; the dictionary never closes it.
   * @param namespace - 1-128 characters from `[A-Za-z0-9_.:-]`.
   * @param options - see {@link PubSubRedisDictOptions}.
   */
  constructor(redis: RedisClientLike, namespace: string, options?: PubSubRedisDictOptions<V>) {
    super(redis, namespace, options);
    const where = 'PubSubRedisDict';
    this.shardedPubSub = booleanOption(where, 'shardedPubSub', options?.shardedPubSub, false);
    if (this.shardedPubSub && !this.isCluster) invalidOption(where, 'shardedPubSub', '`false` on a standalone server (sharded pub/sub needs a Cluster)', true);
    this.withValues = booleanOption(where, 'publishValues', options?.publishValues, false);
    this.maxPublishedValueBytes = integerOption(where, 'maxPublishedValueBytes', options?.maxPublishedValueBytes, 64 * 1024, 0);
    if (!this.shardedPubSub) this.classicTarget = this.makeTarget('PUBLISH', channelsOf(this.namespace));
  }

  protected override optionKeys(): readonly string[] {
    return OPTION_KEYS;
  }

  /** True when update messages carry values. */
  get publishValues(): boolean {
    return this.withValues;
  }

  /** Turns values in update messages on or off (a cache manager in `sync: 'update'` mode turns them on). */
  setPublishValues(enabled: boolean): void {
    this.withValues = booleanOption('PubSubRedisDict', 'publishValues', enabled, false);
  }

  /** Channel names: the pair of the namespace, or of one slot with sharded pub/sub. */
  channels(slot = 0): { update: string; delete: string } {
    return this.shardedPubSub ? shardedChannelsOf(this.namespace, slot) : channelsOf(this.namespace);
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
      target = this.makeTarget('SPUBLISH', shardedChannelsOf(this.namespace, slot));
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
