/**
 * The system under test of the model-based properties: 2-4 cache managers (write-through and
 * write-back), each with its own store, clock and ioredis connection, on one namespace of a real
 * Redis; plus the instrumentation that records what the invariants are checked against:
 *
 * - every local change and every write-through write, with its stamp (the store's clock is
 *   wrapped, and each command says which keys it is about to stamp, in order);
 * - every conflict reported, and every resolver decision;
 * - a Redis-side log of applied writes (the apply script publishes exactly what it wrote);
 * - the history of each cache's entries (I4) and every replacement of an entry (I4).
 *
 * @module
 */
import type { Cluster, Redis } from 'ioredis';
import { isDeepStrictEqual } from 'node:util';
import { expect } from 'vitest';
import { PubSubCacheManager } from '../src/cache/cache-manager.js';
import type { MessageEntry } from '../src/protocol/messages.js';
import { PubSubRedisDict } from '../src/store/pubsub-redis-dict.js';
import { HybridClock, type Stamp } from '../src/protocol/stamp.js';
import type { ConflictResolver } from '../src/write-back/conflict.js';
import { WriteBackCacheManager } from '../src/write-back/manager.js';
import { pollUntil } from '../test/helpers/connections.js';
import { MessageRecorder, clusterReady, fenceKeys, killSubscriber, redisState, waitForEvent, type RedisState } from './support.js';
import { type Conflict } from '../src/cache/types.js';
import { type VersionedChange, type WriteOutcome } from '../src/store/types.js';

export type Kind = 'pc' | 'wb';
export type PolicyName = 'last-writer-wins' | 'discard-on-remote-update' | 'custom';

/** Per-run configuration (generated). */
export interface RunConfig {
  readonly kinds: readonly Kind[];
  readonly syncs: readonly ('invalidate' | 'update')[];
  readonly caches: readonly (3 | 'unbounded')[];
  /** Clock skew of each instance, in ms. */
  readonly skews: readonly number[];
  /** What each instance does after a gap. */
  readonly onReconnect: readonly ('revalidate' | 'clear')[];
  /** Instances that keep serving while their subscription is down. */
  readonly serveStale: readonly boolean[];
}

/** A value: unique per write, so a value read tells which write it came from. */
export type Value = { readonly w: string } | { readonly merged: readonly unknown[]; readonly at: readonly string[] };

/** One write made by an instance: a local change (write-back) or a write-through write. */
export interface WriteRecord {
  readonly seq: number;
  readonly instance: number;
  /** `wb`: a local write-back change; `pc`: a write-through write; `clear`: a tombstone of clear(); `resolver`: a kept or merged change. */
  readonly kind: Kind | 'clear' | 'resolver';
  readonly key: string;
  readonly stamp: Stamp;
  readonly deleted: boolean;
  readonly value: unknown;
}

/** What a command is about to stamp, in order. */
export interface Expected {
  readonly key: string;
  readonly deleted: boolean;
  readonly value?: unknown;
  /** Default: the instance's kind. */
  readonly kind?: 'clear';
}

/** Keys the commands use; filler keys only push entries out of small LRUs. */
export const KEYS = ['a', 'b', 'c', 'd', 'e'] as const;
export const FILLERS = ['x0', 'x1', 'x2', 'x3'] as const;

type AnyManager = PubSubCacheManager<unknown>;

/** What the runs exercised (printed at the end of a file, so a green run shows it tested something). */
export const exercised = {
  killsEffective: 0,
  resyncs: 0,
  conflicts: { local: 0, remote: 0, merged: 0 },
  changesChecked: 0,
  keysCheckedLww: 0,
  cachedEntriesChecked: 0,
  flushInFlightRaces: 0,
  /** Calls that failed for a transient reason under a nemesis (accepted by the commands). */
  callsFailed: 0,
  /** Writes whose call failed: ambiguous outcomes (nemesis runs). */
  ambiguousWrites: 0,
  /** Ambiguous writes that Redis applied anyway (the recorder saw them). */
  ambiguousApplied: 0,
  /** I3: local changes known applied only because a read of Redis found them, never by the recorder (nemesis). */
  appliedUnrecorded: 0,
  /** Of those, changes no longer held at the check (a later restart erased them): only heldSeen knew. */
  appliedUnrecordedErased: 0,
  /**
   * I3: local changes known applied only by the server's append-only file (standalone nemesis):
   * the recorder missed their message and no read of Redis found them held (replaced, or erased
   * by a restart, before any read).
   */
  appliedOnlyLogged: 0,
  /** Writes of the model's keys read from the server's append-only file (the log is live). */
  loggedWrites: 0,
};

