/**
 * RedisDict: an async `Map`-like dictionary stored in Redis under a namespace.
 *
 * Every write is a compare-and-set on the entry's version stamp, done by one Lua script per batch
 * and hash slot; deletes leave stamped tombstones (see `docs/protocol.md`).
 *
 * @module
 */
import { type Codec, msgpackCodec } from './codec.js';
import { ClockSkewError, CorruptDataError, InvalidArgumentError, SerializationError, asError, redisError } from './errors.js';
import { type DictKey, checkNamespace, normalizeKey, normalizeKeys } from './keys.js';
import { arrayHeader, encodeHeader, entryLength, type MessageType, writeEntry } from './messages.js';
import type { FrameSigner } from './signing.js';
import { checkOptions, describe, functionOption, integerOption, invalidOption } from './options.js';
import { MAX_EXPIRES_AT, type SplitRecord, changeHeaderLength, splitRecord, type VersionedValue, writeChange } from './record.js';
import { type FrameArg, FramedCommand, argLength, bulkLength, frameLength, writeArg, writeBulkHeader, writeCrlf, writeFrameStart } from './resp.js';
import { APPLY_LUA, APPLY_SHA, STAMPS_LUA, STAMPS_SHA } from './scripts/apply.js';
import { type CoalescedBatch, WriteCoalescer } from './write-coalescer.js';
import { HybridClock, MAX_DRIFT_MS, type Stamp, isStamp, parseStamp } from './stamp.js';
import type { ChainableCommander } from 'ioredis';
import { DEFAULT_RETRY_TIMEOUT_MS, type RedisClient, type RedisClientLike, chunk, clusterReady, groupBySlot, isCluster, runPerNode, scanTargets, slotOf, slotTag } from './topology.js';

/** A client or a pipeline: what a unit of work queues its command on. */
type Commands = ChainableCommander | RedisClient;

/** Options of {@link RedisDict}. */
export interface RedisDictOptions<V> {
  /** How values become bytes. Default: MessagePack ({@link msgpackCodec}), which refuses values it cannot round-trip. */
  codec?: Codec<V>;
  /** Largest encoded value accepted, in bytes; larger ones are refused with `E_VALUE_TOO_LARGE`. Default 1 MiB. */
  maxValueBytes?: number;
  /**
   * How long a delete's tombstone is kept, in ms. A write carrying an older stamp that arrives
   * later than this (a write-back flush delayed longer) can bring the deleted entry back.
   * Default 24 hours.
   */
  tombstoneTtlMs?: number;
  /** Most keys per script call or MGET. Default 500. */
  batchSize?: number;
  /** Wall clock in ms used for version stamps and expiry times; injectable for tests. Default `Date.now`. */
  clock?: () => number;
  /**
   * How far ahead of the Redis server's clock a change's stamp may be, in ms. A change stamped
   * further ahead (this writer's clock is ahead) is refused with `E_CLOCK_SKEW` and not written; a
   * stored stamp further ahead (written before, or by a server whose clock was ahead) counts as
   * older than any write. The hybrid clock also follows observed stamps only this far ahead of
   * its wall clock, and a cache drops message entries stamped further ahead of it. Every instance
   * sharing a namespace should use the same value. See `docs/consistency.md`.
   *
   * @defaultValue 60000 (one minute, {@link MAX_DRIFT_MS})
   */
  maxDriftMs?: number;
  /**
   * On a Cluster, how long (ms) a read, write or stamp read keeps being resent after MOVED, ASK,
   * TRYAGAIN, CLUSTERDOWN, LOADING or a dropped connection (a failover, a resharding), and waits
   * for its replies; then it fails with `E_CLUSTER`, `E_CONNECTION` or `E_TIMEOUT`. Ignored on a
   * standalone server (ioredis's own reconnection and `maxRetriesPerRequest` apply there).
   *
   * @defaultValue 20000 (longer than a failover under Redis's default `cluster-node-timeout` of 15 s)
   */
  retryTimeoutMs?: number;
  /**
   * Time to live of every value written without its own `ttlMs`, in ms: the key expires in Redis
   * (and in every near cache) that long after the write. 0 = no expiry.
   *
   * @defaultValue 0
   */
  defaultTtlMs?: number;
}

/** Keys of {@link RedisDictOptions}, for validation. */
export const REDIS_DICT_OPTION_KEYS = ['codec', 'maxValueBytes', 'tombstoneTtlMs', 'batchSize', 'clock', 'maxDriftMs', 'retryTimeoutMs', 'defaultTtlMs'] as const;

/** Options of one write: `set(key, value, options)` and `setMany(entries, options)` of every class. */
export interface SetOptions {
  /**
   * Time to live in ms: the entry expires at the write's time plus this, in Redis (PEXPIREAT) and
   * in every near cache, which stops serving it at that moment without waiting for a message.
   * 0 = no expiry.
   *
   * @defaultValue the dictionary's `defaultTtlMs`
   */
  ttlMs?: number;
}

/** Keys of {@link SetOptions}, for validation. */
export const SET_OPTION_KEYS = ['ttlMs'] as const;

/** One change for {@link RedisDict.writeVersioned}. */
export interface VersionedChange<V> {
  /** Dictionary key (already normalized). */
  readonly key: string;
  /** Stamp of the change. */
  readonly stamp: Stamp;
  /** Write only if the stored stamp is lower than this. Default: {@link VersionedChange.stamp} (last-writer-wins). */
  readonly guard?: Stamp;
  /** True to write a tombstone. */
  readonly deleted: boolean;
  /** The value, when not deleted. */
  readonly value?: V;
  /** The value already encoded by {@link RedisDict.encodeValue}, to avoid encoding it twice. */
  readonly payload?: Uint8Array;
  /** Expiry time of the value (ms since the epoch), fixed when the change was made; none when undefined or `Infinity`. */
  readonly expiresAt?: number | undefined;
}

