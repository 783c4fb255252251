/**
 * The subscription that keeps a near cache coherent, and everything that can go wrong with it.
 *
 * Redis pub/sub is at-most-once: a message sent while the subscriber is disconnected, cut off for
 * being slow, or silently partitioned is lost, and ioredis says nothing about it. This module
 * turns every such gap into a `down` / `up` pair or a `gap` notice, so that the cache manager stops
 * serving what it can no longer vouch for and resyncs before it serves again:
 *
 * - its own connection (never the caller's), subscribed explicitly on every `ready`; the `up`
 *   notice comes only once the subscription is confirmed, so nothing published after it is missed;
 * - with sharded pub/sub, one connection per master instead (see `shard-links.ts`), each subscribed
 *   to the channels of the slots its master owns, moved along when a slot changes owner;
 * - a heartbeat: a PING every `heartbeatIntervalMs` on the subscriber connection (with sharded
 *   pub/sub, a probe message through each shard instead), and a forced reconnect when no answer
 *   comes within `heartbeatTimeoutMs`, which detects a silent partition;
 * - per-origin, per-group sequence numbers: a gap means lost messages;
 * - the server's `run_id`, compared at each reconnect: a restarted server lost its data;
 * - on a Cluster, topology changes (failover) seen by the data client.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { Redis, type Cluster } from 'ioredis';
import { asError, isPermanentConnectionError, permanentConnectionError } from '../errors.js';
import { encodeProbe, isOwnMessage, MalformedMessageError, type Message, MessageDecoder, PROBE_PREFIX, PROBE_SEQ } from '../protocol/messages.js';
import type { FrameSigner } from '../protocol/signing.js';
import { ShardLinks } from './shard-links.js';
import { guardSocket } from './socket-guard.js';
import { type RedisClient, isCluster } from '../store/topology.js';

/** Why the cache had to resynchronise. */
export type ResyncReason = 'reconnect' | 'heartbeat-timeout' | 'sequence-gap' | 'run-id-changed' | 'topology-changed';

/** What the subscriber tells its owner. */
export interface SubscriberListener {
  /** A valid message from another writer, and the channel it came on. */
  onMessage(message: Message, channel: string): void;
  /** A message that failed validation (`unverified`: its signature); it was not applied. */
  onMalformed(error: MalformedMessageError, channel: string, unverified: boolean): void;
  /** The link can no longer be trusted: stop serving cached entries. */
  onDown(reason: ResyncReason): void;
  /** The link is (again) live and subscribed: resync, then serve. Also called for a gap while up. */
  onUp(reason: ResyncReason | 'initial'): void;
  /** A connection error (for reporting; recovery is automatic). */
  onError(error: Error): void;
}

/** Subscriber settings. */
export interface SubscriberSettings {
  readonly origin: string;
  /** Channel names as Redis sees them (of one slot with sharded pub/sub), see `PubSubRedisDict.channels`. */
  readonly channels: (slot: number) => { update: string; delete: string };
  /** The data client's `keyPrefix`, which ioredis adds to SSUBSCRIBE and SPUBLISH channels. */
  readonly commandKeyPrefix: string;
  /** Verifies signed messages; with one, nothing unsigned or unverified is applied. */
  readonly signer: FrameSigner | undefined;
  readonly sharded: boolean;
  readonly heartbeatIntervalMs: number;
  readonly heartbeatTimeoutMs: number;
  readonly maxMessageBytes: number;
  readonly maxValueBytes: number;
  readonly maxEntries: number;
  /** Most writer (origin, group) pairs whose sequence numbers one generation of the table holds. Default {@link ORIGIN_TABLE_LIMIT}. */
  readonly maxOrigins?: number;
  /** A writer silent for this long (up to twice as long) is forgotten, in ms. Default {@link ORIGIN_IDLE_MS}. */
  readonly originIdleMs?: number;
}