/** Reports every remote entry a manager receives (test-only hook on the protected `applyRemote`). */
class ObservedPC extends PubSubCacheManager<unknown> {
  onRemote: ((entry: MessageEntry) => void) | undefined;
  protected override applyRemote(entry: MessageEntry, deleted: boolean): boolean {
    this.onRemote?.(entry);
    return super.applyRemote(entry, deleted);
  }
}
class ObservedWB extends WriteBackCacheManager<unknown> {
  onRemote: ((entry: MessageEntry) => void) | undefined;
  protected override applyRemote(entry: MessageEntry, deleted: boolean): boolean {
    this.onRemote?.(entry);
    return super.applyRemote(entry, deleted);
  }
}

/** Errors a killed connection may report; anything else reported by a manager fails the run. */
const CONNECTION_ERROR = /ECONNRESET|EPIPE|Connection is closed|ECONNREFUSED|Socket closed|ETIMEDOUT|connect/i;

/**
 * Transient failures a nemesis causes on purpose: a command timeout (`CLIENT PAUSE`, the
 * instances' short `commandTimeout`), a cut or refused connection (restart, failover), a cluster
 * without a master for some slots while a replica takes over (`CLUSTERDOWN`), a restarted server
 * still loading. Not here on purpose: `MOVED`/`ASK` (the library must follow redirections),
 * `NOSCRIPT` (it must reload its script), `READONLY`, anything else.
 */
const TRANSIENT = /Command timed out|E_TIMEOUT|ECONNRESET|ECONNREFUSED|EPIPE|Connection is closed|Socket closed|Stream isn't writeable|ETIMEDOUT|CLUSTERDOWN|TRYAGAIN|LOADING|Reached the max retries per request|enableOfflineQueue/i;

/** True when `error` (and, for a flush error, every key's failure) is one a nemesis causes. */
export function isTransient(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  const failed = (error as { failed?: readonly { error: Error }[] }).failed;
  if (Array.isArray(failed) && failed.length > 0) return failed.every((f) => isTransient(f.error));
  if (TRANSIENT.test(`${error.name} ${error.message}`)) return true;
  return error.cause !== undefined && error.cause !== error && isTransient(error.cause);
}

export class Instance {
  readonly manager: AnyManager;
  readonly store: PubSubRedisDict<unknown>;
  /** Stamps this instance must attribute next (set by the running command). */
  expected: Expected[] = [];
  /** Set by the resolver when its decision makes a new local change. */
  resolverPending: { key: string; deleted: boolean; value: unknown } | undefined;
  readonly unattributed: Stamp[] = [];
  downs = 0;
  readonly remoteSeen = new Set<string>();
  /**
   * Highest stamp of a present entry this cache ever held, per key (I4), since the last restart
   * of the server this instance learnt of (see {@link Instance.serverRestarted}).
   */
  readonly highestHeld = new Map<string, Stamp>();
  /**
   * Set by a nemesis restart, until this instance's first resync after a reconnect (`reconnect`
   * or `run-id-changed`): only then does its I4 history start over. A cache that served (or
   * cached) an entry older than one it held before, without such a resync since the restart,
   * still fails I4 — unless it serves stale while disconnected (see {@link checkHistory}).
   */
  restartPending = false;
  /** Why each I4 history reset happened (the resync reason). */
  readonly historyResets: string[] = [];
  readonly errors: Error[] = [];
  /** Clock skew in ms (generated; a nemesis may change it within its bound). */
  skew: number;
  private writeWaiters: (() => void)[] = [];

  constructor(
    readonly world: World,
    readonly index: number,
    readonly kind: Kind,
    readonly redis: Redis | Cluster,
    sync: 'invalidate' | 'update',
    cache: 3 | 'unbounded',
    skew: number,
    policy: PolicyName,
    onReconnect: 'revalidate' | 'clear',
    readonly serveStaleWhileDisconnected: boolean,
  ) {
    this.skew = skew;
    this.store = new PubSubRedisDict<unknown>(redis, world.namespace);
    // A fixed writer id per instance (random otherwise), so that ties between stamps break the
    // same way when a seed is replayed; the wall clock is the model's, plus this instance's skew.
    (this.store as unknown as { clock: HybridClock }).clock = new HybridClock((index + 1).toString(16).padStart(16, '0'), () => world.now + this.skew);
    const common = { sync, cache, heartbeatIntervalMs: 1000, onReconnect, serveStaleWhileDisconnected } as const;
    if (kind === 'pc') this.manager = new ObservedPC(this.store, common);
    else {
      this.manager = new ObservedWB(this.store, {
        ...common,
        flushIntervalMs: 0,
        conflictPolicy: policy === 'custom' ? this.resolver() : policy,
      });
    }
    (this.manager as ObservedPC | ObservedWB).onRemote = (entry) => this.remoteSeen.add(`${entry.key}|${entry.stamp}`);
    this.manager.on('down', () => this.downs++);
    this.manager.on('resync', (info) => {
      if (!this.restartPending || (info.reason !== 'reconnect' && info.reason !== 'run-id-changed')) return;
      this.restartPending = false;
      this.highestHeld.clear();
      this.historyResets.push(info.reason);
    });
    this.manager.on('error', (error) => this.errors.push(error));
    this.manager.on('conflict', (conflict) => world.conflicts.push({ instance: index, conflict }));
    this.instrumentClock();
    this.instrumentStore();
    this.instrumentStorage();
  }

