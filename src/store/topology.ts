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
import { ClusterError, ConnectionError, RedisDictError, TimeoutError, asError, isConnectionFailure } from '../errors.js';

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

/** A client or a pipeline: what a unit of work queues its command on. */
export type Commands = ChainableCommander | RedisClient;

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
  /**
   * Queues the unit's command on a pipeline, or sends it on the client when it is alone on its node.
   * Called again for every resend (redirection, retry), so it must build the same command each time.
   */
  queue(target: ChainableCommander | RedisClient): unknown;
  /** For a script call by sha: the same call with the script's source, sent after NOSCRIPT. */
  queueScript?(target: ChainableCommander | RedisClient): unknown;
}

/** Options of {@link runPerNode}. */
export interface RunOptions {
  /**
   * On a Cluster, how long (ms, from the call) units are resent after MOVED, ASK, TRYAGAIN,
   * CLUSTERDOWN, LOADING or a dropped connection, and waited for; then they fail with `E_CLUSTER`,
   * `E_CONNECTION` or `E_TIMEOUT`. Default {@link DEFAULT_RETRY_TIMEOUT_MS}.
   */
  readonly timeoutMs?: number;
}

/** Default of {@link RunOptions.timeoutMs}: longer than a failover with Redis's default `cluster-node-timeout` (15 s). */
export const DEFAULT_RETRY_TIMEOUT_MS = 20_000;

/**
 * Keys per chunk of commands sent to one node. A large batch is sent chunk by chunk, each as soon
 * as it is built, so that the server executes one chunk while the next is being encoded.
 */
const STREAM_CHUNK_KEYS = 500;

/** What to do about a unit's error. */
type Verdict = 'final' | 'noscript' | 'moved' | 'ask' | 'busy' | 'connection';

/**
 * How the Cluster's answers are handled (see {@link runPerNode}):
 * - `moved`: MOVED, or a pipeline refused because its slots no longer share a node: refresh the
 *   slot map from the Cluster, resend to the new owner;
 * - `ask`: ASK: ASKING and the command on the named node, once;
 * - `busy`: TRYAGAIN, CLUSTERDOWN, LOADING, MASTERDOWN, READONLY: resend after a back-off;
 * - `connection`: a dropped or refused connection: refresh the slot map, resend after a back-off.
 */
function verdictOf(error: Error): Verdict {
  let message = error.message;
  // ioredis's own routing gave up on a single command: judge by the last answer it got.
  const last = /^Too many Cluster redirections\. Last error: (?:\w*Error: )?(.*)$/s.exec(message);
  if (last) message = last[1]!;
  if (message.startsWith('NOSCRIPT')) return 'noscript';
  if (message.startsWith('MOVED ') || message.includes('should belong to the same slots allocation group')) return 'moved';
  if (message.startsWith('ASK ')) return 'ask';
  if (/^(TRYAGAIN|CLUSTERDOWN|LOADING|MASTERDOWN|READONLY)\b/.test(message)) return 'busy';
  if (isConnectionFailure(message) || message.includes('Command timed out')) return 'connection';
  return 'final';
}

/**
 * Runs every unit of work (one command each) and returns, for each unit in order, its
 * `[error, reply]`. Units are sent per node in chunks of about {@link STREAM_CHUNK_KEYS} keys, in
 * order: a chunk of several commands as one pipeline, a chunk of one as a plain command (a pipeline
 * of one costs more than the command itself). A unit is built (`queue`) right before its chunk is
 * sent, so anything it numbers (message sequence numbers) is sent in that order.
 *
 * This is the one place that sends to a node itself instead of through the Cluster's own routing,
 * so it handles what a Cluster answers there (see {@link verdictOf}): after MOVED it refreshes the
 * slot map and resends to the new owner; after ASK it resends once with ASKING to the named node;
 * after TRYAGAIN, CLUSTERDOWN, LOADING or a dropped connection it resends after a back-off (50 ms
 * doubling up to 1 s). A unit still failing so when `timeoutMs` has passed fails with a coded
 * error (`E_CLUSTER`, `E_CONNECTION`) whose `cause` is the last Redis error; a unit whose reply has
 * not come by then fails with `E_TIMEOUT`. After NOSCRIPT, a unit with `queueScript` is resent with
 * the script's source (on a standalone server too). Resending a write is safe only because writes
 * are compare-and-set on stamps: see `RedisDict.writeVersioned`.
 *
 * `onReplies` (optional) is called with the indexes of units whose results are final as soon as
 * they are in, so that the caller can handle them while later chunks are still executing; it must
 * not throw. Each unit's index is passed once.
 */