/** Default {@link SubscriberSettings.maxOrigins}: at most twice this many entries are kept. */
export const ORIGIN_TABLE_LIMIT = 10_000;

/** Default {@link SubscriberSettings.originIdleMs}: 10 minutes. */
const ORIGIN_IDLE_MS = 600_000;

export class Subscriber {
  private readonly data: RedisClient;
  private readonly settings: SubscriberSettings;
  private readonly listener: SubscriberListener;
  private readonly decoder: MessageDecoder;
  private conn: Redis | undefined;
  /** Sharded pub/sub: the connections per master (instead of {@link Subscriber.conn}). */
  private shards: ShardLinks | undefined;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private live = false;
  private everUp = false;
  private runId: string | undefined;
  private pingSentAt = 0;
  private pingPending = false;
  private notReadySince = 0;
  /**
   * Last sequence number per writer origin and group, in two generations: entries seen since the
   * last rotation, and those of the generation before. A rotation (every `originIdleMs`, or when
   * the recent one is full) drops the older generation, so a writer idle for two periods (or
   * crowded out by many newer ones) is forgotten and the table holds at most 2 x `maxOrigins`.
   * A forgotten writer's next message is treated like a first-seen writer's: its number is taken
   * as is (it is not 1, and that is no gap). That is as safe as after every resync, when the table
   * is emptied: an entry is only forgotten while no gap is pending for it, and messages never
   * depend on it to apply (stamps decide).
   */
  private recentSeq = new Map<string, number>();
  private olderSeq = new Map<string, number>();
  private seqRotatedAt = Date.now();
  /** Probes in flight: when sent, and when the SPUBLISH was answered (0 until then). */
  private probes = new Map<string, { sentAt: number; answeredAt: number }>();
  /**
   * Sharded only: when the probes stopped coming back while the subscription stood (0 otherwise).
   * The subscription is then kept (ioredis may be resubscribing a shard after a failover) and
   * probed until every master's probe comes back; it is started over only after a long silence.
   */
  private degradedSince = 0;
  /** Masters whose probe came back since {@link Subscriber.degradedSince}. */
  private readonly echoed = new Set<string>();
  /** Master of every slot when the subscription last became live (or resynced for a topology change), to tell a real change from noise. */
  private slotOwners: string[] | undefined;
  private topologyTimer: NodeJS.Timeout | undefined;
  private nodeIndex = 0;
  private readyWaiters: { resolve: () => void; reject: (error: Error) => void }[] = [];
  /** When a subscription call of the current connection last answered, or the subscription started; 0 when not subscribing. */
  private subscribeProgressAt = 0;
  private retryTimer: NodeJS.Timeout | undefined;
  private retryDelay = 0;
  /**
   * ioredis reports topology noise in bursts (`+node`/`-node` per connection, `refresh` every few
   * seconds): they are coalesced into one check, which reports a change only when the master of
   * some slot changed since the subscription went live or was last resynced, so a failover makes
   * one resync, not one per event.
   */
  private readonly onTopology = (): void => {
    if (this.topologyTimer !== undefined || this.closed) return;
    this.topologyTimer = setTimeout(() => {
      this.topologyTimer = undefined;
      this.checkTopology();
    }, Math.min(this.settings.heartbeatIntervalMs, 500));
    this.topologyTimer.unref();
  };

  constructor(data: RedisClient, settings: SubscriberSettings, listener: SubscriberListener) {
    this.data = data;
    this.settings = settings;
    this.listener = listener;
    this.decoder = new MessageDecoder({
      maxMessageBytes: settings.maxMessageBytes,
      maxValueBytes: settings.maxValueBytes,
      maxEntries: settings.maxEntries,
    });
  }

  /** Number of writer (origin, group) pairs whose sequence numbers are tracked now (bounded). */
  get trackedOrigins(): number {
    return this.recentSeq.size + this.olderSeq.size;
  }