  get wb(): WriteBackCacheManager<unknown> {
    if (!(this.manager instanceof WriteBackCacheManager)) throw new Error(`instance ${this.index} is not write-back`);
    return this.manager;
  }

  /** Runs `action`, attributing the stamps it makes to `expected` (in order); all must be used. */
  async expecting<T>(expected: readonly Expected[], action: () => Promise<T>): Promise<T> {
    expect(this.expected, `instance ${this.index}: overlapping stamp expectations`).toEqual([]);
    this.expected = [...expected];
    const before = this.world.writes.length;
    try {
      return await action();
    } catch (error) {
      if (this.world.tolerates(error)) {
        // The call failed for a reason the nemesis caused: what it stamped may or may not have
        // been applied (a write queued behind CLIENT PAUSE runs after its caller gave up).
        for (const w of this.world.writes.slice(before)) if (w.instance === this.index) this.world.ambiguous.add(w.seq);
        this.expected = [];
      }
      throw error;
    } finally {
      const left = this.expected;
      this.expected = [];
      expect(left, `instance ${this.index}: expected stamps not made`).toEqual([]);
    }
  }

  /** Resolves when the store next sends a batch of versioned writes (a flush is in flight). */
  nextWrite(): Promise<void> {
    return new Promise((resolve) => this.writeWaiters.push(resolve));
  }

  private instrumentClock(): void {
    const clock = this.store.clock;
    const now = clock.now.bind(clock);
    clock.now = (): Stamp => {
      const stamp = now();
      const pending = this.resolverPending;
      if (pending !== undefined) {
        this.resolverPending = undefined;
        this.world.record({ instance: this.index, kind: 'resolver', key: pending.key, stamp, deleted: pending.deleted, value: pending.value });
      } else {
        const next = this.expected.shift();
        if (next === undefined) this.unattributed.push(stamp);
        else this.world.record({ instance: this.index, kind: next.kind ?? this.kind, key: next.key, stamp, deleted: next.deleted, value: next.value });
      }
      return stamp;
    };
  }

  private instrumentStore(): void {
    const store = this.store;
    // clear() deletes what SCAN finds, batch by batch: each batch's stamps are made synchronously
    // in the order of its (deduplicated) keys.
    const deleteMany = store.deleteMany.bind(store);
    store.deleteMany = (keys) => {
      const unique = [...new Set([...keys].map(String))];
      this.expected.push(...unique.map((key) => ({ key, deleted: true, kind: 'clear' as const })));
      return deleteMany(unique);
    };
    const writeVersioned = store.writeVersioned.bind(store);
    store.writeVersioned = (changes: readonly VersionedChange<unknown>[]): Promise<WriteOutcome<unknown>[]> => {
      const waiters = this.writeWaiters;
      this.writeWaiters = [];
      const result = writeVersioned(changes);
      for (const wake of waiters) wake();
      return result;
    };
  }

  /** I4: every replacement of a cached entry is by a stamp at least as new. */
  private instrumentStorage(): void {
    const storage = (this.manager.cache as unknown as { storage: { set(k: string, e: { stamp: string; present: boolean }): unknown; peek(k: string): { stamp: string } | undefined } }).storage;
    const set = storage.set.bind(storage);
    storage.set = (key, entry) => {
      const current = storage.peek(key);
      if (current !== undefined && entry.stamp < current.stamp) {
        this.world.violations.push(`I4: instance ${this.index} replaced ${key}@${current.stamp} by the older ${entry.stamp}`);
      }
      return set(key, entry);
    };
  }

  private resolver(): ConflictResolver<unknown> {
    return (local, remote, key) => {
      const h = [...(local.stamp + remote.stamp)].reduce((acc, ch) => (acc * 31 + ch.charCodeAt(0)) >>> 0, 7) % 3;
      const decision: 'local' | 'remote' | { value: Value } =
        h === 0
          ? 'local'
          : h === 1
            ? 'remote'
            : { value: { merged: [local.deleted ? null : (local.value ?? null), remote.deleted ? null : (remote.value ?? null)], at: [local.stamp, remote.stamp] } };
      this.world.decisions.push({ instance: this.index, key, local: local.stamp, remote: remote.stamp, decision: typeof decision === 'string' ? decision : 'merged' });
      if (decision === 'local') this.resolverPending = { key, deleted: local.deleted, value: local.value };
      else if (typeof decision === 'object') {
        this.resolverPending = { key, deleted: false, value: decision.value };
        this.world.valuesOf(key).add(JSON.stringify(decision.value));
      }
      return decision;
    };
  }

