/**
 * Sharded pub/sub on a Cluster: one subscriber connection per master, owned by the library, each
 * subscribed (SSUBSCRIBE, in pipelines) to the channels of the slots its master owns.
 *
 * Why not ioredis's own sharded subscribers (`Cluster.duplicate(…, { shardedSubscribers: true })`):
 * a sharded subscription is 16,384 SSUBSCRIBE calls (a call's channels must share a slot), and
 * there each call costs O(slots subscribed so far) (`ClusterSubscriberGroup.addChannels` recounts
 * every slot's channels), so one subscription cost ~134 million steps, ~1 s of one core blocked in
 * one synchronous loop per manager, ~1.1 s CPU in all (measured: `docs/operations.md`, "Sharded
 * pub/sub"). That loop starved every other manager of the process long enough for its heartbeat to
 * restart a connection that was merely waiting for its turn, again and again (issue #13). It also
 * appended a slot's channels again on each resubscription, and the connections it stops lose their
 * error listeners. Here only public ioredis API is used (`Cluster.slots`, `refreshSlotsCache`,
 * `new Redis`), the same in ioredis 5 and 6; the calls are built in chunks with a turn of the event
 * loop between them.
 *
 * A slot is *covered* once the SSUBSCRIBE of its channels was answered by the connection to the
 * node that owns it in the data client's slot map. The subscription stands when every slot is
 * covered. A slot is uncovered when its connection closes or its owner changes (a failover, a
 * resharding), and is subscribed again on its owner; meanwhile the data client's slot map is
 * refreshed, rate-limited, so that a failover is noticed without waiting for ioredis's periodic
 * refresh.
 *
 * @module
 */
import { Redis, type Cluster, type RedisOptions } from 'ioredis';
import { asError } from '../errors.js';
import { guardSocket } from './socket-guard.js';

const SLOTS = 16_384;

/** Slots per SSUBSCRIBE pipeline: large enough to keep writes few, small enough to keep the event loop free. */
const SUBSCRIBE_CHUNK_SLOTS = 1024;

/** What a {@link ShardLinks} tells its owner. */
export interface ShardLinksListener {
  /** A message on one of the channels. */
  onMessage(channel: Buffer, message: Buffer): void;
  /** Every slot is covered (again). */
  onCovered(): void;
  /** A slot lost its coverage: its connection closed (`reconnect`), or its owner changed (`topology-changed`). */
  onUncovered(reason: 'reconnect' | 'topology-changed'): void;
  /** A connection became ready or a subscription call answered. */
  onProgress(): void;
  /** A connection or subscription error (reported; recovery is automatic). */
  onError(error: Error): void;
}

/** Settings of a {@link ShardLinks}. */
export interface ShardLinksSettings {
  /** Channel names of one slot, as Redis sees them (the client's `keyPrefix` included). */
  readonly channels: (slot: number) => { update: string; delete: string };
  /** Least time between two slot-map refreshes asked by this subscription, in ms. */
  readonly refreshIntervalMs: number;
}

/** One subscriber connection to one master. */
interface Link {
  readonly node: string;
  readonly conn: Redis;
  /** Slots whose SSUBSCRIBE is in flight on this connection. */
  readonly pending: Set<number>;
}

/** Counts of what a {@link ShardLinks} did, for tests and diagnostics. */
export interface ShardLinksStats {
  /** SSUBSCRIBE calls sent. */
  subscribeCalls: number;
  /** Pipelines sent. */
  pipelines: number;
  /** Connections opened. */
  connections: number;
}

export class ShardLinks {
  private readonly data: Cluster;
  private readonly settings: ShardLinksSettings;
  private readonly listener: ShardLinksListener;
  private readonly links = new Map<string, Link>();
  /** For each slot, the node whose connection confirmed its subscription ('' when uncovered). */
  private readonly coveredBy: string[] = new Array<string>(SLOTS).fill('');
  private coveredCount = 0;
  private wasCovered = false;
  private closed = false;
  private syncQueued = false;
  /** Chunks of slots waiting to be subscribed, each on its node's connection. */
  private readonly queue: { link: Link; slots: number[] }[] = [];
  private pumping = false;
  private lastRefreshAt = 0;
  /** Set when the slot map may be behind the cluster (a connection closed, MOVED, a hole in the map). */
  private stale = false;
  /** After a refused SSUBSCRIBE, nothing is sent again before this time (back-off, 100 ms doubling up to 30 s). */
  private retryAt = 0;
  private retryDelay = 0;
  /** @internal */
  readonly stats: ShardLinksStats = { subscribeCalls: 0, pipelines: 0, connections: 0 };
  private readonly onDataEvent = (): void => this.queueSync();

  constructor(data: Cluster, settings: ShardLinksSettings, listener: ShardLinksListener) {
    this.data = data;
    this.settings = settings;
    this.listener = listener;
  }

  /** True when every slot is covered. */
  get covered(): boolean {
    return this.coveredCount === SLOTS;
  }

  /** Starts following the data client's slot map and subscribing. */
  start(): void {
    for (const event of ['ready', 'refresh', '+node', '-node']) this.data.on(event, this.onDataEvent);
    this.sync();
  }

