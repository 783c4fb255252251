/**
 * The nemesis of the model-based runs: fault commands mixed into the `fc.commands` of
 * `commands.ts`, against servers the nemesis file spawns itself (a standalone server, and a 3+3
 * cluster when asked), so that restarts, pauses and failovers disturb no other test file.
 *
 * - `kill`: `CLIENT KILL` of every pub/sub connection of every node (the recorder's excepted);
 * - `restart`: `SHUTDOWN NOSAVE` and respawn on the same port (standalone): the data is gone;
 * - `pause`: `CLIENT PAUSE <ms> WRITE` on every master, while the instances' connections have a
 *   short `commandTimeout`: writes and flushes time out and are applied later (ambiguous);
 * - `scriptFlush`: `SCRIPT FLUSH` on every node (the next script call meets `NOSCRIPT`);
 * - `skew`: one instance's clock jumps ahead or behind, within a bound;
 * - `failover` (cluster): once the replica has every write, SIGKILL a master, wait for the
 *   replica's promotion, restart the old master (it rejoins as a replica).
 *
 * Every fault command first heals what is still active (a pause), and a quiesce heals everything.
 *
 * @module
 */
import fc from 'fast-check';
import { pollUntil } from '../test/helpers/poll.js';
import type { RedisClusterHandle, RedisServerHandle } from '../test/helpers/harness.js';
import { parseInfo, respCommand } from '../test/helpers/resp.js';
import { type Cmd, type Model, count, instArb } from './commands.js';
import type { FaultKind } from './config.js';
import { AppliedLog } from './applied-log.js';
import { RECORDER_NAME, fenceKeys } from './support.js';
import type { NemesisControl, World } from './world.js';
import type { Stamp } from '../src/protocol/stamp.js';
import { Cluster } from 'ioredis';

/** Faults injected (printed at the end of the file, for campaign figures). */
export const nemesisStats = {
  subscribersKilled: 0,
  restarts: 0,
  pauses: 0,
  scriptFlushes: 0,
  skews: 0,
  failovers: 0,
};

/** The servers a nemesis acts on. */
export type NemesisTarget = { readonly server: RedisServerHandle } | { readonly cluster: RedisClusterHandle };

/**
 * The arguments of a standalone server the nemesis can check against its own log: an append-only
 * file (see `applied-log.ts`; no fsync, no rewrite: the file is read, not recovered from).
 */
export const APPLIED_LOG_ARGS = ['--appendonly', 'yes', '--appendfsync', 'no', '--auto-aof-rewrite-percentage', '0', '--aof-use-rdb-preamble', 'no'];

/** One reader per server data folder, so that each run reads only what was appended since. */
const logs = new Map<string, AppliedLog>();

export class Nemesis implements NemesisControl {
  private fenceRound = 0;
  private readonly log: AppliedLog | undefined;

  constructor(readonly target: NemesisTarget) {
    if ('server' in target) {
      const dir = target.server.dir;
      this.log = logs.get(dir) ?? new AppliedLog(dir);
      logs.set(dir, this.log);
    }
  }

  /** What the standalone server's append-only file says it applied since the last read (none without `APPLIED_LOG_ARGS`). */
  async readAppliedLog(world: World): Promise<void> {
    if (this.log === undefined) return;
    world.logActive = true;
    await this.log.read((redisKey, stamp) => world.noteLogged(redisKey, stamp));
  }

  /** Every running node. */
  nodes(): RedisServerHandle[] {
    return 'server' in this.target ? [this.target.server] : this.target.cluster.nodes.filter((n) => n.alive);
  }

  /** Before a run: every node is up and, on a cluster, the topology is settled. */
  async prepare(): Promise<void> {
    if ('server' in this.target) {
      if (!this.target.server.alive) await this.target.server.restart();
      return;
    }
    for (const node of this.target.cluster.nodes) if (!node.alive) await node.restart();
    await this.target.cluster.waitForOk(60_000);
  }

  /** Ends a pause (on every node: cheap, and a failed run may have left one), then the recorder barrier. */
  async heal(world: World): Promise<void> {
    await Promise.all(this.nodes().map((n) => respCommand(n, ['CLIENT', 'UNPAUSE'], 5_000)));
    await this.barrier(world);
  }