  /**
   * The server restarted without persistence (nemesis): its history starts over, so a key may
   * now hold an older stamp than before (a write by a lagging clock after the restart), and a
   * cache that follows Redis must follow it there. I4's history restarts with the instance's
   * first resync after a reconnect.
   */
  serverRestarted(): void {
    this.restartPending = true;
  }

  /**
   * I4 (history): a present entry is never older than one this cache held before for the key.
   *
   * Not checked, nor recorded, for an instance serving stale while disconnected from a restart
   * until its first reconnect resync: by design it keeps serving the lost history through the
   * cut (entries stamped before the restart) and may cache what the new server holds meanwhile,
   * two histories mixed until the resync reconciles them with Redis (seed `1088066372`: it kept
   * `e@…/02`, lost with the server, then followed Redis to the older `e@…/01` written after).
   */
  checkHistory(): void {
    if (this.serveStaleWhileDisconnected && this.restartPending) return;
    for (const key of this.manager.cache.keys()) {
      const entry = this.manager.cache.peek(key);
      if (entry === undefined || !entry.present) continue;
      const held = this.highestHeld.get(key);
      if (held !== undefined && entry.stamp < held) {
        this.world.violations.push(`I4: instance ${this.index} holds ${key}@${entry.stamp} after having held ${held}`);
      }
      if (held === undefined || entry.stamp > held) this.highestHeld.set(key, entry.stamp);
    }
  }

  /** True while the subscription is confirmed and its heartbeat answers (test-only look inside). */
  get subscribed(): boolean {
    return (this.manager as unknown as { subscriber: { healthy: boolean } }).subscriber.healthy;
  }

  /**
   * True while a resync runs (test-only look inside). With `serveStaleWhileDisconnected` the
   * manager keeps serving during its resync, so "serving and subscribed" does not say it is over.
   */
  get resyncing(): boolean {
    return (this.manager as unknown as { resyncing: boolean }).resyncing;
  }

  /** Errors other than those of a killed connection. */
  unexpectedErrors(): Error[] {
    return this.errors.filter((e) => !CONNECTION_ERROR.test(`${e.name} ${e.message}`) && !(this.world.nemesis !== undefined && isTransient(e)));
  }
}

/** What a nemesis does between commands (see `nemesis.ts`); the World only needs to heal it. */
export interface NemesisControl {
  /** Ends every fault still active (a `CLIENT PAUSE`), and waits until the recorder is live. */
  heal(world: World): Promise<void>;
  /** Reports to {@link World.noteLogged} what the server's log says it applied since the last call (standalone). */
  readAppliedLog?(world: World): Promise<void>;
  /** Waits until the recorder received every message published before (fence keys), healing nothing. */
  barrier(world: World): Promise<void>;
}

/** Options of {@link World.create} used by the nemesis runs. */
export interface WorldOptions {
  /** Creates each instance's connection (default: the admin factory). */
  readonly instanceFactory?: () => Redis | Cluster;
  /** Faults are injected: calls may fail for transient reasons, writes may be ambiguous. */
  readonly nemesis?: NemesisControl;
  /** The model's wall clock at the start (default 1,700,000,000,000). */
  readonly now?: number;
}

/** A command's view of the system under test. */
export class World {
  readonly namespace: string;
  now = 1_700_000_000_000;
  /** Set in nemesis runs. */
  nemesis: NemesisControl | undefined;
  /** Writes whose call failed for a transient reason: applied or not (the recorder tells). */
  readonly ambiguous = new Set<number>();
  /**
   * The last restart of the (standalone) server, which lost everything Redis held: writes made
   * before it (`seq` at most `seq`) and every message the recorder received before it (connection
   * `epoch` below `epoch`) are gone from Redis. See {@link survived}.
   */
  restartMark = { seq: 0, epoch: 0 };
  readonly instances: Instance[] = [];
  readonly writes: WriteRecord[] = [];
  readonly conflicts: { instance: number; conflict: Conflict<unknown> }[] = [];
  readonly decisions: { instance: number; key: string; local: Stamp; remote: Stamp; decision: 'local' | 'remote' | 'merged' }[] = [];
  /** Write-back `clear()` calls: the instance and how many writes were recorded before it. */
  readonly clears: { instance: number; before: number }[] = [];
  /**
   * `key|stamp` of every write a read of Redis found held (checks, and before each restart): it
   * was applied, even if the recorder missed its message (applied while the recorder was
   * reconnecting after a restart) and a later restart erased it (I3).
   */
  readonly heldSeen = new Set<string>();
  /** `key|stamp` of every write the server's append-only file shows applied (standalone nemesis; see `applied-log.ts`). */
  readonly logged = new Set<string>();
  /** The server's log was read (standalone nemesis): it must hold every write the recorder saw. */
  logActive = false;
  private loggedKeys: Map<string, string> | undefined;
  readonly violations: string[] = [];
  private readonly values = new Map<string, Set<string>>();
  private valueCounter = 0;
  private fenceRound = 0;
  private writeSeq = 0;
  readonly checker: PubSubRedisDict<unknown>;