/**
 * Hears the outcome of the change at `index` of a {@link RedisDict.writeVersioned} call as soon as
 * its batch has replied, while later batches may still be executing.
 */
export type OutcomeListener<V> = (index: number, outcome: WriteOutcome<V>) => void;

/** What Redis holds for a key, as found by a refused compare-and-set. */
export interface StoredState<V> {
  /** Stamp stored ('' when nothing, or foreign data, is stored). */
  readonly stamp: Stamp | '';
  /** True when the stored state is a tombstone or nothing. */
  readonly deleted: boolean;
  /** The stored value when live. */
  readonly value?: V;
  /** Expiry time of the stored value, when it has one. */
  readonly expiresAt?: number | undefined;
}

/** Outcome of one {@link VersionedChange}. */
export type WriteOutcome<V> =
  | { readonly status: 'written'; readonly existed: boolean }
  | { readonly status: 'conflict'; readonly stored: StoredState<V> }
  | { readonly status: 'failed'; readonly error: Error };

/** Where and how a batch is published; `undefined` for a dictionary that does not publish. */
export interface PublishTarget {
  readonly command: 'PUBLISH' | 'SPUBLISH';
  readonly updateChannel: string;
  readonly deleteChannel: string;
  /** Next sequence number of this writer for `group`. */
  nextSeq(group: number): number;
  /** True to put values in update messages. */
  readonly withValues: boolean;
  /** Largest value put in a message; larger ones are announced without their value. */
  readonly maxPublishedValueBytes: number;
  /** Signs the messages (`signingKeys`); `undefined` for unsigned messages. */
  readonly signer?: FrameSigner | undefined;
  /** The channel names as UTF-8 bytes, which the signature covers. */
  readonly updateChannelBytes?: Buffer;
  readonly deleteChannelBytes?: Buffer;
}

/** A validated, encoded change, as a batch of the apply script carries it. @internal */
export interface PreparedChange<V> {
  /** Position of the change in the call's list (outcomes are aligned with it). */
  readonly index: number;
  readonly change: VersionedChange<V>;
  readonly redisKey: string;
  /** The encoded value; `undefined` for a delete. The record is built when its batch is sent. */
  readonly payload: Uint8Array | undefined;
}

const EMPTY = Buffer.alloc(0);
/** Bytes of changes after which a batch is split, so that script arguments and messages stay small. */
const MAX_BATCH_BYTES = 1 << 20;

/**
 * An async dictionary stored in Redis: `get`, `set`, `has`, `delete`, batch operations, and
 * iteration over SCAN. Keys are stored as `<namespace>/<key>`.
 *
 * @typeParam V - type of the values.
 */
export class RedisDict<V = unknown> implements AsyncIterable<[string, V]> {
  /** The ioredis client (standalone or Cluster) this dictionary uses; the caller owns it. */
  readonly redis: RedisClient;
  /** The namespace. */
  readonly namespace: string;
  /** The hybrid logical clock that stamps this instance's writes. */
  readonly clock: HybridClock;
  /** The codec used for values. */
  readonly codec: Codec<V>;
  /** Largest encoded value accepted, in bytes. */
  readonly maxValueBytes: number;
  /** Tombstone lifetime, in ms. */
  readonly tombstoneTtlMs: number;
  /** Most keys per script call or MGET. */
  readonly batchSize: number;
  /** How far ahead of the Redis server's clock a stamp may be, in ms (see {@link RedisDictOptions.maxDriftMs}). */
  readonly maxDriftMs: number;
  /** True when {@link RedisDict.redis} is a Cluster. */
  readonly isCluster: boolean;
  /** On a Cluster, how long a command is resent through redirections and reconnections, in ms. */
  readonly retryTimeoutMs: number;
  /** Time to live of writes without their own `ttlMs`, in ms (0 = none). */
  readonly defaultTtlMs: number;
  /** @internal The wall clock (ms) of stamps and expiry times. */
  readonly wallClock: () => number;
  private readonly prefix: string;
  /**
   * The client's `keyPrefix` option ('' when none). ioredis adds it to the keys of the commands it
   * frames; the library adds it where ioredis does not: to the script calls it frames itself, to
   * the keys it computes hash slots of, and to SCAN patterns.
   */
  private readonly keyPrefix: string;
  /** `keyPrefix` + `<namespace>/` as bytes: what the framed script calls write before each key. */
  private readonly wirePrefix: Buffer;
  /**
   * Every write goes through it: concurrent calls to one slot group share script calls. Typed over
   * `unknown` so that the dictionary's value type stays covariant (a private member's type counts).
   */
  private readonly coalescer: WriteCoalescer<PreparedChange<unknown>, WriteOutcome<unknown>>;