  /**
   * Writes one fence key per master until the recorder received all of them: every message
   * published before has reached it (one connection delivers in order), and it is subscribed
   * again after a cut. A fence published while the recorder was reconnecting is lost: the next
   * round writes new ones (polling with a deadline).
   */
  async barrier(world: World): Promise<void> {
    await pollUntil(
      async () => {
        const keys = await fenceKeys(world.checker, `n${++this.fenceRound}`);
        const clock = world.checker.clock;
        const stamps: Stamp[] = keys.map(() => clock.now());
        await world.checker.writeVersioned(keys.map((key, j) => ({ key, stamp: stamps[j]!, deleted: false, value: this.fenceRound })));
        await world.recorder.until(() => keys.every((k, j) => world.recorder.saw(k, stamps[j]!)), 1_000, 'nemesis fence');
        return true;
      },
      { timeoutMs: 30_000, intervalMs: 10, message: 'nemesis: the recorder received a fence' },
    );
  }

  /** `CLIENT KILL` of every pub/sub connection except the recorder's, on every node. */
  async killSubscribers(world: World): Promise<void> {
    await this.heal(world);
    for (const node of this.nodes()) {
      const list = String(await respCommand(node, ['CLIENT', 'LIST', 'TYPE', 'pubsub'], 5_000));
      for (const line of list.split('\n')) {
        const id = /(?:^|\s)id=(\d+)/.exec(line)?.[1];
        const name = /(?:^|\s)name=(\S*)/.exec(line)?.[1] ?? '';
        if (id === undefined || name === RECORDER_NAME) continue;
        try {
          await respCommand(node, ['CLIENT', 'KILL', 'ID', id], 5_000);
          nemesisStats.subscribersKilled++;
        } catch (error) {
          if (!/No such client/i.test(String(error))) throw error;
        }
      }
    }
  }

  /**
   * `SHUTDOWN NOSAVE` and respawn (standalone): everything Redis held is gone. The World's
   * restart mark is set once the recorder's connection is cut (so every message it received
   * before belongs to the lost history), before the server comes back.
   */
  async restart(world: World): Promise<void> {
    if (!('server' in this.target)) return;
    await this.heal(world);
    // What Redis holds now was applied, though the recorder may have missed it (I3, see heldSeen).
    world.noteHeld(await world.redisStates());
    const epoch = world.recorder.epoch;
    await this.target.server.shutdownNoSave();
    // Everything the old server applied is in its log (flushed at shutdown); the new one starts
    // with no data and no log.
    await this.readAppliedLog(world);
    await this.log?.erase();
    await pollUntil(() => world.recorder.epoch > epoch, { timeoutMs: 10_000, intervalMs: 5, message: 'restart: the recorder saw its connection cut' });
    world.restartMark = { seq: world.writes.length === 0 ? 0 : world.writes[world.writes.length - 1]!.seq, epoch: world.recorder.epoch };
    for (const inst of world.instances) inst.serverRestarted();
    await this.target.server.restart();
    nemesisStats.restarts++;
    await this.barrier(world);
    // Writes applied before the recorder had subscribed again (an attempt queued in an instance's
    // connection while the server was down, sent on its reconnection) reached no recorder: they
    // are known by what Redis holds now (I3, see heldSeen; seed 1776045533).
    world.noteHeld(await world.redisStates());
  }

  /** `CLIENT PAUSE <ms> WRITE` on every master; the pause ends by itself or at the next heal. */
  async pause(ms: number): Promise<void> {
    const masters = 'server' in this.target ? [this.target.server] : await this.target.cluster.masters();
    await Promise.all(masters.map((n) => respCommand(n, ['CLIENT', 'PAUSE', ms, 'WRITE'], 5_000)));
    nemesisStats.pauses++;
  }

  async scriptFlush(): Promise<void> {
    await Promise.all(this.nodes().map((n) => respCommand(n, ['SCRIPT', 'FLUSH'], 5_000)));
    nemesisStats.scriptFlushes++;
  }