  private constructor(
    readonly policy: PolicyName,
    admin: Redis | Cluster,
    readonly recorder: MessageRecorder,
    namespace: string,
  ) {
    this.namespace = namespace;
    // Writes the fences and reads what Redis holds; its clock is the model's.
    this.checker = new PubSubRedisDict<unknown>(admin, namespace);
    (this.checker as unknown as { clock: HybridClock }).clock = new HybridClock('00000000000000ff', () => this.now);
  }

  static async create(factory: () => Redis | Cluster, namespace: string, policy: PolicyName, config: RunConfig, opts: WorldOptions = {}): Promise<World> {
    const admin = factory();
    await clusterReady(admin);
    const recorder = await MessageRecorder.start(admin, namespace, opts.nemesis !== undefined);
    const world = new World(policy, admin, recorder, namespace);
    world.nemesis = opts.nemesis;
    if (opts.now !== undefined) world.now = opts.now;
    for (let i = 0; i < config.kinds.length; i++) {
      const redis = (opts.instanceFactory ?? factory)();
      world.instances.push(new Instance(world, i, config.kinds[i]!, redis, config.syncs[i]!, config.caches[i]!, config.skews[i]!, policy, config.onReconnect[i]!, config.serveStale[i]!));
    }
    await Promise.all(world.instances.map((inst) => inst.manager.ready()));
    return world;
  }

  /** True when `error` is a transient failure and a nemesis runs (commands then accept it). */
  tolerates(error: unknown): boolean {
    return this.nemesis !== undefined && isTransient(error);
  }

  /** `action()`, or `undefined` when it failed for a reason the nemesis caused (see {@link tolerates}). */
  async tolerant<T>(action: () => Promise<T>): Promise<T | undefined> {
    try {
      return await action();
    } catch (error) {
      if (this.tolerates(error)) {
        exercised.callsFailed++;
        return undefined;
      }
      throw error;
    }
  }

  /**
   * The write is in Redis's surviving history: the recorder saw it applied after the last
   * restart, or it was made after that restart and its call did not fail (a write-through write
   * that succeeded was applied, or refused because Redis held a newer one; a local write-back
   * change is flushed or reported). Without restart and without faults, every write.
   */
  survived(w: WriteRecord): boolean {
    if (this.recorder.saw(w.key, w.stamp, this.restartMark.epoch)) return true;
    return w.seq > this.restartMark.seq && !this.ambiguous.has(w.seq);
  }

  instance(i: number): Instance {
    return this.instances[i % this.instances.length]!;
  }

  /** A fresh value, unique in the run. */
  newValue(instance: number, key: string): Value {
    const value = { w: `${instance}.${++this.valueCounter}` };
    this.valuesOf(key).add(JSON.stringify(value));
    return value;
  }

  valuesOf(key: string): Set<string> {
    let set = this.values.get(key);
    if (!set) this.values.set(key, (set = new Set()));
    return set;
  }

  record(write: Omit<WriteRecord, 'seq'>): void {
    this.writes.push({ ...write, seq: ++this.writeSeq });
  }

  /** The latest local change of `key` by `instance` (write-back and resolver changes). */
  latestLocal(instance: number, key: string): WriteRecord | undefined {
    let latest: WriteRecord | undefined;
    for (const w of this.writes) if (w.instance === instance && w.key === key && (latest === undefined || w.stamp > latest.stamp)) latest = w;
    return latest;
  }

  /** Checks made after every command: I4 history, no unattributed stamp. */
  afterCommand(): void {
    for (const inst of this.instances) {
      inst.checkHistory();
      expect(inst.unattributed, `instance ${inst.index} made stamps no command asked for`).toEqual([]);
    }
    expect(this.violations).toEqual([]);
  }

  /** A value read must be one that was written to that key (or nothing). */
  checkRead(key: string, value: unknown): void {
    if (value === undefined) return;
    expect(this.valuesOf(key).has(JSON.stringify(value)), `read ${JSON.stringify(value)} for ${key}, never written to it`).toBe(true);
  }

  /** Kills one instance's subscriber and waits until the instance noticed (its `down` event). */
  async kill(i: number): Promise<void> {
    const inst = this.instance(i);
    // A subscriber not confirmed yet (reconnecting after a nemesis restart, say) has already
    // reported its `down`: cutting it again makes no new one. The quiesce checks it comes back.
    const wasUp = inst.subscribed;
    const down = waitForEvent(inst.manager, 'down', () => true, 10_000);
    down.catch(() => undefined);
    if (await killSubscriber(inst.manager, this.checker.redis)) {
      if (wasUp) await down;
      exercised.killsEffective++;
    }
  }