  /** Closes every connection this subscription opened. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const event of ['ready', 'refresh', '+node', '-node']) this.data.off(event, this.onDataEvent);
    for (const link of this.links.values()) this.drop(link);
    this.links.clear();
  }

  /** Starts over: every connection is closed and opened again, every slot subscribed again. */
  restart(): void {
    if (this.closed) return;
    for (const link of this.links.values()) this.drop(link);
    this.links.clear();
    this.uncoverAll((node) => node !== '', 'reconnect');
    this.refreshSlotMap(true);
    this.sync();
  }

  /**
   * Brings the connections in line with the data client's slot map: slots whose owner changed are
   * uncovered, missing subscriptions are sent, connections to nodes that own no slot are closed.
   * Cheap when nothing changed; called on every topology event and heartbeat while uncovered.
   */
  sync(): void {
    if (this.closed) return;
    const owners = this.data.slots;
    const wanted = new Map<string, number[]>();
    let complete = true;
    for (let slot = 0; slot < SLOTS; slot++) {
      const owner = owners[slot]?.[0];
      if (owner === undefined) {
        complete = false;
        continue;
      }
      if (this.coveredBy[slot] === owner) continue;
      if (this.coveredBy[slot] !== '') this.uncover(slot);
      let list = wanted.get(owner);
      if (list === undefined) wanted.set(owner, (list = []));
      list.push(slot);
    }
    this.reportUncovered('topology-changed');
    // A hole in the slot map: ask for a new one (before the data client is ready, it is on its way).
    if (!complete) this.stale = true;
    const masters = new Set<string>();
    for (const list of owners) if (list?.[0] !== undefined) masters.add(list[0]);
    // Connections to nodes that own no slot any more are closed (not on a partial map: the data
    // client may be between two maps).
    for (const [node, link] of this.links) {
      if (complete && !masters.has(node)) {
        this.drop(link);
        this.links.delete(node);
      }
    }
    const chunks: { link: Link; slots: number[] }[][] = [];
    const backingOff = Date.now() < this.retryAt;
    for (const [node, slots] of wanted) {
      const link = this.links.get(node) ?? this.open(node);
      if (link.conn.status !== 'ready' || backingOff) continue;
      const unsent = slots.filter((slot) => !link.pending.has(slot));
      for (const slot of unsent) link.pending.add(slot);
      chunks.push([]);
      for (let start = 0; start < unsent.length; start += SUBSCRIBE_CHUNK_SLOTS) chunks.at(-1)!.push({ link, slots: unsent.slice(start, start + SUBSCRIBE_CHUNK_SLOTS) });
    }
    // The nodes' chunks interleaved, so that every node works at once.
    for (let i = 0; chunks.some((list) => i < list.length); i++) for (const list of chunks) if (i < list.length) this.queue.push(list[i]!);
    if (this.queue.length > 0 && !this.pumping) void this.pump();
    this.reportCovered();
  }

  /**
   * Called by the heartbeat while some slot is not covered: syncs, and asks for a new slot map when
   * it may be behind the cluster.
   */
  tick(): void {
    this.sync();
    if (this.stale) this.refreshSlotMap(false);
  }

  /**
   * Asks the data client for a fresh slot map (a failover is seen sooner than by its periodic
   * refresh); at most one per `refreshIntervalMs` unless `force`.
   */
  refreshSlotMap(force: boolean): void {
    const now = Date.now();
    if (this.closed || this.data.status !== 'ready' || (!force && now - this.lastRefreshAt < this.settings.refreshIntervalMs)) return;
    this.lastRefreshAt = now;
    this.stale = false;
    this.data.refreshSlotsCache((error?: Error | null) => {
      if (error) this.listener.onError(error);
      // ioredis emits 'refresh' only when the map changed; look anyway.
      this.queueSync();
    });
  }

  private queueSync(): void {
    if (this.syncQueued || this.closed) return;
    this.syncQueued = true;
    setImmediate(() => {
      this.syncQueued = false;
      this.sync();
    });
  }

  private open(node: string): Link {
    const colon = node.lastIndexOf(':');
    const { keyPrefix: _ignored, ...redisOptions }: RedisOptions = this.data.options.redisOptions ?? {};
    const conn = new Redis({
      ...redisOptions,
      host: node.slice(0, colon),
      port: Number(node.slice(colon + 1)),
      // Channel names are given whole (the data client's keyPrefix included).
      keyPrefix: '',
      autoResubscribe: false,
      enableOfflineQueue: true,
      maxRetriesPerRequest: null,
      lazyConnect: false,
      retryStrategy: (times: number) => Math.min(times * 100, 1000),
    });
    this.stats.connections++;
    const link: Link = { node, conn, pending: new Set() };
    this.links.set(node, link);
    conn.on('error', (error: Error) => {
      guardSocket(conn);
      if (this.links.get(node) !== link) return;
      this.listener.onError(error);
      // ioredis 5 reports a slot moved away from a subscribed node (Redis unsubscribes its
      // channels, an unsolicited SUNSUBSCRIBE) only as this error: look at the slot map now.
      if (/^Command queue state error.*sunsubscribe/s.test(error.message)) this.refreshSlotMap(true);
    });
    conn.on('ready', () => {
      if (this.links.get(node) !== link) return;
      this.listener.onProgress();
      this.sync();
    });
    conn.on('close', () => {
      if (this.links.get(node) !== link) return;
      link.pending.clear();
      this.unqueue(link);
      this.stale = true;
      this.uncoverAll((owner) => owner === node, 'reconnect');
      this.refreshSlotMap(false);
    });
    // ioredis 6 reports a slot moved away from a subscribed node (unsolicited SUNSUBSCRIBE).
    conn.on('moved', () => {
      if (this.links.get(node) === link) this.refreshSlotMap(true);
    });
    conn.on('smessageBuffer', (channel: Buffer, message: Buffer) => {
      if (this.links.get(node) === link) this.listener.onMessage(channel, message);
    });
    return link;
  }