  /**
   * @param redis - an ioredis `Redis` or `Cluster`; the dictionary never closes it.
   * @param namespace - 1-128 characters from `[A-Za-z0-9_.:-]`.
   * @param options - see {@link RedisDictOptions}.
   * @throws InvalidArgumentError `E_INVALID_NAMESPACE` or `E_INVALID_OPTION`.
   */
  constructor(redis: RedisClientLike, namespace: string, options?: RedisDictOptions<V>) {
    const where = new.target.name;
    this.namespace = checkNamespace(namespace);
    const opts = checkOptions(where, options, this.optionKeys());
    if (redis === null || typeof redis !== 'object' || typeof (redis as { pipeline?: unknown }).pipeline !== 'function') {
      invalidOption(where, 'redis', 'an ioredis Redis or Cluster', redis);
    }
    this.redis = redis as RedisClient;
    this.isCluster = isCluster(this.redis);
    const keyPrefix = (redis as { options?: { keyPrefix?: unknown } }).options?.keyPrefix;
    this.keyPrefix = typeof keyPrefix === 'string' ? keyPrefix : '';
    this.prefix = `${this.namespace}/`;
    this.wirePrefix = Buffer.from(this.keyPrefix + this.prefix, 'utf8');
    const codec = opts['codec'];
    if (codec !== undefined && (codec === null || typeof codec !== 'object' || typeof (codec as Codec<V>).encode !== 'function' || typeof (codec as Codec<V>).decode !== 'function')) {
      invalidOption(where, 'codec', 'an object with encode() and decode()', codec);
    }
    this.codec = (codec as Codec<V> | undefined) ?? msgpackCodec<V>();
    this.maxValueBytes = integerOption(where, 'maxValueBytes', opts['maxValueBytes'], 1 << 20);
    this.tombstoneTtlMs = integerOption(where, 'tombstoneTtlMs', opts['tombstoneTtlMs'], 86_400_000);
    this.batchSize = integerOption(where, 'batchSize', opts['batchSize'], 500);
    this.maxDriftMs = integerOption(where, 'maxDriftMs', opts['maxDriftMs'], MAX_DRIFT_MS, 0);
    this.retryTimeoutMs = integerOption(where, 'retryTimeoutMs', opts['retryTimeoutMs'], DEFAULT_RETRY_TIMEOUT_MS);
    this.wallClock = functionOption(where, 'clock', opts['clock'], Date.now);
    this.defaultTtlMs = integerOption(where, 'defaultTtlMs', opts['defaultTtlMs'], 0, 0);
    this.clock = new HybridClock(undefined, this.wallClock, this.maxDriftMs);
    this.coalescer = new WriteCoalescer<PreparedChange<unknown>, WriteOutcome<unknown>>({
      maxKeys: this.batchSize,
      maxBytes: MAX_BATCH_BYTES,
      keyOf: (p) => p.change.key,
      slotOf: this.isCluster ? (p) => slotOf(this.keyPrefix + p.redisKey) : () => 0,
      sizeOf: (p) => (p.payload?.length ?? 0) + changeHeaderLength(expiryOfChange(p.change)) + p.change.key.length,
      send: (batches, timeoutMs, onBatch) => this.sendBatches(batches as readonly CoalescedBatch<PreparedChange<V>>[], timeoutMs, onBatch),
      failure: (error, p) => ({ status: 'failed', error: redisError(error, p.change.key, 'the write') }),
      // An ACL key pattern refuses the whole call for one key; so does a malformed argument.
      splittable: (error) => /^(NOPERM|BADARGS)|^ERR The user executing the script can't/.test(error.message),
    });
  }

  /**
   * The expiry time of a write made now with `options` (its `ttlMs`, else `defaultTtlMs`), or
   * undefined for none. Refuses unknown options and bad values with `E_INVALID_OPTION`.
   *
   * @internal
   */
  expiryOf(where: string, options: SetOptions | undefined): number | undefined {
    let ttl = this.defaultTtlMs;
    if (options !== undefined) ttl = integerOption(where, 'ttlMs', checkOptions(where, options, SET_OPTION_KEYS)['ttlMs'], ttl, 0);
    if (ttl === 0) return undefined;
    const expiresAt = Math.floor(this.wallClock()) + ttl;
    if (!(expiresAt <= MAX_EXPIRES_AT)) invalidOption(where, 'ttlMs', 'a time to live that ends before the year 287,000', ttl);
    return expiresAt;
  }

  /** True when a value with this expiry time has expired by this dictionary's clock. @internal */
  isExpired(expiresAt: number | undefined): boolean {
    return expiresAt !== undefined && expiresAt <= this.wallClock();
  }

  /** Option names this class accepts; subclasses extend the list. */
  protected optionKeys(): readonly string[] {
    return REDIS_DICT_OPTION_KEYS;
  }

  /** Publishing of this dictionary's changes; none for a plain RedisDict. */
  protected publishTarget(_slot?: number): PublishTarget | undefined {
    return undefined;
  }

  /** Items grouped by the hash slot of their key as sent, the client's keyPrefix included. */
  private bySlot<T>(items: readonly T[], redisKeyOf: (item: T) => string): Map<number, T[]> {
    return groupBySlot(this.isCluster, items, (item) => this.keyPrefix + redisKeyOf(item));
  }

  /** The Redis key of a dictionary key. */
  redisKey(key: string): string {
    return this.prefix + key;
  }

  /**
   * The Redis key of the load lock of `key` (see `getOrSet`): `<namespace>#lock/<key>`, or on a
   * Cluster `<namespace>#lock{<tag>}/<key>` with a tag that puts it in the slot of the key. `#` is
   * not a namespace character, so the lock is outside every namespace's SCAN pattern.
   *
   * @internal
   */
  lockKey(key: string): string {
    if (!this.isCluster) return `${this.namespace}#lock/${key}`;
    return `${this.namespace}#lock{${slotTag(slotOf(this.keyPrefix + this.redisKey(key)))}}/${key}`;
  }

  /** Takes the load lock of `key` for `ttlMs` unless someone holds it; true when taken. @internal */
  async acquireLock(key: string, token: string, ttlMs: number): Promise<boolean> {
    return (await this.redis.set(this.lockKey(key), token, 'PX', ttlMs, 'NX')) === 'OK';
  }