  /**
   * Quiesce: flush every write-back instance, wait until every subscription is live, then fence:
   * write one key per master and wait until every instance (and the recorder) received them
   * all. Messages on a connection arrive in publish order, so everything published before the
   * fence has been delivered. Repeats when a subscription went down meanwhile, or when a
   * resolver made new local changes while messages arrived.
   */
  async quiesce(): Promise<void> {
    if (this.nemesis !== undefined) await this.nemesis.heal(this);
    for (let attempt = 0; ; attempt++) {
      if (attempt >= 8) throw new Error('quiesce: no stable state after 8 attempts');
      await Promise.all(this.instances.filter((i) => i.kind === 'wb').map((i) => withDeadline(i.wb.onIdle(), 20_000, `onIdle of instance ${i.index}`)));
      if (this.nemesis !== undefined) await this.drainConnections();
      // isServing alone is not enough: with serveStaleWhileDisconnected it stays true while down.
      await pollUntil(() => this.instances.every((i) => i.manager.isServing && i.subscribed && !i.resyncing), { timeoutMs: 15_000, message: 'quiesce: every subscription live, no resync running' });
      const downs = this.instances.map((i) => i.downs);
      const keys = await fenceKeys(this.checker, `${++this.fenceRound}`);
      const stamps: Stamp[] = [];
      const clock = this.checker.clock;
      await this.checker.writeVersioned(keys.map((key) => {
        const stamp = clock.now();
        stamps.push(stamp);
        return { key, stamp, deleted: false, value: this.fenceRound };
      }));
      const marks = keys.map((key, j) => `${key}|${stamps[j]}`);
      const changed = (): boolean => this.instances.some((inst, j) => inst.downs !== downs[j]);
      await pollUntil(
        () => changed() || (this.instances.every((inst) => marks.every((m) => inst.remoteSeen.has(m))) && keys.every((k, j) => this.recorder.saw(k, stamps[j]!))),
        { timeoutMs: 15_000, intervalMs: 5, message: 'quiesce: fence delivered to every instance' },
      );
      if (changed()) continue;
      if (this.instances.some((i) => i.kind === 'wb' && i.wb.dirtyCount > 0)) continue;
      if (!this.instances.every((i) => i.manager.isServing && i.subscribed && !i.resyncing)) continue;
      return;
    }
  }

  /** Records a write the server's log shows applied (see {@link logged}); keys of other namespaces are ignored. */
  noteLogged(redisKey: string, stamp: string): void {
    this.loggedKeys ??= new Map([...KEYS, ...FILLERS].map((key) => [this.checker.redisKey(key), key]));
    const key = this.loggedKeys.get(redisKey);
    if (key === undefined) return;
    this.logged.add(`${key}|${stamp}`);
    exercised.loggedWrites++;
  }

  /** Records what Redis holds as applied (see {@link heldSeen}). */
  noteHeld(states: Map<string, RedisState>): void {
    for (const [key, state] of states) if (state.kind !== 'none') this.heldSeen.add(`${key}|${state.stamp}`);
  }

  /**
   * Under a nemesis: until every instance's own connection answered a PING. A write whose call
   * failed (its `commandTimeout` fired while the connection was reconnecting after a restart)
   * stays in ioredis's queue and is sent when the connection is back, possibly after the rest of
   * the quiesce: one connection runs its commands in order, so once the PING is answered, it was
   * applied, before the check reads Redis (seed 944926897: instance 2's write of c landed between
   * the check's read of Redis and its read through instance 2).
   */
  private async drainConnections(): Promise<void> {
    const answered = async (redis: Redis | Cluster): Promise<boolean> => {
      try {
        await redis.ping();
        if ('nodes' in redis) await Promise.all(redis.nodes('master').map((node) => node.ping()));
        return true;
      } catch (error) {
        if (this.tolerates(error)) return false;
        throw error;
      }
    };
    await pollUntil(async () => (await Promise.all(this.instances.map((i) => answered(i.redis)))).every(Boolean), {
      timeoutMs: 15_000,
      intervalMs: 10,
      message: "quiesce: every instance's connection answered a PING",
    });
  }

  /** What Redis holds for every key the commands use. */
  async redisStates(): Promise<Map<string, RedisState>> {
    const out = new Map<string, RedisState>();
    for (const key of [...KEYS, ...FILLERS]) out.set(key, await redisState(this.checker, key));
    return out;
  }

