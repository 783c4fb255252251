/**
 * RedisDict: an async `Map`-like dictionary stored in Redis under a namespace.
 *
 * Every write is a compare-and-set on the entry's version stamp, done by one Lua script per batch
 * and hash slot; deletes leave stamped tombstones (see `docs/protocol.md`).
 *
 * @module
 */
import { type Codec,} from '../protocol/codec.js';
import { CorruptDataError, InvalidArgumentError, SerializationError, asError, redisError } from '../errors.js';
import { type DictKey, checkNamespace, normalizeKey, normalizeKeys } from '../protocol/keys.js';
import { checkOptions, describe, integerOption, invalidOption } from '../options.js';
import { MAX_EXPIRES_AT, type SplitRecord, splitRecord, type VersionedValue } from '../protocol/record.js';
import { resolveRedisDictOptions } from './resolve-options.js';
import { ApplyUnit, applyOutcome, changeSize, GUARD_PATTERN, MAX_BATCH_BYTES, type OutcomeContext, RELEASE_LOCK_LUA, stampOfReply, stampsCall, WRITTEN_NEW } from './scripts.js';
import { type CoalescedBatch, WriteCoalescer } from './write-coalescer.js';
import { type OutcomeListener, type PreparedChange, type PublishTarget, SET_OPTION_KEYS, type SetOptions, type VersionedChange, type WriteOutcome } from './types.js';
import { HybridClock, type Stamp, isStamp } from '../protocol/stamp.js';
import { type Commands, type RedisClient, type RedisClientLike, chunk, clusterReady, groupBySlot, isCluster, runPerNode, scanTargets, slotOf } from './topology.js';
import { slotTag } from '../protocol/channels.js';
import { FramedCommand, bulkLength, frameLength, writeFrameStart, writePrefixedKey } from './resp.js';

/** Options of {@link RedisDict}. */
export interface RedisDictOptions<V> {
  /**
   * How values become bytes. Default: MessagePack ({@link msgpackCodec}), which refuses values it cannot round-trip.
   *
   * @defaultValue MessagePack ({@link msgpackCodec})
   */
  codec?: Codec<V>;
  /**
   * Largest encoded value accepted, in bytes; larger ones are refused with `E_VALUE_TOO_LARGE`.
   *
   * @defaultValue `1048576` (1 MiB)
   */
  maxValueBytes?: number;
  /**
   * How long a delete's tombstone is kept, in ms. A write carrying an older stamp that arrives
   * later than this (a write-back flush delayed longer) can bring the deleted entry back.
   * Default 24 hours.
   *
   * @defaultValue `86400000` (24 hours)
   */
  tombstoneTtlMs?: number;
  /**
   * Most keys per script call or MGET.
   *
   * @defaultValue `500`
   */
  batchSize?: number;
  /**
   * Wall clock in ms used for version stamps and expiry times; injectable for tests. Default `Date.now`.
   *
   * @defaultValue `Date.now`
   */
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
  /** What {@link applyOutcome} needs of this dictionary: its clock and its decoder. */
  private readonly outcomeContext: OutcomeContext<V>;