  private recordSeq(id: string, seq: number): void {
    if (!this.recentSeq.has(id)) {
      this.olderSeq.delete(id);
      if (this.recentSeq.size >= (this.settings.maxOrigins ?? ORIGIN_TABLE_LIMIT)) this.rotateSeq(Date.now());
    }
    this.recentSeq.set(id, seq);
  }

  /** Starts a new generation of the sequence table; the one before the current is dropped. */
  private rotateSeq(now: number): void {
    this.olderSeq = this.recentSeq;
    this.recentSeq = new Map();
    this.seqRotatedAt = now;
  }

  /** True while the subscription is confirmed and the heartbeat answers. */
  get healthy(): boolean {
    return this.live;
  }

  /**
   * Resolves once the subscription has been live (at once if it already was); rejects when the
   * server refuses it for good (NOPERM, authentication), while retrying continues in the background.
   */
  whenLive(): Promise<void> {
    if (this.everUp || this.closed) return Promise.resolve();
    return new Promise<void>((resolve, reject) => this.readyWaiters.push({ resolve, reject }));
  }

  /** Connects and subscribes, in the background; see {@link Subscriber.whenLive}. */
  start(): void {
    if (this.settings.sharded && isCluster(this.data)) {
      this.startShards(this.data);
      return;
    }
    if (isCluster(this.data)) {
      this.data.on('+node', this.onTopology);
      this.data.on('-node', this.onTopology);
      this.data.on('refresh', this.onTopology);
    }
    this.connect();
    this.notReadySince = Date.now();
    this.timer = setInterval(() => this.heartbeat(), this.settings.heartbeatIntervalMs);
    this.timer.unref();
  }

  /** Unsubscribes and closes the connection this subscriber opened. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.live = false;
    if (this.timer) clearInterval(this.timer);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.topologyTimer) clearTimeout(this.topologyTimer);
    if (isCluster(this.data)) {
      this.data.off('+node', this.onTopology);
      this.data.off('-node', this.onTopology);
      this.data.off('refresh', this.onTopology);
    }
    this.shards?.close();
    const conn = this.conn;
    this.conn = undefined;
    if (conn) {
      conn.removeAllListeners();
      conn.on('error', () => {});
      conn.disconnect();
    }
    for (const waiter of this.readyWaiters) waiter.resolve();
    this.readyWaiters = [];
  }

  private connect(): void {
    if (this.closed) return;
    const data = this.data;
    if (isCluster(data) && data.nodes('all').length === 0) {
      // The node list is known once the Cluster is ready.
      data.once('ready', () => this.connect());
      return;
    }
    const conn = this.createConnection();
    this.conn = conn;
    conn.on('error', (error: Error) => {
      guardSocket(conn);
      if (this.conn !== conn) return;
      this.listener.onError(error);
      // A certificate that does not verify (or refused credentials) will not verify on the next
      // attempt either: tell whoever waits for ready(); ioredis keeps retrying in the background.
      if (!this.everUp && isPermanentConnectionError(error)) this.rejectWaiters(permanentConnectionError(error, 'Could not connect the subscriber'));
    });
    conn.on('ready', () => {
      if (this.conn !== conn) return;
      this.retryDelay = 0;
      // A retry scheduled for the previous connection is moot: this one subscribes now (a pending
      // retry would also keep the heartbeat from restarting a connection that hangs).
      if (this.retryTimer !== undefined) {
        clearTimeout(this.retryTimer);
        this.retryTimer = undefined;
      }
      void this.subscribe(conn);
    });
    conn.on('close', () => {
      if (this.conn !== conn) return;
      this.degradedSince = 0;
      this.markDown('reconnect');
    });
    conn.on('end', () => {
      // A classic subscriber on a Cluster gave up on its node (failover): move to another node.
      if (this.conn !== conn || this.closed) return;
      this.markDown('reconnect');
      this.connect();
    });
    conn.on('messageBuffer', (channel: Buffer, message: Buffer) => this.receive(channel, message));
  }

  /**
   * Sharded pub/sub: the subscription is live once every slot is covered, down when one is not;
   * the heartbeat probes it while live, and starts it over after a long silence.
   */
  private startShards(data: Cluster): void {
    this.notReadySince = Date.now();
    this.subscribeProgressAt = Date.now();
    this.shards = new ShardLinks(
      data,
      { channels: this.settings.channels, refreshIntervalMs: Math.max(this.settings.heartbeatIntervalMs, 200) },
      {
        onMessage: (channel, message) => this.receive(channel, message),
        onCovered: () => {
          this.subscribeProgressAt = 0;
          // Slots that changed master since the subscription last stood: one resync covers them.
          const owners = this.currentOwners();
          const moved = this.slotOwners !== undefined && owners !== undefined && owners.some((o, i) => o !== this.slotOwners![i]);
          this.markUp(!this.everUp ? 'initial' : moved ? 'topology-changed' : this.degradedSince !== 0 ? 'heartbeat-timeout' : 'reconnect');
        },
        onUncovered: (reason) => {
          this.subscribeProgressAt = Date.now();
          this.degradedSince = 0;
          this.markDown(reason);
        },
        onProgress: () => {
          if (this.subscribeProgressAt !== 0) this.subscribeProgressAt = Date.now();
        },
        onError: (error) => {
          this.listener.onError(error);
          // Refused for good (ACL, credentials, a certificate): tell whoever waits for ready(); the
          // subscription keeps trying (backing off) in case the rules change.
          if (!this.everUp && isPermanentConnectionError(error)) this.rejectWaiters(permanentConnectionError(error, 'The subscription was refused'));
        },
      },
    );
    this.shards.start();
    this.timer = setInterval(() => this.heartbeat(), this.settings.heartbeatIntervalMs);
    this.timer.unref();
  }