  /**
   * Failover of one master (cluster): waits until its replica acknowledged every write (so no
   * acknowledged write is lost: asynchronous replication loss is not modelled), SIGKILLs it,
   * waits for the promotion, restarts it (it rejoins as a replica) and waits until the cluster
   * agrees again.
   */
  async failover(world: World, which: number): Promise<void> {
    if (!('cluster' in this.target)) return;
    const cluster = this.target.cluster;
    await this.heal(world);
    const masters = await cluster.masters();
    const victim = masters[which % masters.length]!;
    await pollUntil(
      async () => {
        const info = parseInfo(String(await respCommand(victim, ['INFO', 'replication'], 2_000)));
        const offset = info['master_repl_offset'];
        const replica = Object.entries(info).find(([k]) => /^slave\d+$/.test(k))?.[1] ?? '';
        return /state=online/.test(replica) && new RegExp(`offset=${offset}(,|$)`).test(replica);
      },
      { timeoutMs: 15_000, intervalMs: 10, message: `failover: the replica of ${victim.port} caught up` },
    );
    await victim.kill('SIGKILL');
    await cluster.waitForOk(60_000);
    await victim.restart();
    await cluster.waitForOk(60_000);
    nemesisStats.failovers++;
    if (world.checker.redis instanceof Cluster) await new Promise<void>((resolve) => (world.checker.redis as Cluster).refreshSlotsCache(() => resolve()));
    await this.barrier(world);
    // As after a restart: what was applied while the recorder's connection to the old master was
    // cut is known by what Redis holds.
    world.noteHeld(await world.redisStates());
  }
}

function nemesisOf(w: World): Nemesis {
  if (!(w.nemesis instanceof Nemesis)) throw new Error('fault command without a nemesis');
  return w.nemesis;
}

class KillSubscribersCmd implements Cmd {
  check = (): boolean => true;
  async run(_m: Model, w: World): Promise<void> {
    count('fault:kill');
    await nemesisOf(w).killSubscribers(w);
    w.afterCommand();
  }
  toString = (): string => 'nemesis.killSubscribers';
}

class RestartCmd implements Cmd {
  check = (): boolean => true;
  async run(_m: Model, w: World): Promise<void> {
    count('fault:restart');
    await nemesisOf(w).restart(w);
    w.afterCommand();
  }
  toString = (): string => 'nemesis.restart';
}

class PauseCmd implements Cmd {
  constructor(readonly ms: number) {}
  check = (): boolean => true;
  async run(_m: Model, w: World): Promise<void> {
    count('fault:pause');
    await nemesisOf(w).pause(this.ms);
  }
  toString = (): string => `nemesis.pause(${this.ms})`;
}

class ScriptFlushCmd implements Cmd {
  check = (): boolean => true;
  async run(_m: Model, w: World): Promise<void> {
    count('fault:scriptFlush');
    await nemesisOf(w).scriptFlush();
  }
  toString = (): string => 'nemesis.scriptFlush';
}

class SkewCmd implements Cmd {
  constructor(readonly i: number, readonly ms: number) {}
  check = (): boolean => true;
  async run(_m: Model, w: World): Promise<void> {
    count('fault:skew');
    w.instance(this.i).skew = this.ms;
    nemesisStats.skews++;
  }
  toString = (): string => `nemesis.skew(${this.i}, ${this.ms})`;
}

class FailoverCmd implements Cmd {
  constructor(readonly which: number) {}
  check = (): boolean => true;
  async run(_m: Model, w: World): Promise<void> {
    count('fault:failover');
    await nemesisOf(w).failover(w, this.which);
    w.afterCommand();
  }
  toString = (): string => `nemesis.failover(${this.which})`;
}

/**
 * The fault commands of the enabled kinds (restart on a standalone server only, failover on a
 * cluster only), as one arbitrary; `[]` when none applies. A failover is rare (a few seconds each).
 */
export function faultArb(kinds: ReadonlySet<FaultKind>, topology: 'standalone' | 'cluster', maxSkewMs: number): fc.Arbitrary<Cmd> | undefined {
  const arbs: fc.WeightedArbitrary<Cmd>[] = [];
  if (kinds.has('kill')) arbs.push({ weight: 3, arbitrary: fc.constant(new KillSubscribersCmd()) });
  if (kinds.has('restart') && topology === 'standalone') arbs.push({ weight: 2, arbitrary: fc.constant(new RestartCmd()) });
  if (kinds.has('pause')) arbs.push({ weight: 3, arbitrary: fc.integer({ min: 50, max: 800 }).map((ms) => new PauseCmd(ms)) });
  if (kinds.has('scriptFlush')) arbs.push({ weight: 2, arbitrary: fc.constant(new ScriptFlushCmd()) });
  if (kinds.has('skew')) arbs.push({ weight: 2, arbitrary: fc.tuple(instArb, fc.integer({ min: -maxSkewMs, max: maxSkewMs })).map(([i, ms]) => new SkewCmd(i, ms)) });
  if (kinds.has('failover') && topology === 'cluster') arbs.push({ weight: 1, arbitrary: fc.nat(2).map((i) => new FailoverCmd(i)) });
  return arbs.length === 0 ? undefined : fc.oneof(...arbs);
}
