/**
 * Helpers shared by the property tests that touch Redis: what a cache holds, what Redis holds
 * (including tombstone stamps), a publisher on the right node, waiting for events with a deadline,
 * killing one manager's subscriber connection, and a message recorder.
 *
 * @module
 */
import type { EventEmitter } from 'node:events';
import { Cluster, Redis } from 'ioredis';
import type { PubSubCacheManager } from '../src/cache/cache-manager.js';
import { MessageDecoder } from '../src/protocol/messages.js';
import { splitRecord } from '../src/protocol/record.js';
import type { RedisDict } from '../src/store/redis-dict.js';
import type { Stamp } from '../src/protocol/stamp.js';
import { slotOf, type RedisClient } from '../src/store/topology.js';
import { slotTag } from '../src/protocol/channels.js';

/** Own properties of the built-in prototypes, to prove nothing was polluted. */
export function prototypesSnapshot(): Record<string, string[]> {
  return {
    object: Object.getOwnPropertyNames(Object.prototype).sort(),
    array: Object.getOwnPropertyNames(Array.prototype).sort(),
    function: Object.getOwnPropertyNames(Function.prototype).sort(),
  };
}

/** A cache entry as compared by the tests. */
export interface SnapshotEntry {
  readonly key: string;
  readonly present: boolean;
  readonly stamp: string;
  readonly value: unknown;
}