  /** Releases the load lock of `key` if `token` still holds it. @internal */
  async releaseLock(key: string, token: string): Promise<void> {
    await this.redis.eval(RELEASE_LOCK_LUA, 1, this.lockKey(key), token);
  }

  /** Encodes a value with the codec; throws `E_SERIALIZE` / `E_VALUE_TOO_LARGE` naming the key. */
  encodeValue(key: string, value: V): Uint8Array {
    if (value === undefined) {
      throw new SerializationError('E_SERIALIZE', `Cannot store \`undefined\` under key \`${key}\` (use delete() or null)`, { key });
    }
    let payload: Uint8Array;
    try {
      payload = this.codec.encode(value);
    } catch (cause) {
      const reason = cause instanceof Error ? cause.message : String(cause);
      throw new SerializationError('E_SERIALIZE', `Cannot serialize the value of key \`${key}\`: ${reason}`, { key, cause });
    }
    if (!(payload instanceof Uint8Array)) {
      throw new SerializationError('E_SERIALIZE', `The codec returned no bytes for key \`${key}\``, { key });
    }
    if (payload.length > this.maxValueBytes) {
      throw new SerializationError('E_VALUE_TOO_LARGE', `The value of key \`${key}\` is ${payload.length} bytes, above \`maxValueBytes\` (${this.maxValueBytes})`, { key });
    }
    return payload;
  }

  /** Decodes a payload read from Redis or a message; throws {@link CorruptDataError} naming the key. */
  decodeValue(key: string, payload: Uint8Array): V {
    try {
      return this.codec.decode(payload);
    } catch (cause) {
      throw new CorruptDataError(key, 'the value cannot be decoded', { cause });
    }
  }

  // ---------------------------------------------------------------- Map-like API

  /** The value of `key`, or `undefined`. */
  async get(key: DictKey): Promise<V | undefined> {
    const [found] = await this.readVersioned([normalizeKey(key)]);
    return found?.value;
  }

  /**
   * Stores `value` under `key`.
   *
   * @param options - `ttlMs`: expire the entry that long after now (see {@link SetOptions}).
   * @throws InvalidArgumentError `E_INVALID_OPTION` for an unknown option or a bad `ttlMs`.
   */
  async set(key: DictKey, value: V, options?: SetOptions): Promise<void> {
    const k = normalizeKey(key);
    const expiresAt = this.expiryOf('set', options);
    const prepared = this.prepare([{ key: k, stamp: this.clock.now(), deleted: false, value, expiresAt }]);
    throwFailure(await this.applyPrepared(prepared));
  }

  /**
   * True when `key` has a value. Reads the record, not the value: a record whose payload cannot be
   * decoded counts as present; data not written by this library rejects with `E_CORRUPT`.
   */
  async has(key: DictKey): Promise<boolean> {
    const k = normalizeKey(key);
    // MGET, not EXISTS (which counts tombstones); the value is not decoded.
    const [record] = await this.readRecords([k]);
    return record !== undefined;
  }

  /** Deletes `key` (leaving a tombstone); true when it had a value. */
  async delete(key: DictKey): Promise<boolean> {
    return (await this.deleteMany([key])) === 1;
  }

  /** Values of `keys`, aligned with them (`undefined` for missing keys). One round trip per node. */
  async getMany(keys: Iterable<DictKey>): Promise<(V | undefined)[]> {
    const found = await this.readVersioned(normalizeKeys(keys));
    return found.map((f) => f?.value);
  }

  /** Stores every `[key, value]` pair, with the same `ttlMs` if given; all are validated before anything is written. */
  async setMany(entries: Iterable<readonly [DictKey, V]>, options?: SetOptions): Promise<void> {
    const expiresAt = this.expiryOf('setMany', options);
    const changes = collectEntries(entries).map(([key, value]) => ({ key, stamp: this.clock.now(), deleted: false, value, expiresAt }));
    throwFailure(await this.applyPrepared(this.prepare(lastPerKey(changes))));
  }

  /** Deletes every key; returns how many had a value. */
  async deleteMany(keys: Iterable<DictKey>): Promise<number> {
    const unique = [...new Set(normalizeKeys(keys))];
    const outcomes = await this.applyPrepared(this.prepare(unique.map((key) => ({ key, stamp: this.clock.now(), deleted: true }))));
    throwFailure(outcomes);
    return outcomes.filter((o) => o.status === 'written' && o.existed).length;
  }

  /** Number of live entries (SCAN over every master; tombstones are not counted). */
  async size(): Promise<number> {
    let count = 0;
    for await (const batch of this.scanBatches()) count += batch.length;
    return count;
  }

  /** Deletes every entry of this namespace (and only of it), leaving tombstones. */
  async clear(): Promise<void> {
    for await (const batch of this.scanBatches()) {
      await this.deleteMany(batch);
    }
  }

  /** Keys, over SCAN: each live key once; keys written during the iteration may or may not appear. */
  async *keys(): AsyncGenerator<string, void, undefined> {
    for await (const batch of this.scanBatches()) yield* batch;
  }

  /** Values, over SCAN (see {@link RedisDict.keys}). */
  async *values(): AsyncGenerator<V, void, undefined> {
    for await (const [, value] of this.entries()) yield value;
  }

  /** `[key, value]` pairs, over SCAN (see {@link RedisDict.keys}). */
  async *entries(): AsyncGenerator<[string, V], void, undefined> {
    for await (const batch of this.scanBatches()) {
      const found = await this.readVersioned(batch);
      for (let i = 0; i < batch.length; i++) {
        const f = found[i];
        if (f !== undefined) yield [batch[i]!, f.value];
      }
    }
  }