  /** Forgets the chunks queued for `link` (its connection closed: they are queued again when it is ready). */
  private unqueue(link: Link): void {
    for (let i = this.queue.length - 1; i >= 0; i--) if (this.queue[i]!.link === link) this.queue.splice(i, 1);
  }

  private drop(link: Link): void {
    this.unqueue(link);
    link.conn.removeAllListeners();
    link.conn.on('error', () => {});
    link.conn.disconnect();
  }

  /**
   * Sends the queued chunks, one pipeline (at most {@link SUBSCRIBE_CHUNK_SLOTS} SSUBSCRIBE calls)
   * per turn of the event loop, so that other work of the process (other managers, heartbeats,
   * replies) runs between them.
   */
  private async pump(): Promise<void> {
    this.pumping = true;
    try {
      for (let next = this.queue.shift(); next !== undefined; next = this.queue.shift()) {
        this.send(next.link, next.slots);
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
    } finally {
      this.pumping = false;
    }
  }

  /** SSUBSCRIBE to the channels of `chunk` on `link`, as one pipeline. */
  private send(link: Link, chunk: readonly number[]): void {
    if (this.closed || this.links.get(link.node) !== link || link.conn.status !== 'ready') {
      for (const slot of chunk) link.pending.delete(slot);
      return;
    }
    const pipeline = link.conn.pipeline();
    for (const slot of chunk) {
      const { update, delete: del } = this.settings.channels(slot);
      // One channel per slot carries both kinds of message (protocol/channels.ts).
      if (update === del) pipeline.ssubscribe(update);
      else pipeline.ssubscribe(update, del);
    }
    this.stats.subscribeCalls += chunk.length;
    this.stats.pipelines++;
    void pipeline.exec().then(
      (replies) => this.confirm(link, chunk, replies ?? []),
      (error: unknown) => this.confirm(link, chunk, chunk.map(() => [asError(error), undefined])),
    );
  }

  private confirm(link: Link, chunk: readonly number[], replies: readonly [Error | null, unknown][]): void {
    if (this.closed || this.links.get(link.node) !== link) return;
    let failed: Error | undefined;
    chunk.forEach((slot, i) => {
      if (!link.pending.delete(slot)) return; // the connection closed meanwhile
      const error = replies[i]?.[0] ?? (replies[i] === undefined ? new Error('Missing SSUBSCRIBE reply') : null);
      if (error) {
        failed ??= error;
        return;
      }
      // Covered only if this node still owns the slot (else the next sync subscribes its owner).
      if (this.data.slots[slot]?.[0] === link.node && this.coveredBy[slot] === '') {
        this.coveredBy[slot] = link.node;
        this.coveredCount++;
      }
    });
    this.listener.onProgress();
    if (failed) {
      this.retryDelay = Math.min(this.retryDelay === 0 ? 100 : this.retryDelay * 2, 30_000);
      this.retryAt = Date.now() + this.retryDelay;
      // MOVED (a slot map behind the cluster), a closing connection...: retried by the next sync.
      this.listener.onError(failed);
      if (/^(MOVED|ASK|CLUSTERDOWN|TRYAGAIN)\b/.test(failed.message)) {
        this.stale = true;
        this.refreshSlotMap(false);
      }
    }
    this.reportCovered();
  }

  private uncover(slot: number): void {
    if (this.coveredBy[slot] === '') return;
    this.coveredBy[slot] = '';
    this.coveredCount--;
  }

  private uncoverAll(match: (node: string) => boolean, reason: 'reconnect' | 'topology-changed'): void {
    for (let slot = 0; slot < SLOTS; slot++) if (match(this.coveredBy[slot]!)) this.uncover(slot);
    this.reportUncovered(reason);
  }

  private reportUncovered(reason: 'reconnect' | 'topology-changed'): void {
    if (this.wasCovered && this.coveredCount < SLOTS) {
      this.wasCovered = false;
      this.listener.onUncovered(reason);
    }
  }

  private reportCovered(): void {
    if (!this.wasCovered && this.coveredCount === SLOTS) {
      this.wasCovered = true;
      this.retryDelay = 0;
      this.listener.onCovered();
    }
  }
}