/** Every cached entry of a manager (values and cached misses), sorted by key, except `ignore`. */
export function cacheSnapshot(m: PubSubCacheManager<unknown>, ignore: readonly string[] = []): SnapshotEntry[] {
  const out: SnapshotEntry[] = [];
  for (const key of m.cache.keys()) {
    if (ignore.includes(key)) continue;
    const entry = m.cache.peek(key);
    if (entry !== undefined) out.push({ key, present: entry.present, stamp: entry.stamp, value: entry.value });
  }
  return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

/** A cluster client that has its slot map. */
export async function clusterReady(redis: RedisClient): Promise<void> {
  if (redis instanceof Cluster) {
    if (redis.status !== 'ready') await new Promise<void>((resolve, reject) => {
      redis.once('ready', resolve);
      redis.once('end', () => reject(new Error('cluster connection ended')));
    });
  } else if (redis.status !== 'ready') await redis.ping();
}

/** The node serving `slot`, as a new plain connection (standalone: a duplicate). The caller disconnects it. */
export async function nodeConnectionForSlot(redis: RedisClient, slot: number): Promise<Redis> {
  await clusterReady(redis);
  if (!(redis instanceof Cluster)) return redis.duplicate();
  const owner = redis.slots[slot]?.[0];
  if (owner === undefined) throw new Error(`no owner known for slot ${slot}`);
  const [host, port] = [owner.slice(0, owner.lastIndexOf(':')), Number(owner.slice(owner.lastIndexOf(':') + 1))];
  return new Redis({ host, port, maxRetriesPerRequest: 1 });
}

/**
 * A connection that publishes through the node owning `redisKey`, so that what it publishes and
 * what a script on that key publishes reach every subscriber in one order.
 */
export function publisherFor(redis: RedisClient, redisKey: string): Promise<Redis> {
  return nodeConnectionForSlot(redis, slotOf(redisKey));
}

/** Resolves with the arguments of the first `event` accepted by `accept`; rejects at the deadline. */
export function waitForEvent<A extends unknown[]>(
  emitter: EventEmitter,
  event: string,
  accept: (...args: A) => boolean,
  timeoutMs: number,
): Promise<A> {
  return new Promise<A>((resolve, reject) => {
    const listener = (...args: unknown[]): void => {
      if (!accept(...(args as A))) return;
      clearTimeout(timer);
      emitter.off(event, listener);
      resolve(args as A);
    };
    const timer = setTimeout(() => {
      emitter.off(event, listener);
      reject(new Error(`no '${event}' event within ${timeoutMs} ms`));
    }, timeoutMs);
    emitter.on(event, listener);
  });
}

/** What Redis holds for one dictionary key, read with raw commands. */
export type RedisState =
  | { readonly kind: 'none' }
  | { readonly kind: 'live'; readonly stamp: Stamp; readonly value: unknown }
  | { readonly kind: 'tombstone'; readonly stamp: Stamp };

/**
 * Reads the record or tombstone of `key` with raw commands (tombstone stamps included), in one
 * MULTI: a write landing between a TYPE and the read that follows it (a flush retried in the
 * background, a write queued behind a pause) would make the read meet WRONGTYPE (seed 800619768).
 * The read that does not fit the type fails inside the transaction and is ignored.
 */
export async function redisState<V>(dict: RedisDict<V>, key: string): Promise<RedisState> {
  const redisKey = dict.redisKey(key);
  const replies = await (dict.redis as Redis | Cluster).multi().type(redisKey).hget(redisKey, 's').getBuffer(redisKey).exec();
  if (replies === null) throw new Error(`the read of ${key} was aborted`);
  const [[typeError, type], [, hashStamp], [, buffer]] = replies as [[Error | null, string], [Error | null, string | null], [Error | null, Buffer | null]];
  if (typeError) throw typeError;
  if (type === 'none') return { kind: 'none' };
  if (type === 'hash') {
    const stamp = hashStamp;
    if (stamp === null) throw new Error(`tombstone of ${key} has no stamp`);
    return { kind: 'tombstone', stamp };
  }
  const raw = buffer;
  if (raw === null) return { kind: 'none' };
  const { stamp, payload } = splitRecord(key, raw);
  return { kind: 'live', stamp, value: dict.decodeValue(key, payload) };
}

/** The connection of a manager's subscriber (test-only look inside; `undefined` while it has none). */
function subscriberConnection(m: PubSubCacheManager<unknown>): Redis | Cluster | undefined {
  return (m as unknown as { subscriber: { conn?: Redis | Cluster } }).subscriber.conn;
}

/**
 * Kills the subscriber connection of one manager on the server (`CLIENT KILL ADDR`), without
 * touching any other client (other test files share the servers). Returns false when the
 * subscriber had no live connection to kill.
 */
export async function killSubscriber(m: PubSubCacheManager<unknown>, redis: RedisClient): Promise<boolean> {
  const conn = subscriberConnection(m);
  if (!(conn instanceof Redis) || conn.status !== 'ready') return false;
  const stream = (conn as unknown as { stream?: { localAddress?: string; localPort?: number } }).stream;
  if (stream?.localPort === undefined) return false;
  const addr = `${stream.localAddress ?? '127.0.0.1'}:${stream.localPort}`;
  const admin = redis instanceof Cluster ? redis.nodes('all').find((n) => n.options.port === conn.options.port && n.options.host === conn.options.host) : redis;
  if (admin === undefined) return false;
  try {
    await admin.client('KILL', 'ADDR', addr);
    return true;
  } catch (error) {
    if (/No such client/i.test(String(error))) return false;
    throw error;
  }
}

/**
 * Keys of the namespace, one per master (one on a standalone server), whose scripts publish from
 * every node: writing them all after everything else fences every node's stream of messages.
 */
export async function fenceKeys(dict: RedisDict<unknown>, round: number | string): Promise<string[]> {
  await clusterReady(dict.redis);
  if (!(dict.redis instanceof Cluster)) return [`__fence__/${round}`];
  const bySlotOwner = new Map<string, number>();
  dict.redis.slots.forEach((owners, slot) => {
    const master = owners?.[0];
    if (master !== undefined && !bySlotOwner.has(master)) bySlotOwner.set(master, slot);
  });
  return [...bySlotOwner.values()].map((slot) => `__fence__/${round}/{${slotTag(slot)}}`);
}

/** One message seen on a namespace's channels. */
export interface RecordedMessage {
  readonly channel: string;
  readonly bytes: Buffer;
  readonly origin: string;
  readonly type: 'u' | 'd';
  readonly entries: readonly { readonly key: string; readonly stamp: Stamp }[];
  /** The recorder's connection epoch when it arrived (see {@link MessageRecorder.epoch}). */
  readonly epoch: number;
}

/** Name of the recorder's connections (a nemesis kills every other subscriber). */
export const RECORDER_NAME = 'property-recorder';

/**
 * A raw subscriber on a namespace's classic channels that records every valid message (the
 * apply script publishes exactly the entries it wrote, so this is a Redis-side log of applied
 * writes). On a Cluster, classic messages reach every node, so one node suffices; under a nemesis
 * it listens on every node (a failover kills one), and reconnects at once after a restart.
 */
export class MessageRecorder {
  readonly messages: RecordedMessage[] = [];
  /** Connection epoch: incremented each time a connection closes (a restart cut it). */
  epoch = 0;
  private readonly waiters = new Set<() => void>();
  private readonly decoder = new MessageDecoder({ maxMessageBytes: 64 << 20, maxValueBytes: 16 << 20, maxEntries: 100_000 });
  /** `key|stamp` → the connection epoch in which the recorder saw it applied. */
  private readonly seen = new Map<string, number>();

  private constructor(private readonly conns: readonly Redis[]) {
    for (const conn of conns) {
      conn.on('close', () => this.epoch++);
      // A cut connection (restart, failover) reconnects by itself.
      conn.on('error', () => undefined);
      conn.on('messageBuffer', (channel: Buffer, bytes: Buffer) => {
        try {
          const m = this.decoder.decode(bytes);
          const entries = m.entries.map((e) => ({ key: e.key, stamp: e.stamp }));
          this.messages.push({ channel: channel.toString(), bytes: Buffer.from(bytes), origin: m.origin, type: m.type, entries, epoch: this.epoch });
          for (const e of entries) this.seen.set(`${e.key}|${e.stamp}`, this.epoch);
        } catch {
          return;
        }
        for (const wake of [...this.waiters]) wake();
      });
    }
  }

  /**
   * Subscribes to `<namespace>/update` and `<namespace>/delete`.
   *
   * @param everyNode - on a Cluster, one connection per node (else one); every connection
   *   reconnects at once after it is cut.
   */
  static async start(redis: RedisClient, namespace: string, everyNode = false): Promise<MessageRecorder> {
    await clusterReady(redis);
    const options = everyNode ? { connectionName: RECORDER_NAME, retryStrategy: (): number => 5 } : { connectionName: RECORDER_NAME };
    let conns: Redis[];
    if (!(redis instanceof Cluster)) conns = [redis.duplicate(options)];
    else if (!everyNode) conns = [await nodeConnectionForSlot(redis, 0)];
    else conns = redis.nodes('all').map((n) => new Redis({ host: n.options.host, port: n.options.port, ...options }));
    const recorder = new MessageRecorder(conns);
    await Promise.all(conns.map((conn) => conn.subscribe(`${namespace}/update`, `${namespace}/delete`)));
    return recorder;
  }

  /** True when a message carried `stamp` for `key` (received in connection epoch `minEpoch` or later). */
  saw(key: string, stamp: Stamp, minEpoch = 0): boolean {
    const epoch = this.seen.get(`${key}|${stamp}`);
    return epoch !== undefined && epoch >= minEpoch;
  }

  /** Resolves when `predicate` holds (checked after each message); rejects at the deadline. */
  until(predicate: () => boolean, timeoutMs: number, what: string): Promise<void> {
    if (predicate()) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const wake = (): void => {
        if (!predicate()) return;
        clearTimeout(timer);
        this.waiters.delete(wake);
        resolve();
      };
      const timer = setTimeout(() => {
        this.waiters.delete(wake);
        reject(new Error(`message recorder: ${what} not seen within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.add(wake);
    });
  }

  stop(): void {
    for (const conn of this.conns) conn.disconnect();
  }
}