  private createConnection(): Redis {
    const data = this.data;
    if (!isCluster(data)) {
      return data.duplicate({ autoResubscribe: false, lazyConnect: false, enableOfflineQueue: true, maxRetriesPerRequest: null });
    }
    // Classic pub/sub is broadcast to every node of a Cluster: one plain connection to any node.
    const nodes = data.nodes('all');
    const node = nodes[this.nodeIndex++ % Math.max(1, nodes.length)];
    return new Redis({
      ...data.options.redisOptions,
      host: node?.options.host,
      port: node?.options.port,
      autoResubscribe: false,
      maxRetriesPerRequest: null,
      retryStrategy: (times: number) => (times > 3 ? null : Math.min(times * 100, 1000)),
    });
  }

  private async subscribe(conn: Redis): Promise<void> {
    this.subscribeProgressAt = Date.now();
    try {
      // The run_id is read before subscribing: on RESP2 (ioredis 5) a subscribed connection only
      // accepts pub/sub commands. Same connection, so it names the server the subscription is on.
      const runId = await readRunId(conn);
      const channels = this.settings.channels(0);
      await conn.subscribe(channels.update, channels.delete);
      let reason: ResyncReason | 'initial' = this.everUp ? 'reconnect' : 'initial';
      if (runId !== undefined) {
        if (this.runId !== undefined && runId !== this.runId) reason = 'run-id-changed';
        this.runId = runId;
      }
      if (this.conn !== conn || this.closed) return;
      this.subscribeProgressAt = 0;
      this.retryDelay = 0;
      this.markUp(reason);
    } catch (cause) {
      if (this.conn !== conn || this.closed) return;
      this.subscribeProgressAt = 0;
      const error = asError(cause);
      this.listener.onError(error);
      // Refused for good (ACL, authentication): tell whoever waits for ready(), and keep trying
      // slowly in case the rules change. Otherwise (a shard not known yet, a connection closing)
      // try again soon; a connection that is really gone reconnects by itself.
      const permanent = isPermanentConnectionError(error);
      if (permanent && !this.everUp) this.rejectWaiters(permanentConnectionError(error, 'The subscription was refused'));
      this.notReadySince = Date.now();
      // The connection itself went away (closed, or restarted by the heartbeat): ioredis reconnects
      // and 'ready' subscribes again; backing off here would only delay that.
      if (!permanent && conn.status !== 'ready') return;
      const first = permanent ? 1000 : 100;
      this.retryDelay = Math.min(this.retryDelay === 0 ? first : this.retryDelay * 2, 30_000);
      this.retryTimer = setTimeout(() => {
        this.retryTimer = undefined;
        if (this.conn === conn && !this.closed && conn.status === 'ready') void this.subscribe(conn);
      }, this.retryDelay);
      this.retryTimer.unref();
    }
  }

