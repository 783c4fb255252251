/**
 * Standalone and Cluster behind one interface: grouping keys by slot, sending the commands of a
 * batch per node in pipelined chunks, and listing the masters to SCAN.
 *
 * On a standalone server every key is in group 0. On a Cluster a group is a hash slot: one
 * multi-key command or script per slot, pipelined per master, so a batch costs about one round
 * trip per node instead of one per key.
 *
 * @module
 */
import calculateSlot from 'cluster-key-slot';
import { Cluster, type ChainableCommander, type Redis } from 'ioredis';
import { asError } from './errors.js';

/** An ioredis client: a standalone `Redis` or a `Cluster`. */
export type RedisClient = Redis | Cluster;

/**
 * What the constructors accept: an ioredis 5.x or 6.x `Redis` or `Cluster`, seen structurally.
 *
 * ioredis is a peer dependency, so this package uses the application's ioredis and
 * {@link RedisClient} names its types. A client made by another copy of ioredis (another major,
 * or a copy nested under another package) works just as well, but TypeScript refuses it as a
 * {@link RedisClient} (its classes have private members and differ between majors); this type lets
 * it through. Checked at run time: anything without `pipeline()` is refused with `E_INVALID_OPTION`.
 */
export interface RedisClientLike {
  readonly status: string;
  readonly options: object;
  pipeline(...args: never[]): unknown;
  duplicate(...args: never[]): unknown;
  sendCommand(...args: never[]): unknown;
}

/** True for an ioredis `Cluster`. */
export function isCluster(client: RedisClient): client is Cluster {
  return client instanceof Cluster || (client as { isCluster?: boolean }).isCluster === true;
}

/** Hash slot of a Redis key. */
export function slotOf(redisKey: string): number {
  return calculateSlot(redisKey);
}

/** Items grouped by slot (cluster) or all in group 0 (standalone), order kept inside a group. */
export function groupBySlot<T>(cluster: boolean, items: readonly T[], redisKeyOf: (item: T) => string): Map<number, T[]> {
  const groups = new Map<number, T[]>();
  if (!cluster) {
    if (items.length > 0) groups.set(0, [...items]);
    return groups;
  }
  for (const item of items) {
    const slot = calculateSlot(redisKeyOf(item));
    const group = groups.get(slot);
    if (group) group.push(item);
    else groups.set(slot, [item]);
  }
  return groups;
}

/** Splits an array into chunks of at most `size`. */
export function chunk<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/** A unit of work for {@link runPerNode}: one command for one slot. */
export interface SlotWork {
  /** Hash slot (0 on a standalone server). */
  readonly slot: number;
  /** How many keys the command carries (default 1): commands are sent in chunks of about {@link STREAM_CHUNK_KEYS}. */
  readonly weight?: number;
  /** Queues the unit's command on a pipeline, or sends it on the client when it is alone on its node. */
  queue(target: ChainableCommander | RedisClient): unknown;
}

/**
 * Keys per chunk of commands sent to one node. A large batch is sent chunk by chunk, each as soon
 * as it is built, so that the server executes one chunk while the next is being encoded.
 */
export const STREAM_CHUNK_KEYS = 500;

/**
 * Runs every unit of work (one command each) and returns, for each unit in order, its
 * `[error, reply]`. Units are sent per master in chunks of about {@link STREAM_CHUNK_KEYS} keys,
 * in order: a chunk of several commands as one pipeline, a chunk of one as a plain command (a
 * pipeline of one costs more than the command itself). A unit is built (`queue`) right before its
 * chunk is sent, so anything it numbers (message sequence numbers) is sent in that order.
 *
 * `onReplies` (optional) is called with the indexes of each chunk's units as soon as their results
 * are in, so that the caller can handle them while later chunks are still executing; it must not
 * throw.
 */
export async function runPerNode(
  client: RedisClient,
  work: readonly SlotWork[],
  onReplies?: (indexes: readonly number[], results: readonly [Error | null, unknown][]) => void,
): Promise<[Error | null, unknown][]> {
  const byNode = new Map<string, number[]>();
  if (isCluster(client)) {
    if (client.status !== 'ready') await clusterReady(client);
    work.forEach((unit, index) => {
      const node = client.slots[unit.slot]?.[0] ?? 'unknown';
      const list = byNode.get(node);
      if (list) list.push(index);
      else byNode.set(node, [index]);
    });
  } else if (work.length > 0) {
    byNode.set('standalone', work.map((_, index) => index));
  }
  const results: [Error | null, unknown][] = new Array(work.length);
  const sent: Promise<void>[] = [];
  for (const indexes of byNode.values()) {
    for (let start = 0; start < indexes.length; ) {
      let end = start;
      let keys = 0;
      while (end < indexes.length && (end === start || keys < STREAM_CHUNK_KEYS)) keys += work[indexes[end++]!]!.weight ?? 1;
      const chunkIndexes = indexes.slice(start, end);
      const done = sendChunk(client, work, chunkIndexes, results);
      sent.push(onReplies ? done.then(() => onReplies(chunkIndexes, results)) : done);
      start = end;
    }
  }
  await Promise.all(sent);
  return results;
}

/** Sends one chunk of units (synchronously up to the send) and stores their replies. */
function sendChunk(client: RedisClient, work: readonly SlotWork[], indexes: number[], results: [Error | null, unknown][]): Promise<void> {
  if (indexes.length === 1) {
    const index = indexes[0]!;
    let reply: Promise<unknown>;
    try {
      reply = Promise.resolve(work[index]!.queue(client));
    } catch (error) {
      reply = Promise.reject(error);
    }
    return reply.then(
      (value) => {
        results[index] = [null, value];
      },
      (error: unknown) => {
        results[index] = [asError(error), undefined];
      },
    );
  }
  const pipeline = client.pipeline();
  for (const index of indexes) work[index]!.queue(pipeline);
  return pipeline.exec().then(
    (replies) => {
      indexes.forEach((index, i) => {
        results[index] = (replies?.[i] as [Error | null, unknown] | undefined) ?? [new Error('Missing pipeline reply'), undefined];
      });
    },
    (error: unknown) => {
      // The chunk failed as a whole (connection closed...): each of its units failed, the others stand.
      for (const index of indexes) results[index] = [asError(error), undefined];
    },
  );
}

/** Resolves when the cluster has its slot map; rejects if it ends first. */
export function clusterReady(cluster: Cluster): Promise<void> {
  if (cluster.status === 'end') return Promise.reject(new Error('Connection is closed.'));
  return new Promise((resolve, reject) => {
    const onReady = (): void => {
      cluster.off('end', onEnd);
      resolve();
    };
    const onEnd = (): void => {
      cluster.off('ready', onReady);
      reject(new Error('Connection is closed.'));
    };
    cluster.once('ready', onReady);
    cluster.once('end', onEnd);
  });
}

/** The clients to SCAN: every master of a Cluster, or the standalone client itself. */
export function scanTargets(client: RedisClient): Redis[] {
  return isCluster(client) ? client.nodes('master') : [client];
}

let slotTags: string[] | undefined;

/**
 * A short string whose hash slot is `slot`, for naming sharded channels that live in the same slot
 * as the keys they announce (SPUBLISH from a script must stay inside the script's slot).
 */
export function slotTag(slot: number): string {
  if (!slotTags) {
    const tags: string[] = new Array(16384);
    let found = 0;
    for (let i = 0; found < 16384; i++) {
      const tag = i.toString(36);
      const s = calculateSlot(tag);
      if (tags[s] === undefined) {
        tags[s] = tag;
        found++;
      }
    }
    slotTags = tags;
  }
  return slotTags[slot]!;
}