  /** Same as {@link RedisDict.entries}. */
  [Symbol.asyncIterator](): AsyncGenerator<[string, V], void, undefined> {
    return this.entries();
  }

  // ---------------------------------------------------------------- versioned low-level API

  /**
   * Reads values with their stamps, aligned with `keys` (`undefined` for missing or deleted).
   * One MGET per slot and chunk, pipelined per node. Observes every stamp read.
   *
   * @throws CorruptDataError when a stored record cannot be decoded.
   */
  async readVersioned(keys: readonly string[]): Promise<(VersionedValue<V> | undefined)[]> {
    const records = await this.readRecords(keys);
    return records.map((record, i) =>
      record === undefined
        ? undefined
        : record.expiresAt === undefined
          ? { stamp: record.stamp, value: this.decodeValue(keys[i]!, record.payload) }
          : { stamp: record.stamp, value: this.decodeValue(keys[i]!, record.payload), expiresAt: record.expiresAt },
    );
  }

  /**
   * The stored records of `keys` (stamp, expiry and undecoded payload), aligned with them;
   * `undefined` for missing, deleted or expired by this dictionary's clock (Redis may not have
   * expired the key yet, its clock may be behind). Observes every stamp read.
   *
   * @throws CorruptDataError when a stored value is not a record of this library.
   */
  private async readRecords(keys: readonly string[]): Promise<(SplitRecord | undefined)[]> {
    const out: (SplitRecord | undefined)[] = new Array(keys.length).fill(undefined);
    if (keys.length === 0) return out;
    const indexed = keys.map((key, index) => ({ key, index, redisKey: this.redisKey(key) }));
    const units = [...this.bySlot(indexed, (i) => i.redisKey)].flatMap(([slot, items]) =>
      chunk(items, this.batchSize).map((part) => ({
        slot,
        part,
        weight: part.length,
        queue: (p: Commands) => p.mgetBuffer(...part.map((i) => i.redisKey)),
      })),
    );
    const replies = await runPerNode(this.redis, units, undefined, { timeoutMs: this.retryTimeoutMs });
    units.forEach((unit, u) => {
      const [err, values] = replies[u]!;
      if (err) throw redisError(err, unit.part[0]?.key, 'the read');
      (values as (Buffer | null)[]).forEach((raw, j) => {
        const { key, index } = unit.part[j]!;
        if (raw === null) return;
        const record = splitRecord(key, raw);
        this.clock.observe(record.stamp);
        if (record.expiresAt === undefined || !this.isExpired(record.expiresAt)) out[index] = record;
      });
    });
    return out;
  }

  /**
   * Writes changes as compare-and-set on their stamps, one script call per slot and batch,
   * published when this dictionary publishes. Validates and encodes everything first; per key, the
   * outcome says whether it was written, refused because Redis holds a stamp at or above the
   * guard, or failed (Redis error). Changes must name distinct keys.
   *
   * Concurrent calls share script calls: a call made while an earlier write to the same slot group
   * is in flight waits for it and is sent with the other calls that waited (see
   * `src/write-coalescer.ts`); its outcomes are its own, and two writes of one key are applied in
   * the order they were made. A call to an idle group is sent at once.
   *
   * @param onOutcome - optional: hears each outcome as soon as its batch replies, so that a large
   *   write can be followed up while its later batches still execute.
   * @throws SerializationError before anything is written, when a value cannot be stored.
   */
  async writeVersioned(changes: readonly VersionedChange<V>[], onOutcome?: OutcomeListener<V>): Promise<WriteOutcome<V>[]> {
    return this.applyPrepared(this.prepare(changes), onOutcome);
  }

  /** Validates and encodes; throws before anything is written. */
  protected prepare(changes: readonly VersionedChange<V>[]): PreparedChange<V>[] {
    return changes.map((change, index) => {
      if (!isStamp(change.stamp) || (change.guard !== undefined && !GUARD_PATTERN.test(change.guard))) {
        throw new InvalidArgumentError('E_INVALID_ARGUMENT', `The change of key \`${change.key}\` has a malformed stamp or guard`);
      }
      const redisKey = this.redisKey(change.key);
      if (change.deleted) return { index, change, redisKey, payload: undefined };
      return { index, change, redisKey, payload: change.payload ?? this.encodeValue(change.key, change.value as V) };
    });
  }

  /**
   * Writes prepared changes through the {@link WriteCoalescer}: concurrent calls to one slot group
   * share script calls, and each call hears its own outcomes.
   */
  private applyPrepared(prepared: readonly PreparedChange<V>[], onOutcome?: OutcomeListener<V>): Promise<WriteOutcome<V>[]> {
    return this.coalescer.write(prepared, this.retryTimeoutMs, onOutcome as OutcomeListener<unknown> | undefined) as Promise<WriteOutcome<V>[]>;
  }