  /** Rejects every pending {@link Subscriber.whenLive}. */
  private rejectWaiters(error: Error): void {
    for (const waiter of this.readyWaiters) waiter.reject(error);
    this.readyWaiters = [];
  }

  private markUp(reason: ResyncReason | 'initial'): void {
    this.live = true;
    this.everUp = true;
    this.pingPending = false;
    this.probes.clear();
    this.degradedSince = 0;
    this.echoed.clear();
    // The resync that follows covers every topology change seen so far.
    this.slotOwners = this.currentOwners();
    // After any gap, sequence numbers restart from what arrives next.
    if (reason !== 'initial') {
      this.recentSeq.clear();
      this.olderSeq.clear();
    }
    this.listener.onUp(reason);
    for (const waiter of this.readyWaiters) waiter.resolve();
    this.readyWaiters = [];
  }

  private markDown(reason: ResyncReason): void {
    if (this.notReadySince === 0) this.notReadySince = Date.now();
    if (!this.live) return;
    this.live = false;
    this.listener.onDown(reason);
  }

  private heartbeat(): void {
    if (this.closed) return;
    const now = Date.now();
    if (now - this.seqRotatedAt >= (this.settings.originIdleMs ?? ORIGIN_IDLE_MS)) this.rotateSeq(now);
    if (this.shards) {
      this.shardHeartbeat(now, this.shards);
      return;
    }
    const conn = this.conn;
    if (!conn) return;
    const timeout = this.settings.heartbeatTimeoutMs;
    if (!this.live) {
      // Stuck connecting (e.g. a partition swallowing the handshake): start over. A subscription
      // is started over only when none of its calls has answered for a while: one that progresses
      // is never cut, one that lost a reply is not left waiting for minutes. Judged after pending
      // I/O has been read: an event loop kept busy (by other work of the process) delays the
      // connection's 'ready', which must not be taken for a hung handshake.
      if (this.stuckConnecting(now, conn)) {
        setImmediate(() => {
          if (this.conn !== conn || this.closed || this.live || !this.stuckConnecting(Date.now(), conn)) return;
          this.notReadySince = Date.now();
          this.subscribeProgressAt = 0;
          conn.disconnect(true);
        });
      }
      return;
    }
    this.notReadySince = 0;
    if (this.pingPending) {
      if (now - this.pingSentAt > timeout) {
        this.markDown('heartbeat-timeout');
        this.notReadySince = now;
        (conn as Redis).disconnect(true);
      }
      return;
    }
    this.pingPending = true;
    this.pingSentAt = now;
    (conn as Redis).ping().then(
      () => {
        if (this.conn === conn) this.pingPending = false;
      },
      () => {},
    );
  }

  /** True when the (classic) connection has been connecting, or its subscription silent, for too long. */
  private stuckConnecting(now: number, conn: Redis): boolean {
    const subscribing = this.subscribeProgressAt !== 0;
    const since = subscribing ? this.subscribeProgressAt : this.notReadySince;
    const deadline = subscribing ? Math.max(30_000, 10 * this.settings.heartbeatTimeoutMs) : this.settings.heartbeatTimeoutMs;
    const waiting = this.retryTimer !== undefined;
    return since !== 0 && !waiting && now - since > deadline && conn.status !== 'reconnecting';
  }