  /** I1, I2, I3 after a quiesce. */
  async checkInvariants(): Promise<void> {
    const states = await this.redisStates();
    this.noteHeld(states);
    await this.nemesis?.readAppliedLog?.(this);
    this.afterCommand();
    for (const inst of this.instances) {
      expect(inst.unexpectedErrors(), `instance ${inst.index} reported errors`).toEqual([]);
      if (inst.kind === 'wb') expect(inst.wb.dirtyCount, `instance ${inst.index} still dirty after quiesce`).toBe(0);
      // I1: every cached entry agrees with Redis (value and stamp; a cached miss: nothing live).
      for (const key of [...inst.manager.cache.keys()]) {
        if (key.startsWith('__fence__')) continue;
        const entry = inst.manager.cache.peek(key);
        if (entry === undefined) continue;
        exercised.cachedEntriesChecked++;
        const state = states.get(key) ?? (await redisState(this.checker, key));
        if (entry.present) {
          expect(state.kind === 'live' ? { stamp: state.stamp, value: state.value } : state, `I1: instance ${inst.index} caches ${key}`).toEqual({ stamp: entry.stamp, value: entry.value });
        } else {
          expect(state.kind, `I1: instance ${inst.index} caches a miss for ${key}`).not.toBe('live');
        }
      }
    }
    // I1 as a reader sees it: every instance serves what Redis holds, for every key.
    for (const inst of this.instances) {
      for (const key of KEYS) {
        const state = states.get(key)!;
        let served: unknown;
        try {
          served = await inst.manager.get(key);
        } catch (error) {
          // A read that misses goes to Redis on the instance's own connection, whose short
          // `commandTimeout` (pause) can fire on a loaded host even after the heal: like every
          // command's, such a failure is accepted (and counted); it tells nothing about the cache.
          if (!this.tolerates(error)) throw error;
          exercised.callsFailed++;
          continue;
        }
        expect(served, `I1: instance ${inst.index} serves ${key}`).toEqual(state.kind === 'live' ? state.value : undefined);
      }
    }
    this.checkNoSilentLoss(states);
    if (this.policy === 'last-writer-wins') this.checkLastWriterWins(states);
    this.checkConflictReports();
  }

  /** A write-back change discarded by the instance's own `clear()` (documented) and never applied. */
  private clearedLocally(w: WriteRecord): boolean {
    return this.clears.some((c) => c.instance === w.instance && c.before >= w.seq) && !this.recorder.saw(w.key, w.stamp);
  }

  /**
   * I3: every local change of a write-back instance was applied in Redis at some point (the
   * apply script published it), or superseded by a later change of the same instance to the same
   * key, or reported in a conflict, or discarded by that instance's own clear().
   */
  private checkNoSilentLoss(states: Map<string, RedisState>): void {
    // The log itself is checked: every write whose message the recorder received is in it.
    if (this.logActive) {
      for (const w of this.writes) {
        if (!w.key.startsWith('__fence__') && this.recorder.saw(w.key, w.stamp) && !this.logged.has(`${w.key}|${w.stamp}`)) this.violations.push(`the server's log misses ${w.key}@${w.stamp}, which the recorder saw applied`);
      }
    }
    for (const w of this.writes) {
      // Local changes only: write-through writes and clear()'s tombstones are compare-and-set
      // writes whose refusal means Redis holds a newer write (I2 covers them).
      if ((w.kind !== 'wb' && w.kind !== 'resolver') || w.key.startsWith('__fence__')) continue;
      exercised.changesChecked++;
      if (this.recorder.saw(w.key, w.stamp)) continue;
      // A write applied while the recorder was reconnecting (after a restart) is only known by
      // Redis holding it: now, or at an earlier check or restart (seed 619891131: written after a
      // first restart, held at the check after it, erased by a second one).
      if (this.nemesis !== undefined && this.heldSeen.has(`${w.key}|${w.stamp}`)) {
        exercised.appliedUnrecorded++;
        const now = states.get(w.key);
        if (now === undefined || now.kind === 'none' || now.stamp !== w.stamp) exercised.appliedUnrecordedErased++;
        continue;
      }
      // Applied while the recorder was reconnecting and replaced (or erased by a restart) before
      // any read of Redis: only the server's own log knows.
      if (this.logged.has(`${w.key}|${w.stamp}`)) {
        exercised.appliedOnlyLogged++;
        continue;
      }
      const superseded = this.writes.some((o) => o.instance === w.instance && o.key === w.key && o.stamp > w.stamp && (o.kind === 'wb' || o.kind === 'resolver'));
      if (superseded) continue;
      const reported = this.conflicts.some((c) => c.instance === w.instance && c.conflict.key === w.key && c.conflict.local.stamp === w.stamp);
      if (reported) continue;
      if (this.clearedLocally(w)) continue;
      this.violations.push(`I3: change ${w.key}=${JSON.stringify(w.value ?? null)}${w.deleted ? ' (delete)' : ''}@${w.stamp} of instance ${w.instance} was neither written nor reported`);
    }
    expect(this.violations).toEqual([]);
  }