  /**
   * @param redis - an ioredis `Redis` or `Cluster`; the dictionary never closes it.
   * @param namespace - 1-128 characters from `[A-Za-z0-9_.:-]`.
   * @param options - see {@link RedisDictOptions}.
   * @throws InvalidArgumentError `E_INVALID_NAMESPACE` or `E_INVALID_OPTION`.
   */
  constructor(redis: RedisClientLike, namespace: string, options?: RedisDictOptions<V>) {
    const where = new.target.name;
    this.namespace = checkNamespace(namespace);
    const o = resolveRedisDictOptions<V>(options, where);
    if (redis === null || typeof redis !== 'object' || typeof (redis as { pipeline?: unknown }).pipeline !== 'function') {
      invalidOption(where, 'redis', 'an ioredis Redis or Cluster', redis);
    }
    this.redis = redis as RedisClient;
    this.isCluster = isCluster(this.redis);
    const keyPrefix = (redis as { options?: { keyPrefix?: unknown } }).options?.keyPrefix;
    this.keyPrefix = typeof keyPrefix === 'string' ? keyPrefix : '';
    this.prefix = `${this.namespace}/`;
    this.wirePrefix = Buffer.from(this.keyPrefix + this.prefix, 'utf8');
    this.codec = o.codec;
    this.maxValueBytes = o.maxValueBytes;
    this.tombstoneTtlMs = o.tombstoneTtlMs;
    this.batchSize = o.batchSize;
    this.maxDriftMs = o.maxDriftMs;
    this.retryTimeoutMs = o.retryTimeoutMs;
    this.wallClock = o.clock;
    this.defaultTtlMs = o.defaultTtlMs;
    this.clock = new HybridClock(undefined, this.wallClock, this.maxDriftMs);
    this.outcomeContext = { maxDriftMs: this.maxDriftMs, observe: (stamp) => this.clock.observe(stamp), decodeValue: (key, payload) => this.decodeValue(key, payload) };
    this.coalescer = new WriteCoalescer<PreparedChange<unknown>, WriteOutcome<unknown>>({
      maxKeys: this.batchSize,
      maxBytes: MAX_BATCH_BYTES,
      keyOf: (p) => p.change.key,
      slotOf: this.isCluster ? (p) => slotOf(this.keyPrefix + p.redisKey) : () => 0,
      sizeOf: changeSize,
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
   * MGET answers nil for a key of another Redis type, so each MGET goes with an EXISTS of its keys
   * in the same round trip; only when EXISTS counts more keys than MGET found (a tombstone, or data
   * of another type) are those nil keys classified, in one more round trip ({@link classifyNilKeys}).
   *
   * @throws CorruptDataError when a stored value is not a record of this library, whatever its type.
   */
  private async readRecords(keys: readonly string[]): Promise<(SplitRecord | undefined)[]> {
    const out: (SplitRecord | undefined)[] = new Array(keys.length).fill(undefined);
    if (keys.length === 0) return out;
    const indexed = keys.map((key, index) => ({ key, index, redisKey: this.redisKey(key) }));
    // Per slot and chunk two units, MGET then EXISTS of the same keys: same slot, so same node,
    // sent together (one pipeline, or consecutive chunks of one send). Both are framed here, the
    // keys' bytes written once for the two (see resp.ts); a resend reuses the frames.
    const units = [...this.bySlot(indexed, (i) => i.redisKey)].flatMap(([slot, items]) =>
      chunk(items, this.batchSize).flatMap((part) => {
        const frames = new ReadFrames(this.wirePrefix, this.keyPrefix + part[0]!.redisKey, part);
        return [
          { slot, part, weight: part.length, queue: (p: Commands) => send(p, frames.command('mget')) },
          { slot, part, weight: part.length, queue: (p: Commands) => send(p, frames.command('exists')) },
        ];
      }),
    );
    const replies = await runPerNode(this.redis, units, undefined, { timeoutMs: this.retryTimeoutMs });
    let suspects: { key: string; redisKey: string }[] | undefined;
    for (let u = 0; u < units.length; u += 2) {
      const unit = units[u]!;
      const [err, values] = replies[u]!;
      if (err) throw redisError(err, unit.part[0]?.key, 'the read');
      const [existsErr, existing] = replies[u + 1]!;
      if (existsErr) throw redisError(existsErr, unit.part[0]?.key, 'the read');
      let found = 0;
      (values as (Buffer | null)[]).forEach((raw, j) => {
        const { key, index } = unit.part[j]!;
        if (raw === null) return;
        found++;
        const record = splitRecord(key, raw);
        this.clock.observe(record.stamp);
        if (record.expiresAt === undefined || !this.isExpired(record.expiresAt)) out[index] = record;
      });
      if ((existing as number) > found) {
        suspects ??= [];
        (values as (Buffer | null)[]).forEach((raw, j) => {
          if (raw === null) suspects!.push(unit.part[j]!);
        });
      }
    }
    if (suspects !== undefined) await this.classifyNilKeys(suspects);
    return out;
  }

  /**
   * Classifies keys that MGET answered nil for while some of them exist: a tombstone (a hash whose
   * field `s` is a stamp) or nothing reads as missing; anything else (a list, set, sorted set,
   * stream, a hash without a valid stamp) rejects with {@link CorruptDataError} naming the key.
   * One round trip: `HGET <key> s` then `TYPE <key>` per key, pipelined per node.
   *
   * The two replies are read so that the library's own transitions in between (a tombstone written
   * over by a record, a record deleted into a tombstone, an expiry) never look foreign: only a type
   * the library never writes, or a hash without a stamp, counts.
   */
  private async classifyNilKeys(suspects: readonly { key: string; redisKey: string }[]): Promise<void> {
    const unique = [...new Map(suspects.map((s) => [s.key, s])).values()];
    const units = [...this.bySlot(unique, (s) => s.redisKey)].flatMap(([slot, items]) =>
      items.flatMap((item) => [
        { slot, item, queue: (p: Commands) => p.hget(item.redisKey, 's') },
        { slot, item, queue: (p: Commands) => p.type(item.redisKey) },
      ]),
    );
    const replies = await runPerNode(this.redis, units, undefined, { timeoutMs: this.retryTimeoutMs });
    for (let u = 0; u < units.length; u += 2) {
      const { key } = units[u]!.item;
      const [hgetErr, field] = replies[u]!;
      const [typeErr, type] = replies[u + 1]!;
      if (typeErr) throw redisError(typeErr, key, 'the read');
      const wrongType = hgetErr !== null && hgetErr.message.startsWith('WRONGTYPE');
      if (hgetErr !== null && !wrongType) throw redisError(hgetErr, key, 'the read');
      const reason = foreignReason(wrongType ? WRONG_TYPE : (field as string | null), type as string);
      if (reason !== undefined) throw new CorruptDataError(key, reason);
    }
  }

  /**
   * Writes changes as compare-and-set on their stamps, one script call per slot and batch,
   * published when this dictionary publishes. Validates and encodes everything first; per key, the
   * outcome says whether it was written, refused because Redis holds a stamp at or above the
   * guard, or failed (Redis error). Changes must name distinct keys.
   *
   * Concurrent calls share script calls: a call made while an earlier write to the same slot group
   * is in flight waits for it and is sent with the other calls that waited (see
   * `src/store/write-coalescer.ts`); its outcomes are its own, and two writes of one key are applied in
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
      // when its first attempt was applied (compare-and-set on its own stamp, see applyOutcome).
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
    return part.map((p, j) => applyOutcome(p.change, list[j], this.outcomeContext));
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
          ...stampsCall(redisKeys),
        };
      }),
    );
    const replies = await runPerNode(this.redis, units, undefined, { timeoutMs: this.retryTimeoutMs });
    units.forEach((unit, u) => {
      const [err, reply] = replies[u]!;
      if (err) throw redisError(err, unit.part[0]?.key, 'the read of stamps');
      (reply as string[]).forEach((stamp, j) => {
        const { index } = unit.part[j]!;
        out[index] = stampOfReply(stamp);
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

/**
 * MGET and EXISTS of the same keys (`keyPrefix` + `<namespace>/` + key each), framed in one buffer
 * each (see resp.ts): ioredis would frame every key of both commands argument by argument. The
 * keys' section is written once; each command is built on first use.
 */
class ReadFrames {
  private section: Buffer | undefined;
  private readonly frames = new Map<'mget' | 'exists', Buffer>();

  constructor(
    private readonly wirePrefix: Buffer,
    /** A key of the batch as sent (all are in one slot): what ioredis routes the commands by. */
    private readonly route: string,
    private readonly part: readonly { readonly key: string }[],
  ) {}

  command(name: 'mget' | 'exists'): FramedCommand {
    let frame = this.frames.get(name);
    if (frame === undefined) {
      const section = (this.section ??= this.keys());
      const start = Buffer.allocUnsafe(frameLength(name, this.part.length));
      writeFrameStart(start, name, this.part.length);
      frame = Buffer.concat([start, section], start.length + section.length);
      this.frames.set(name, frame);
    }
    return new FramedCommand(name, [this.route], frame);
  }

  /** `$<len>\r\n<prefix><key>\r\n` per key. */
  private keys(): Buffer {
    const { part, wirePrefix } = this;
    const keyBytes = new Int32Array(part.length);
    let size = 0;
    for (let j = 0; j < part.length; j++) {
      keyBytes[j] = Buffer.byteLength(part[j]!.key, 'utf8');
      size += bulkLength(wirePrefix.length + keyBytes[j]!);
    }
    const out = Buffer.allocUnsafe(size);
    let at = 0;
    for (let j = 0; j < part.length; j++) at = writePrefixedKey(out, at, wirePrefix, part[j]!.key, keyBytes[j]!);
    return out;
  }
}

/** Sends a framed command on a client or queues it on a pipeline. */
function send(target: Commands, command: FramedCommand): unknown {
  return (target as { sendCommand(command: FramedCommand): unknown }).sendCommand(command);
}

/** HGET's answer for a key that is not a hash (WRONGTYPE), in {@link foreignReason}. */
const WRONG_TYPE = Symbol('WRONGTYPE');

/**
 * Why a key that MGET answered nil for holds foreign data, or undefined when it reads as missing,
 * from `HGET <key> s` (`field`) and then `TYPE <key>` (`type`). Of the types, the library writes
 * strings (records) and hashes (tombstones) only.
 */
function foreignReason(field: string | null | typeof WRONG_TYPE, type: string): string | undefined {
  if (typeof field === 'string') return isStamp(field) ? undefined : 'a hash whose field `s` is not a stamp';
  // Not a hash at the HGET (or nothing): foreign only if it is of a type the library never writes
  // (a hash now may be the tombstone of a record deleted in between).
  if (type === 'none' || type === 'string') return undefined;
  if (type === 'hash') return field === WRONG_TYPE ? undefined : 'a hash without a stamp field `s`';
  return `a ${type}`;
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
function lastPerKey<T extends { key: string }>(changes: readonly T[]): T[] {
  const byKey = new Map<string, T>();
  for (const change of changes) {
    byKey.delete(change.key);
    byKey.set(change.key, change);
  }
  return [...byKey.values()];
}