  /**
   * Sharded pub/sub: probes while live; while degraded, see {@link Subscriber.recoverShards}; while
   * some slot is not covered, the connections are brought in line with the slot map (which is
   * refreshed), and started over only when nothing progressed for max(30 s, 10 x
   * `heartbeatTimeoutMs`): a subscription that progresses (a loaded machine) is never cut.
   */
  private shardHeartbeat(now: number, shards: ShardLinks): void {
    if (this.live) {
      this.notReadySince = 0;
      this.probeShards(now, shards);
      return;
    }
    if (this.degradedSince !== 0 && shards.covered) {
      this.recoverShards(now, shards);
      return;
    }
    shards.tick();
    const deadline = Math.max(30_000, 10 * this.settings.heartbeatTimeoutMs);
    if (this.subscribeProgressAt !== 0 && now - this.subscribeProgressAt > deadline) {
      this.subscribeProgressAt = now;
      shards.restart();
    }
  }

  /**
   * With sharded pub/sub, a probe through every shard proves the subscription end to end. Liveness
   * is measured from progress, not from the clock alone: a probe is late only `heartbeatTimeoutMs`
   * after its SPUBLISH was answered (the server delivers it to subscribers as it answers), so a
   * server busy with a large resubscription (16,384 channels per instance) is not taken for a
   * partition; an SPUBLISH unanswered for 10 x `heartbeatTimeoutMs` counts as late too. A late
   * probe is judged after pending I/O has been read (a busy event loop delays the probe, not the
   * link). Then the cache stops serving, and the subscription is kept and probed until every
   * master answers again (see {@link Subscriber.recoverShards}).
   */
  private probeShards(now: number, shards: ShardLinks): void {
    if (this.lateProbe(now)) {
      setImmediate(() => {
        if (this.shards !== shards || this.closed || !this.live || !this.lateProbe(Date.now())) return;
        this.probes.clear();
        this.echoed.clear();
        this.degradedSince = Date.now();
        this.markDown('heartbeat-timeout');
      });
      return;
    }
    this.sendProbes(now);
  }

  /** True when a probe in flight is late (see {@link Subscriber.probeShards}). */
  private lateProbe(now: number): boolean {
    const timeout = this.settings.heartbeatTimeoutMs;
    for (const { sentAt, answeredAt } of this.probes.values()) {
      if (answeredAt !== 0 ? now - answeredAt > timeout : now - sentAt > 10 * timeout) return true;
    }
    return false;
  }

  /**
   * Probes while degraded: up again (with a resync) once every master's probe came back; started
   * over (disconnect, resubscribe) only when that did not happen within max(30 s, 10 x
   * `heartbeatTimeoutMs`), a shard that stays silent.
   */
  private recoverShards(now: number, shards: ShardLinks): void {
    const masters = this.masters();
    if (masters.size > 0 && [...masters.keys()].every((m) => this.echoed.has(m))) {
      this.markUp('heartbeat-timeout');
      return;
    }
    // Perhaps a slot changed master and the slot map does not say so yet.
    shards.refreshSlotMap(false);
    shards.sync();
    if (now - this.degradedSince > Math.max(30_000, 10 * this.settings.heartbeatTimeoutMs)) {
      this.degradedSince = 0;
      this.notReadySince = now;
      this.subscribeProgressAt = now;
      shards.restart();
      return;
    }
    // Probes that got lost are sent again.
    for (const [nonce, probe] of this.probes) if (now - (probe.answeredAt || probe.sentAt) > 10 * this.settings.heartbeatTimeoutMs) this.probes.delete(nonce);
    this.sendProbes(now);
  }