  /** I2: under last-writer-wins, each key holds the highest-stamped write ever made to it. */
  private checkLastWriterWins(states: Map<string, RedisState>): void {
    for (const key of KEYS) {
      let best: WriteRecord | undefined;
      // Only what survived: writes lost with a restarted server's data, and ambiguous writes that
      // were never applied, are not candidates.
      const state = states.get(key)!;
      const held = (w: WriteRecord): boolean => this.nemesis !== undefined && state.kind !== 'none' && state.stamp === w.stamp;
      for (const w of this.writes) if (w.key === key && !this.clearedLocally(w) && (this.survived(w) || held(w)) && (best === undefined || w.stamp > best.stamp)) best = w;
      exercised.keysCheckedLww++;
      if (best === undefined) {
        expect(state.kind, `I2: nothing that survived was written to ${key}`).toBe('none');
        continue;
      }
      const expected = best.deleted ? { kind: 'tombstone', stamp: best.stamp } : { kind: 'live', stamp: best.stamp, value: best.value };
      expect(state, `I2: ${key} must hold the highest-stamped write (${best.stamp} by instance ${best.instance})`).toEqual(expected);
    }
  }

  /** Reported conflicts are genuine and follow the policy. */
  private checkConflictReports(): void {
    const stamps = new Set(this.writes.map((w) => w.stamp));
    for (const { instance, conflict } of this.conflicts) {
      expect(stamps.has(conflict.local.stamp), `conflict on ${conflict.key}: unknown local change ${conflict.local.stamp}`).toBe(true);
      const remote = this.writes.find((w) => w.stamp === conflict.remote.stamp);
      expect(remote, `conflict on ${conflict.key}: unknown remote write ${conflict.remote.stamp}`).toBeDefined();
      expect(remote!.instance).not.toBe(instance);
      if (this.policy === 'last-writer-wins') {
        expect(conflict.outcome).toBe('remote');
        expect(conflict.remote.stamp > conflict.local.stamp, 'LWW discarded a local change for an older remote one').toBe(true);
      }
      if (this.policy === 'custom') {
        const decision = this.decisions.find((d) => d.instance === instance && d.key === conflict.key && d.local === conflict.local.stamp && d.remote === conflict.remote.stamp);
        expect(decision?.decision, 'conflict outcome differs from the resolver decision').toBe(conflict.outcome);
      }
      if (conflict.remote.known && !conflict.remote.deleted) expect(isDeepStrictEqual(conflict.remote.value, remote!.value)).toBe(true);
    }
  }

  /** The record of the run, for `PROPERTY_VERBOSE=1` when a counterexample is replayed. */
  async describe(): Promise<string> {
    const short = (stamp: string): string => `${stamp.slice(10, 18)}/${stamp.slice(-2)}`;
    const lines = [
      'writes:',
      ...this.writes.map((w) => `  #${w.seq} i${w.instance} ${w.kind} ${w.key}${w.deleted ? ' DELETE' : `=${JSON.stringify(w.value)}`} @${short(w.stamp)} applied=${this.recorder.saw(w.key, w.stamp)}${this.logged.has(`${w.key}|${w.stamp}`) ? ' LOGGED' : ''}${this.ambiguous.has(w.seq) ? ' AMBIGUOUS' : ''}${this.survived(w) ? '' : ' LOST'}`),
      'conflicts:',
      ...this.conflicts.map(({ instance, conflict: c }) => `  i${instance} ${c.key} ${c.detectedBy} local@${short(c.local.stamp)} remote@${short(c.remote.stamp)} known=${c.remote.known} -> ${c.outcome}${c.stamp ? ` new@${short(c.stamp)}` : ''}`),
      'redis:',
      ...[...(await this.redisStates())].map(([k, st]) => `  ${k}: ${st.kind}${st.kind === 'none' ? '' : ` @${short(st.stamp)}`}${st.kind === 'live' ? ` ${JSON.stringify(st.value)}` : ''}`),
      'caches:',
      ...this.instances.map((i) => `  i${i.index} ${i.kind}: ${[...i.manager.cache.keys()].map((k) => { const e = i.manager.cache.peek(k)!; return `${k}${e.present ? `=${JSON.stringify(e.value)}` : ' miss'}@${e.stamp ? short(e.stamp) : '-'}`; }).join(', ')}`),
    ];
    return lines.join('\n');
  }

  async dispose(): Promise<void> {
    for (const { conflict } of this.conflicts) exercised.conflicts[conflict.outcome]++;
    exercised.ambiguousWrites += this.ambiguous.size;
    for (const w of this.writes) if (this.ambiguous.has(w.seq) && this.recorder.saw(w.key, w.stamp)) exercised.ambiguousApplied++;
    for (const inst of this.instances) exercised.resyncs += inst.manager.stats().resyncs;
    const closing = await Promise.allSettled(this.instances.map((inst) => inst.manager.close()));
    this.recorder.stop();
    for (const inst of this.instances) inst.redis.disconnect();
    this.checker.redis.disconnect();
    const failed = closing.find((c) => c.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
  }
}

/** Rejects when `promise` takes longer than `ms` (a deadline, not a sleep). */
export async function withDeadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