export async function runPerNode(
  client: RedisClient,
  work: readonly SlotWork[],
  onReplies?: (indexes: readonly number[], results: readonly [Error | null, unknown][]) => void,
  options?: RunOptions,
): Promise<[Error | null, unknown][]> {
  const results: [Error | null, unknown][] = new Array(work.length);
  if (work.length === 0) return results;
  const cluster = isCluster(client) ? client : undefined;
  const deadline = Date.now() + (options?.timeoutMs ?? DEFAULT_RETRY_TIMEOUT_MS);
  const withScript = new Set<number>();
  const finish = (indexes: readonly number[]): void => {
    if (onReplies && indexes.length > 0) onReplies(indexes, results);
  };
  let pending: number[] = work.map((_, index) => index);
  /** ASK target (`host:port`) of a unit to resend there once. */
  let asked = new Map<number, string>();
  let lastErrors = new Map<number, Error>();
  for (let round = 0; pending.length > 0; round++) {
    if (cluster && cluster.status !== 'ready') {
      try {
        await beforeDeadline(clusterReady(cluster), deadline, 'the Cluster to be ready');
      } catch (error) {
        for (const index of pending) results[index] = [finalError(asError(error), lastErrors.get(index)), undefined];
        finish(pending);
        return results;
      }
    }
    const retry = new Map<number, Verdict>();
    const errors = new Map<number, Error>();
    // Replies of this round that come after its deadline are ignored: their units were settled.
    let open = true;
    const onChunk = (indexes: readonly number[], replies: readonly [Error | null, unknown][]): void => {
      if (!open) return;
      const done: number[] = [];
      indexes.forEach((index, i) => {
        const [error, reply] = replies[i]!;
        const verdict = error ? verdictOf(error) : 'final';
        const retriable = cluster ? verdict !== 'final' : verdict === 'noscript';
        if (error && retriable && !(verdict === 'noscript' && (withScript.has(index) || !work[index]!.queueScript))) {
          retry.set(index, verdict);
          errors.set(index, error);
          if (verdict === 'noscript') withScript.add(index);
        } else {
          results[index] = [error, reply];
          done.push(index);
        }
      });
      finish(done);
    };
    const sends = [...groupByNode(cluster, work, pending, asked)].map(([node, indexes]) => sendToNode(client, cluster, node, work, indexes, withScript, onChunk));
    const outcome = await settleBefore(Promise.all(sends), deadline);
    open = false;
    if (outcome === 'timeout') {
      // Replies that come later are ignored; a write may still be applied (see RedisDict.writeVersioned).
      const late = pending.filter((index) => results[index] === undefined && !retry.has(index));
      for (const index of late) results[index] = [new TimeoutError(`No reply from the Cluster within the retry deadline`, { cause: lastErrors.get(index) }), undefined];
      finish(late);
      pending = [];
      for (const [index] of retry) pending.push(index);
    } else {
      pending = [...retry.keys()];
    }
    if (pending.length === 0) break;
    lastErrors = errors;
    const verdicts = new Set(retry.values());
    if (Date.now() >= deadline || outcome === 'timeout' || cluster?.status === 'end') {
      for (const index of pending) results[index] = [finalError(errors.get(index)!, undefined), undefined];
      finish(pending);
      break;
    }
    // ASK: once to the named node; everything else through the (refreshed) slot map.
    const nextAsked = new Map<number, string>();
    for (const index of pending) {
      const error = errors.get(index)!;
      if (retry.get(index) === 'ask' && !asked.has(index)) nextAsked.set(index, error.message.split(' ')[2] ?? '');
    }
    asked = nextAsked;
    if (cluster && (verdicts.has('moved') || verdicts.has('connection') || (verdicts.has('ask') && asked.size < pending.length))) {
      await beforeDeadline(refreshSlots(cluster), deadline, 'the slot map').catch(() => undefined);
    }
    const onlyRedirected = [...verdicts].every((v) => v === 'moved' || v === 'ask' || v === 'noscript');
    if (!(onlyRedirected && round === 0)) await pause(Math.min(50 * 2 ** Math.min(round, 5), 1000, Math.max(0, deadline - Date.now())));
  }
  return results;
}