  /** Each master and one slot it owns. */
  private masters(): Map<string, number> {
    const masters = new Map<string, number>();
    (this.data as Cluster).slots.forEach((owners, slot) => {
      const master = owners?.[0];
      if (master !== undefined && !masters.has(master)) masters.set(master, slot);
    });
    return masters;
  }

  /** One probe in flight per master. */
  private sendProbes(now: number): void {
    const data = this.data as Cluster;
    const inFlight = new Set<string>();
    for (const nonce of this.probes.keys()) inFlight.add(nonce.slice(nonce.lastIndexOf('@') + 1));
    for (const [master, slot] of this.masters()) {
      if (inFlight.has(master)) continue;
      const nonce = `${PROBE_PREFIX}${randomBytes(6).toString('hex')}@${master}`;
      const probe = { sentAt: now, answeredAt: 0 };
      this.probes.set(nonce, probe);
      const channel = this.settings.channels(slot).update;
      const { signer } = this.settings;
      data.spublish(channel.slice(this.settings.commandKeyPrefix.length), encodeProbe(this.settings.origin, slot, nonce, channel, signer)).then(
        () => {
          probe.answeredAt = Date.now();
        },
        () => {},
      );
    }
  }

  /** Owners of every slot as the data client knows them. */
  private currentOwners(): string[] | undefined {
    return isCluster(this.data) ? this.data.slots.map((owners) => owners?.[0] ?? '') : undefined;
  }

  /** Reports a topology change (see {@link Subscriber.onTopology}) when a slot changed master. */
  private checkTopology(): void {
    if (this.closed || !this.live) return;
    const owners = this.currentOwners();
    const before = this.slotOwners;
    if (owners === undefined || owners.length === 0) return;
    if (before !== undefined && before.length === owners.length && before.every((o, i) => o === owners[i])) return;
    this.slotOwners = owners;
    this.listener.onUp('topology-changed');
  }

  private receive(channel: Buffer, bytes: Buffer): void {
    if (this.closed) return;
    // Our own messages (the bulk of the traffic of a writer) are dropped without decoding them.
    if (isOwnMessage(bytes, this.settings.origin)) return;
    // With signing keys nothing is decoded, let alone applied, before its tag verifies.
    const { signer } = this.settings;
    if (signer !== undefined) {
      const verdict = signer.verify(channel, bytes);
      if ('refused' in verdict) {
        this.listener.onMalformed(new MalformedMessageError(verdict.refused), channel.toString('latin1', 0, 200), true);
        return;
      }
    }
    let message: Message;
    try {
      message = this.decoder.decode(bytes);
    } catch (error) {
      const malformed = error instanceof MalformedMessageError ? error : new MalformedMessageError(String(error), { cause: error });
      this.listener.onMalformed(malformed, channel.toString('latin1', 0, 200), false);
      return;
    }
    if (message.origin === this.settings.origin) {
      if (message.seq === PROBE_SEQ) {
        const nonce = message.entries[0]?.key;
        if (nonce !== undefined && this.probes.delete(nonce) && this.degradedSince !== 0) this.echoed.add(nonce.slice(nonce.lastIndexOf('@') + 1));
      }
      return;
    }
    if (message.seq === PROBE_SEQ) return;
    const id = `${message.origin}:${message.group}`;
    const last = this.recentSeq.get(id) ?? this.olderSeq.get(id);
    this.recordSeq(id, last === undefined ? message.seq : Math.max(last, message.seq));
    this.listener.onMessage(message, channel.toString('latin1', 0, 200));
    // A number past the next one means messages were lost; a repeated or older one (a duplicate)
    // loses nothing, and the stamps make applying it harmless.
    if (last !== undefined && message.seq > last + 1 && this.live) {
      this.listener.onUp('sequence-gap');
    }
  }
}


async function readRunId(conn: Redis): Promise<string | undefined> {
  try {
    const info = await conn.info('server');
    return /run_id:([0-9a-f]+)/.exec(info)?.[1];
  } catch {
    return undefined;
  }
}