  /** Sends batches of the coalescer, one apply-script call each, pipelined per node (the coalescer's `send`). */
  private async sendBatches(batches: readonly CoalescedBatch<PreparedChange<V>>[], timeoutMs: number, onBatch: (index: number, result: readonly WriteOutcome<V>[] | Error) => void): Promise<void> {
    const units = batches.map(({ slot, items }) => new ApplyUnit(slot, items, this.publishTarget(slot), this.tombstoneTtlMs, this.maxDriftMs, this.clock.nodeId, this.keyPrefix, this.wirePrefix));
    const reported = new Uint8Array(units.length);
    const report = (u: number, failure: Error | null, reply: unknown): void => {
      if (reported[u] === 1) return;
      reported[u] = 1;
      let result: readonly WriteOutcome<V>[] | Error;
      try {
        result = failure ?? this.outcomesOf(units[u]!, reply);
      } catch (error) {
        // A reply of an unexpected shape fails its batch, not the other batches of the send.
        result = asError(error);
      }
      onBatch(u, result);
    };
    try {
      // Redirections, retries and NOSCRIPT are handled by runPerNode; a resent write is a no-op
      // when its first attempt was applied (compare-and-set on its own stamp, see outcomeOf).
      const results = await runPerNode(
        this.redis,
        units,
        (done, replies) => {
          for (const u of done) {
            const [err, reply] = replies[u]!;
            report(u, err, reply);
          }
        },
        { timeoutMs },
      );
      // Every unit is reported through the callback; should one not be, its result still settles
      // its callers (the coalescer's callers wait for it).
      for (let u = 0; u < units.length; u++) {
        if (reported[u] === 0) {
          const [err, reply] = results[u] ?? [new Error('No reply for the write'), undefined];
          report(u, err, reply);
        }
      }
    } catch (error) {
      // Nothing was sent (no cluster slot map, say): every change failed.
      for (let u = 0; u < units.length; u++) if (reported[u] === 0) report(u, asError(error), undefined);
    }
  }

  /** Outcomes of one script call's reply, aligned with its changes. */
  private outcomesOf(unit: ApplyUnit<V>, reply: unknown): WriteOutcome<V>[] {
    const { part } = unit;
    // The single integer 2: every key was new and written (the script's fast path).
    if (reply === 2) return part.map(() => WRITTEN_NEW);
    const list = reply as unknown[];
    return part.map((p, j) => this.outcomeOf(p.change, list[j]));
  }

  private outcomeOf(change: VersionedChange<V>, reply: unknown): WriteOutcome<V> {
    const { key } = change;
    if (reply === 1) return WRITTEN_OVER_VALUE;
    if (reply === 2) return WRITTEN_NEW;
    if (!Array.isArray(reply)) return { status: 'failed', error: new Error(`Unexpected script reply for key \`${key}\``) };
    if (reply[0] === 3 && typeof reply[1] === 'number') {
      // Refused: the change's stamp is more than maxDriftMs ahead of the server's clock.
      return { status: 'failed', error: new ClockSkewError(key, change.stamp, parseStamp(change.stamp).ms, reply[1], this.maxDriftMs) };
    }
    const stampRaw: unknown = reply[0];
    const stamp = Buffer.isBuffer(stampRaw) ? stampRaw.toString('latin1') : String(stampRaw ?? '');
    if (stamp !== '') this.clock.observe(stamp);
    // Redis holds this very change (stamps are unique per writer): an earlier attempt of the same
    // call (resent after a dropped connection or a failover), or of an earlier flush, was applied.
    // Whether a value existed before it is not known any more: reported as not.
    if (stamp === change.stamp) return WRITTEN_NEW;
    const raw: unknown = reply[1];
    if (!Buffer.isBuffer(raw)) return { status: 'conflict', stored: { stamp, deleted: true } };
    try {
      const { payload, expiresAt } = splitRecord(key, raw);
      const value = this.decodeValue(key, payload);
      return { status: 'conflict', stored: expiresAt === undefined ? { stamp, deleted: false, value } : { stamp, deleted: false, value, expiresAt } };
    } catch (error) {
      // A newer record whose value cannot be decoded: this key fails, the rest of the batch stands.
      return { status: 'failed', error: asError(error) };
    }
  }

  /**
   * Stamps stored for `keys`, aligned with them: a live record's stamp, `''` for nothing or a
   * tombstone, `undefined` for foreign data. Reads 35 bytes per key, not the values; one script
   * call per slot and chunk, pipelined per node.
   */
  async readStamps(keys: readonly string[]): Promise<(Stamp | '' | undefined)[]> {
    const out: (Stamp | '' | undefined)[] = new Array(keys.length).fill('');
    if (keys.length === 0) return out;
    const indexed = keys.map((key, index) => ({ key, index }));
    const units = [...this.bySlot(indexed, (i) => this.redisKey(i.key))].flatMap(([slot, items]) =>
      chunk(items, this.batchSize).map((part) => {
        const redisKeys = part.map((i) => this.redisKey(i.key));
        return {
          slot,
          part,
          redisKeys,
          weight: part.length,
          queue: (p: Commands) => p.call('EVALSHA', [STAMPS_SHA, redisKeys.length, ...redisKeys]),
          queueScript: (p: Commands) => p.call('EVAL', [STAMPS_LUA, redisKeys.length, ...redisKeys]),
        };
      }),
    );
    const replies = await runPerNode(this.redis, units, undefined, { timeoutMs: this.retryTimeoutMs });
    units.forEach((unit, u) => {
      const [err, reply] = replies[u]!;
      if (err) throw redisError(err, unit.part[0]?.key, 'the read of stamps');
      (reply as string[]).forEach((stamp, j) => {
        const { index } = unit.part[j]!;
        out[index] = stamp === '?' ? undefined : stamp.startsWith('t') ? '' : stamp;
      });
    });
    return out;
  }