/** The coded error of a unit that kept failing until the deadline; `error` is the last one. */
function finalError(error: Error, previous: Error | undefined): Error {
  if (error instanceof RedisDictError) return error.cause === undefined && previous ? new TimeoutError(error.message, { cause: previous }) : error;
  const verdict = verdictOf(error);
  if (verdict === 'connection') return new ConnectionError(`The connection to a Cluster node kept failing until the retry deadline: ${error.message}`, { cause: error });
  if (verdict === 'final') return error;
  return new ClusterError(`The Cluster kept redirecting or refusing the command until the retry deadline: ${error.message}`, { cause: error });
}

/** Units grouped by the node they go to: the slot's owners as the Cluster knows them, or an ASK target. */
function groupByNode(cluster: Cluster | undefined, work: readonly SlotWork[], indexes: readonly number[], asked: ReadonlyMap<number, string>): Map<string, number[]> {
  const byNode = new Map<string, number[]>();
  for (const index of indexes) {
    const ask = asked.get(index);
    // The whole list of owners, not only the master: ioredis pipelines only the slots it groups the same way.
    const node = ask !== undefined ? `ask:${ask}` : cluster ? (cluster.slots[work[index]!.slot]?.join(';') ?? 'unknown') : 'standalone';
    const list = byNode.get(node);
    if (list) list.push(index);
    else byNode.set(node, [index]);
  }
  return byNode;
}

/** Sends the units of one node chunk by chunk; `onChunk` hears each chunk's replies. */
function sendToNode(
  client: RedisClient,
  cluster: Cluster | undefined,
  node: string,
  work: readonly SlotWork[],
  indexes: readonly number[],
  withScript: ReadonlySet<number>,
  onChunk: (indexes: readonly number[], replies: readonly [Error | null, unknown][]) => void,
): Promise<void> {
  const sent: Promise<void>[] = [];
  const askNode = node.startsWith('ask:') && cluster ? nodeAt(cluster, node.slice(4)) : undefined;
  for (let start = 0; start < indexes.length; ) {
    let end = start;
    let keys = 0;
    while (end < indexes.length && (end === start || keys < STREAM_CHUNK_KEYS)) keys += work[indexes[end++]!]!.weight ?? 1;
    const chunkIndexes = indexes.slice(start, end);
    const queue = (index: number, target: ChainableCommander | RedisClient): unknown => {
      const unit = work[index]!;
      return withScript.has(index) && unit.queueScript ? unit.queueScript(target) : unit.queue(target);
    };
    sent.push(sendChunk(askNode ?? client, askNode !== undefined, chunkIndexes, queue).then((replies) => onChunk(chunkIndexes, replies)));
    start = end;
  }
  return Promise.all(sent).then(() => undefined);
}

/** The connection of the Cluster to `host:port`, if it has one. */
function nodeAt(cluster: Cluster, address: string): Redis | undefined {
  return cluster.nodes('all').find((n) => `${n.options.host}:${n.options.port}` === address);
}