  /** Live keys of this namespace in batches, each key once (SCAN MATCH `<ns>/*` TYPE string on every master). */
  protected async *scanBatches(): AsyncGenerator<string[], void, undefined> {
    if (isCluster(this.redis) && this.redis.status !== 'ready') await clusterReady(this.redis);
    const seen = new Set<string>();
    // ioredis adds a client keyPrefix to the keys of commands, not to SCAN patterns nor to the
    // names SCAN returns: both are handled here (the prefix's glob characters escaped).
    const pattern = `${this.keyPrefix.replace(/[*?[\]\\]/g, '\\$&')}${this.prefix}*`;
    const cut = this.keyPrefix.length + this.prefix.length;
    for (const node of scanTargets(this.redis)) {
      let cursor = '0';
      do {
        const [next, found] = await node.scan(cursor, 'MATCH', pattern, 'COUNT', 1000, 'TYPE', 'string').catch((error: unknown) => {
          throw redisError(asError(error), undefined, 'SCAN');
        });
        cursor = next;
        const batch: string[] = [];
        for (const redisKey of found) {
          const key = redisKey.slice(cut);
          if (!seen.has(key)) {
            seen.add(key);
            batch.push(key);
          }
        }
        if (batch.length > 0) yield batch;
      } while (cursor !== '0');
    }
  }
}

/** Deletes a lock (KEYS[1]) only if it still holds the caller's token (ARGV[1]). */
const RELEASE_LOCK_LUA = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/** Outcome of a change written over a live value (shared: outcomes are read-only). */
const WRITTEN_OVER_VALUE = { status: 'written', existed: true } as const;
/** Outcome of a change written where no live value was. */
const WRITTEN_NEW = { status: 'written', existed: false } as const;

/**
 * One call of the apply script: a batch of one slot. It is built on first use, right before it is
 * sent, so that message sequence numbers are taken in the order the calls are sent and a large
 * flush is encoded while the server executes the batches already sent. The call is framed here,
 * in one buffer (see resp.ts), and sent as a {@link FramedCommand}.
 *
 * Exported for the protocol conformance vectors (`scripts/protocol-vectors.ts`), which take the
 * script arguments from it. @internal
 */
export class ApplyUnit<V> {
  readonly weight: number;
  private built: BuiltBatch | undefined;

  constructor(
    readonly slot: number,
    readonly part: readonly PreparedChange<V>[],
    private readonly target: PublishTarget | undefined,
    private readonly tombstoneTtlMs: number,
    private readonly maxDriftMs: number,
    private readonly origin: string,
    /** The client's own `keyPrefix` (ioredis adds it to the keys of the commands it frames; so do we). */
    private readonly keyPrefix: string,
    /** `keyPrefix` + `<namespace>/` as bytes, written before each key. */
    private readonly wirePrefix: Buffer,
  ) {
    this.weight = part.length;
  }

  queue(client: Commands): unknown {
    return (client as { sendCommand(command: FramedCommand): unknown }).sendCommand(this.command('evalsha', APPLY_SHA));
  }

  /** The call with the script's source, after NOSCRIPT. */
  queueScript(client: Commands): unknown {
    return (client as { sendCommand(command: FramedCommand): unknown }).sendCommand(this.command('eval', APPLY_LUA));
  }

  /** The call with the script's sha (`evalsha`) or its source (`eval`, after NOSCRIPT). */
  command(name: 'evalsha' | 'eval', script: string): FramedCommand {
    const built = (this.built ??= this.build());
    // ioredis routes the command by its first key; every key of the batch is in the same slot.
    return new FramedCommand(name, [script, 1, this.keyPrefix + this.part[0]!.redisKey], this.frame(name, script, built));
  }

  /** Everything but the keys and changes: the script's fixed arguments (see {@link APPLY_LUA}). */
  private build(): BuiltBatch {
    const { part, target, slot } = this;
    const n = part.length;
    let guarded = false;
    let valuesOnly = true;
    // UTF-8 length of each key, measured once: for the message entries and for the frame.
    const keyBytes = new Int32Array(n);
    for (let j = 0; j < n; j++) {
      const p = part[j]!;
      if (guardArg(p.change) !== '') guarded = true;
      if (p.payload === undefined) valuesOnly = false;
      keyBytes[j] = Buffer.byteLength(p.change.key, 'utf8');
    }
    let updateHeader: Buffer = EMPTY;
    let deleteHeader: Buffer = EMPTY;
    let updates: Buffer = EMPTY;
    let deletes: Buffer = EMPTY;
    let lengths: Buffer = EMPTY;
    if (target) {
      // Sizes first, then each kind's entries written into one buffer.
      const published = new Array<Uint8Array | undefined>(n);
      let updateBytes = 0;
      let deleteBytes = 0;
      lengths = Buffer.allocUnsafe(4 * n);
      for (let j = 0; j < n; j++) {
        const { change, payload } = part[j]!;
        const withValue = target.withValues && payload !== undefined && payload.length <= target.maxPublishedValueBytes;
        published[j] = withValue ? payload : undefined;
        const size = entryLength(keyBytes[j]!, change.stamp, published[j], expiryOfChange(change));
        lengths.writeUInt32BE(size, 4 * j);
        if (change.deleted) deleteBytes += size;
        else updateBytes += size;
      }
      if (updateBytes > 0) updates = Buffer.allocUnsafe(updateBytes);
      if (deleteBytes > 0) deletes = Buffer.allocUnsafe(deleteBytes);
      let u = 0;
      let d = 0;
      for (let j = 0; j < n; j++) {
        const { change } = part[j]!;
        if (change.deleted) d = writeEntry(deletes, d, change.key, keyBytes[j]!, change.stamp, published[j]);
        else u = writeEntry(updates, u, change.key, keyBytes[j]!, change.stamp, published[j], expiryOfChange(change));
      }
      // Sequence numbers are taken here, right before the call is sent (update first).
      const signer = target.signer;
      if (updateBytes > 0) updateHeader = encodeHeader('u' satisfies MessageType, this.origin, target.nextSeq(slot), slot, signer !== undefined);
      if (deleteBytes > 0) deleteHeader = encodeHeader('d' satisfies MessageType, this.origin, target.nextSeq(slot), slot, signer !== undefined);
      if (signer !== undefined) {
        // Signed: the header argument starts with the two tags of the whole message (every entry),
        // 'all applied' then 'partly refused'; the script appends one of them (see APPLY_LUA).
        let deleteCount = 0;
        for (let j = 0; j < n; j++) if (part[j]!.change.deleted) deleteCount++;
        if (updateBytes > 0) updateHeader = Buffer.concat([signer.tags(target.updateChannelBytes!, [updateHeader, arrayHeader(n - deleteCount), updates]), updateHeader]);
        if (deleteBytes > 0) deleteHeader = Buffer.concat([signer.tags(target.deleteChannelBytes!, [deleteHeader, arrayHeader(deleteCount), deletes]), deleteHeader]);
      }
    }
    const fixed: FrameArg[] = [
      this.tombstoneTtlMs,
      target?.command ?? '',
      target?.updateChannel ?? '',
      target?.deleteChannel ?? '',
      updateHeader,
      deleteHeader,
      updates,
      deletes,
      lengths,
      guarded ? '1' : '',
      valuesOnly ? '1' : '',
      this.maxDriftMs,
    ];
    return { fixed, guarded, keyBytes };
  }