/** Sends one chunk of units (synchronously up to the send) and resolves with their replies, in order. */
function sendChunk(
  target: RedisClient,
  asking: boolean,
  indexes: readonly number[],
  queue: (index: number, target: ChainableCommander | RedisClient) => unknown,
): Promise<[Error | null, unknown][]> {
  if (indexes.length === 1 && !asking) {
    let reply: Promise<unknown>;
    try {
      reply = Promise.resolve(queue(indexes[0]!, target));
    } catch (error) {
      reply = Promise.reject(error);
    }
    return reply.then(
      (value): [Error | null, unknown][] => [[null, value]],
      (error: unknown): [Error | null, unknown][] => [[asError(error), undefined]],
    );
  }
  const stream = !asking && indexes.length <= CORKED_MAX_UNITS && !isCluster(target) && target.status === 'ready' ? corkable(target) : undefined;
  if (stream !== undefined) {
    // A few commands on a standalone server (a read's MGET and EXISTS): sent as plain commands
    // with the socket corked, so they leave in one write like a pipeline, without the cost of an
    // ioredis Pipeline (measured: a one-key MGET + EXISTS 65 µs corked, 80 µs as a pipeline, MGET
    // alone 61 µs). ioredis writes a command synchronously when its connection is ready.
    const replies: Promise<[Error | null, unknown]>[] = [];
    stream.cork();
    try {
      for (const index of indexes) {
        let reply: Promise<unknown>;
        try {
          reply = Promise.resolve(queue(index, target));
        } catch (error) {
          reply = Promise.reject(error);
        }
        replies.push(reply.then((value): [Error | null, unknown] => [null, value], (error: unknown): [Error | null, unknown] => [asError(error), undefined]));
      }
    } finally {
      stream.uncork();
    }
    return Promise.all(replies);
  }
  const pipeline = target.pipeline();
  for (const index of indexes) {
    // ASKING allows the next command only: one before each.
    if (asking) pipeline.asking();
    queue(index, pipeline);
  }
  const step = asking ? 2 : 1;
  return pipeline.exec().then(
    (replies) => indexes.map((_, i) => (replies?.[i * step + step - 1] as [Error | null, unknown] | undefined) ?? [new Error('Missing pipeline reply'), undefined]),
    // The chunk failed as a whole (connection closed...): each of its units failed, the others stand.
    (error: unknown) => indexes.map((): [Error | null, unknown] => [asError(error), undefined]),
  );
}

/** Most units of a chunk sent as corked plain commands instead of a pipeline (see {@link sendChunk}). */
const CORKED_MAX_UNITS = 4;

/** The socket of a standalone client, when it can be corked. */
function corkable(client: Redis): { cork(): void; uncork(): void } | undefined {
  const stream = (client as { stream?: { cork?: unknown; uncork?: unknown; writable?: boolean } }).stream;
  return stream !== undefined && stream.writable === true && typeof stream.cork === 'function' && typeof stream.uncork === 'function'
    ? (stream as { cork(): void; uncork(): void })
    : undefined;
}

/** Refreshes the Cluster's slot map (joins a refresh in progress). */
function refreshSlots(cluster: Cluster): Promise<void> {
  return new Promise((resolve, reject) => {
    cluster.refreshSlotsCache((error?: Error | null) => (error ? reject(error) : resolve()));
  });
}

/** `promise`, or a TimeoutError naming `what` at `deadline`. */
function beforeDeadline<T>(promise: Promise<T>, deadline: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new TimeoutError(`Gave up waiting for ${what}: the retry deadline passed`)), Math.max(0, deadline - Date.now()));
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(asError(error));
      },
    );
  });
}

/** 'done' when `promise` settles before `deadline`, else 'timeout'. */
async function settleBefore(promise: Promise<unknown>, deadline: number): Promise<'done' | 'timeout'> {
  try {
    await beforeDeadline(promise, deadline, 'replies');
    return 'done';
  } catch (error) {
    if (error instanceof TimeoutError) return 'timeout';
    throw error;
  }
}

function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
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