  /**
   * `<name> <script> <n> <keys…> <fixed arguments…> <changes…> [<guards…>]` in RESP, in one buffer:
   * each change is the record to store (`v`, stamp, payload) or `t` and the stamp of a tombstone,
   * written straight into the frame.
   */
  private frame(name: string, script: string, { fixed, guarded, keyBytes }: BuiltBatch): Buffer {
    const { part, wirePrefix } = this;
    const n = part.length;
    const guards = guarded ? part.map((p) => guardArg(p.change)) : [];
    const head = [script, n];
    const count = head.length + n + fixed.length + n + guards.length;
    const prefixBytes = wirePrefix.length;
    let size = frameLength(name, count);
    for (const arg of head) size += argLength(arg);
    for (let j = 0; j < n; j++) size += bulkLength(prefixBytes + keyBytes[j]!);
    for (const arg of fixed) size += argLength(arg);
    for (const p of part) size += bulkLength(changeHeaderLength(expiryOfChange(p.change)) + (p.payload?.length ?? 0));
    for (const guard of guards) size += argLength(guard);
    const out = Buffer.allocUnsafe(size);
    let at = writeFrameStart(out, name, count);
    for (const arg of head) at = writeArg(out, at, arg);
    for (let j = 0; j < n; j++) {
      at = writeBulkHeader(out, at, prefixBytes + keyBytes[j]!);
      out.set(wirePrefix, at);
      at += prefixBytes;
      at += out.write(part[j]!.change.key, at, keyBytes[j]!, 'utf8');
      at = writeCrlf(out, at);
    }
    for (const arg of fixed) at = writeArg(out, at, arg);
    for (const p of part) {
      const { change, payload } = p;
      const expiresAt = expiryOfChange(change);
      at = writeBulkHeader(out, at, changeHeaderLength(expiresAt) + (payload?.length ?? 0));
      at = writeCrlf(out, writeChange(out, at, change.stamp, payload, expiresAt));
    }
    for (const guard of guards) at = writeArg(out, at, guard);
    if (at !== size) throw new Error(`apply frame: wrote ${at} bytes of ${size}`);
    return out;
  }
}

/** A guard: a stamp, possibly followed by `g` (just above that stamp: see the write-back manager). */
const GUARD_PATTERN = /^[0-9a-f]{34}g?$/;

/** The expiry time a change stores: its own for a value, none for a tombstone. */
function expiryOfChange(change: VersionedChange<unknown>): number | undefined {
  const { expiresAt } = change;
  return change.deleted || expiresAt === undefined || expiresAt === Infinity ? undefined : expiresAt;
}

/** The guard argument of a change for the apply script: '' when it is the change's own stamp. */
function guardArg(change: VersionedChange<unknown>): string {
  return change.guard === undefined || change.guard === change.stamp ? '' : change.guard;
}

/** What {@link ApplyUnit} builds once per call, NOSCRIPT retry included. */
interface BuiltBatch {
  readonly fixed: FrameArg[];
  readonly guarded: boolean;
  /** UTF-8 length of each key of the batch (without any prefix). */
  readonly keyBytes: Int32Array;
}

function throwFailure(outcomes: readonly WriteOutcome<unknown>[]): void {
  for (const outcome of outcomes) if (outcome?.status === 'failed') throw outcome.error;
}

/** Collects and validates `[key, value]` pairs (keys normalized); throws before anything is written. */
export function collectEntries<V>(entries: Iterable<readonly [DictKey, V]>): [string, V][] {
  if (entries === null || typeof entries !== 'object' || typeof (entries as Iterable<unknown>)[Symbol.iterator] !== 'function') {
    throw new InvalidArgumentError('E_INVALID_ARGUMENT', `Expected an iterable of [key, value] pairs, got ${describe(entries)}`);
  }
  return Array.from(entries, (entry) => {
    if (!Array.isArray(entry) || entry.length !== 2) {
      throw new InvalidArgumentError('E_INVALID_ARGUMENT', `Expected every entry to be a [key, value] pair, got ${describe(entry)}`);
    }
    return [normalizeKey(entry[0]), entry[1] as V];
  });
}

/** Keeps the last change of each key (a batch writes each key once). */
export function lastPerKey<T extends { key: string }>(changes: readonly T[]): T[] {
  const byKey = new Map<string, T>();
  for (const change of changes) {
    byKey.delete(change.key);
    byKey.set(change.key, change);
  }
  return [...byKey.values()];
}
