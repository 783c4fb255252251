/**
 * Real-Redis test harness: spawns `redis-server` processes (standalone or a 3 masters + 3 replicas
 * cluster) on free loopback ports, or uses servers named by environment variables, or falls back to
 * testcontainers when a Docker engine is reachable.
 *
 * Used by vitest's global setup (`test/helpers/global-setup.ts`), by fault tests that need their own
 * servers to kill, pause or restart, and by `demo/demo.ts`. It must not import vitest.
 *
 * Process hygiene: every spawned server is registered in this module; whatever is still alive when
 * the Node process exits (normally, by an uncaught error, or by SIGINT/SIGTERM/SIGHUP) is SIGKILLed
 * by pid and the temporary data folders are removed, so a crashed test run never leaks servers.
 *
 * @module
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import { pollUntil } from './poll.js';
import { parseInfo, pingOk, respCommand } from './resp.js';

const execFileAsync = promisify(execFile);

/** Address every spawned server binds to. */
const LOOPBACK = '127.0.0.1';
/** Image used by the testcontainers fallback (same as docker-compose.yml). */
const DOCKER_IMAGE = 'redis:7.2';
/** `cluster-node-timeout` of every harness cluster, in ms. */
export const CLUSTER_NODE_TIMEOUT_MS = 2_000;
const CLUSTER_SLOTS = 16_384;
const STARTUP_TIMEOUT_MS = 15_000;
const STOP_GRACE_MS = 5_000;
const EXIT_TIMEOUT_MS = 10_000;

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/** A Redis endpoint. */
export interface RedisNode {
  /** Host name or IP address. */
  host: string;
  /** TCP port. */
  port: number;
}

/**
 * A `redis-server` process spawned by {@link startServer} (or as a node of {@link startCluster}).
 *
 * The handle keeps its port, data folder and arguments for its whole life, so {@link restart} brings
 * the "same" server back (a cluster node rejoins with its `nodes.conf`).
 */
export interface RedisServerHandle extends RedisNode {
  /** Pid of the current process, or `undefined` while it is not running. Changes on {@link restart}. */
  readonly pid: number | undefined;
  /** This server's data folder (holds `redis.log` and, for cluster nodes, `nodes.conf`). */
  readonly dir: string;
  /** `true` while the process is running (also when paused). */
  readonly alive: boolean;
  /** `true` between {@link pause} and {@link resume}. */
  readonly paused: boolean;
  /** `redis://host:port`. */
  url: string;
  /**
   * Stops the server for good: SIGCONT if paused, SIGTERM by pid, wait for exit, SIGKILL after a
   * deadline. Removes the data folder if this handle created it. Idempotent.
   */
  stop(): Promise<void>;
  /**
   * Sends `signal` (default SIGKILL: a crash, nothing is persisted) by pid and waits for the process
   * to exit. Only for signals that end the process. The data folder is kept, so {@link restart} works.
   */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** `SHUTDOWN NOSAVE` through `redis-cli`, then waits for the process to exit. */
  shutdownNoSave(): Promise<void>;
  /**
   * Starts the server again on the same port, with the same arguments and data folder, and waits
   * until it answers PING. A running server is stopped first. The new process has a new `run_id`.
   */
  restart(): Promise<void>;
  /** SIGSTOP: the process freezes, its sockets stay open (a hung server). */
  pause(): void;
  /** SIGCONT after {@link pause}. */
  resume(): void;
}

/** Options of {@link startServer}. */
export interface StartServerOptions {
  /** Port to use; by default a free one is chosen (and another one tried if it gets taken). */
  port?: number;
  /** Extra `redis-server` arguments, appended after the harness defaults (later ones win). */
  args?: string[];
  /** Start as a cluster node (`--cluster-enabled yes`, `nodes.conf`, 2 s node timeout). */
  cluster?: boolean;
  /**
   * Parent folder for the data folder (`<rootDir>/<port>`). By default a new temporary folder is
   * created and removed by {@link RedisServerHandle.stop}.
   */
  rootDir?: string;
}

/** A 3 masters + 3 replicas cluster started by {@link startCluster}. */
export interface RedisClusterHandle {
  /** The six node processes, in creation order (initially masters first, then replicas). */
  nodes: RedisServerHandle[];
  /** All node addresses, to seed a cluster client. */
  seeds: RedisNode[];
  /** The nodes that are masters owning slots right now, by ascending first slot (asks the cluster). */
  masters(): Promise<RedisServerHandle[]>;
  /** The nodes that are replicas right now (asks the cluster). */
  replicas(): Promise<RedisServerHandle[]>;
  /** Stops every node and removes the cluster's data folders if this handle created them. */
  stop(): Promise<void>;
  /**
   * Waits until every running, unpaused node reports `cluster_state:ok` with all 16384 slots ok, and
   * all of them agree on the topology (who is master of which slots, who replicates whom, no running
   * node flagged as failing, every stopped or paused node flagged `fail` and owning no slots, i.e.
   * any failover has completed), and every replica of a running master has its replication link up
   * (so it could take over at once). Default timeout 30 s.
   */
  waitForOk(timeoutMs?: number): Promise<void>;
}

/** Options of {@link startCluster}. */
export interface StartClusterOptions {
  /** Parent folder for the nodes' data folders; by default a new temporary folder owned by the handle. */
  rootDir?: string;
  /** Extra `redis-server` arguments for every node. */
  args?: string[];
}

/** Redis servers for a test run or the demo, from {@link startRedisEnvironment}. */
export interface RedisEnvironment {
  /** Where the standalone server comes from: environment variables, spawned processes, or Docker. */
  source: 'env' | 'spawned' | 'testcontainers';
  /** The standalone server (`url` may carry credentials/db when it came from `REDIS_URL`). */
  standalone: RedisNode & { url: string };
  /** Seed nodes of the 3+3 cluster, or `undefined` when no cluster was requested or none could be provided. */
  cluster: RedisNode[] | undefined;
  /** Human-readable origin of the cluster (e.g. "spawned", "env", or why there is none). */
  clusterSource: string;
  /** Stops everything this environment started (by pid / container) and removes its temporary folder. */
  stop(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Process registry and exit hooks
// ---------------------------------------------------------------------------------------------

const liveChildren = new Set<ChildProcess>();
const ownedFolders = new Set<string>();
/** Ports handed out by this process (never reused: handles keep their port across restarts). */
const reservedPorts = new Set<number>();
let hooksInstalled = false;

function killEverythingSync(): void {
  for (const child of liveChildren) {
    if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  liveChildren.clear();
  for (const folder of ownedFolders) {
    try {
      fs.rmSync(folder, { recursive: true, force: true });
    } catch {
      // best effort at exit
    }
  }
  ownedFolders.clear();
}

function installProcessHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', killEverythingSync);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const onSignal = (): void => {
      killEverythingSync();
      // If nobody else handles this signal, restore the default behaviour (terminate) and re-raise.
      if (process.listenerCount(signal) === 1) {
        process.removeListener(signal, onSignal);
        process.kill(process.pid, signal);
      }
    };
    process.on(signal, onSignal);
  }
}

async function createTempRoot(): Promise<string> {
  installProcessHooks();
  const root = await fsp.mkdtemp(path.join(os.tmpdir(), 'redis-pubsub-dict-'));
  ownedFolders.add(root);
  return root;
}

async function removeTempRoot(root: string): Promise<void> {
  ownedFolders.delete(root);
  await fsp.rm(root, { recursive: true, force: true });
}

// ---------------------------------------------------------------------------------------------
// Executables and ports
// ---------------------------------------------------------------------------------------------

/** Absolute path of `name` found on PATH (like `which`), or `undefined`. */
export function findExecutable(name: string): string | undefined {
  for (const dir of (process.env['PATH'] ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      if (fs.statSync(candidate).isFile()) return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

function requireExecutable(name: 'redis-server' | 'redis-cli'): string {
  const found = findExecutable(name);
  if (!found) {
    throw new Error(
      `${name} is not on PATH. Install it (Debian/Ubuntu: apt-get install redis-server redis-tools; ` +
        'macOS: brew install redis) or point the tests at running servers with REDIS_URL / REDIS_CLUSTER_NODES.',
    );
  }
  return found;
}

let serverMajorVersion: Promise<number> | undefined;

/** Major version of the `redis-server` on PATH (0 if it cannot be told). */
function redisServerMajor(bin: string): Promise<number> {
  serverMajorVersion ??= execFileAsync(bin, ['--version'], { timeout: 10_000 }).then(
    ({ stdout }) => Number(/v=(\d+)\./.exec(stdout)?.[1] ?? 0),
    () => 0,
  );
  return serverMajorVersion;
}

/** First port of the kernel's ephemeral range (outgoing connections take their local port from it). */
function ephemeralRangeStart(): number {
  try {
    const [low] = fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/);
    const value = Number(low);
    if (Number.isInteger(value) && value > 1024) return value;
  } catch {
    // not Linux
  }
  return 49_152; // IANA dynamic range start (macOS, Windows)
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.unref();
    server.once('error', () => resolve(false));
    server.listen({ port, host: LOOPBACK, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

function listenOnAnyPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', reject);
    server.listen({ port: 0, host: LOOPBACK, exclusive: true }, () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/**
 * Picks a port that is free now (and, for a cluster node, whose bus port `port + 10000` is free too).
 *
 * Ports are taken below the kernel's ephemeral range: a client that keeps reconnecting to a stopped
 * server on an ephemeral port can end up connected to itself (TCP self-connect), which would then
 * make {@link RedisServerHandle.restart} fail with EADDRINUSE. Falls back to `listen(0)` when the
 * range below is too small.
 */
export async function findFreePort(opts: { cluster?: boolean } = {}): Promise<number> {
  const cluster = opts.cluster ?? false;
  const low = 10_000;
  const high = ephemeralRangeStart() - 1 - (cluster ? 10_000 : 0);
  for (let attempt = 0; attempt < 200; attempt++) {
    let port: number;
    if (high - low >= 1_000) {
      port = low + Math.floor(Math.random() * (high - low + 1));
    } else {
      port = await listenOnAnyPort();
      if (cluster && port + 10_000 > 65_535) continue;
    }
    if (reservedPorts.has(port)) continue;
    if (!(await canListen(port))) continue;
    if (cluster && !(await canListen(port + 10_000))) continue;
    if (reservedPorts.has(port)) continue; // taken by a concurrent call meanwhile
    reservedPorts.add(port);
    return port;
  }
  throw new Error('could not find a free TCP port on 127.0.0.1');
}

// ---------------------------------------------------------------------------------------------
// A spawned redis-server
// ---------------------------------------------------------------------------------------------

class StartupError extends Error {
  override readonly name = 'StartupError';
  constructor(
    message: string,
    readonly addressInUse: boolean,
  ) {
    super(message);
  }
}

async function logTail(file: string, lines = 25): Promise<string> {
  try {
    const text = await fsp.readFile(file, 'utf8');
    return text.trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

class SpawnedRedisServer implements RedisServerHandle {
  readonly host = LOOPBACK;
  readonly url: string;
  readonly dir: string;
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private running = false;
  private isPaused = false;
  private spawnError: Error | undefined;

  constructor(
    private readonly bin: string,
    readonly port: number,
    private readonly argv: readonly string[],
    dir: string,
    /** Temp root created for this server alone, removed by stop(). */
    private readonly ownedRoot: string | undefined,
  ) {
    this.dir = dir;
    this.url = `redis://${LOOPBACK}:${port}`;
  }

  get pid(): number | undefined {
    return this.running ? this.child?.pid : undefined;
  }

  get alive(): boolean {
    return this.running;
  }

  get paused(): boolean {
    return this.running && this.isPaused;
  }

  get logFile(): string {
    return path.join(this.dir, 'redis.log');
  }

  /** Spawns the process and waits until it answers PING. */
  async launch(): Promise<void> {
    if (this.running) throw new Error(`redis-server on port ${this.port} is already running`);
    installProcessHooks();
    if (this.ownedRoot) ownedFolders.add(this.ownedRoot);
    await fsp.mkdir(this.dir, { recursive: true });
    this.spawnError = undefined;
    this.isPaused = false;
    const child = spawn(this.bin, this.argv, { stdio: 'ignore', detached: false });
    this.child = child;
    this.running = true;
    liveChildren.add(child);
    this.exited = new Promise<void>((resolve) => {
      const done = (): void => {
        liveChildren.delete(child);
        if (this.child === child) this.running = false;
        resolve();
      };
      child.once('exit', done);
      child.once('error', (error) => {
        this.spawnError = error;
        done();
      });
    });
    await this.waitUntilReady(child);
  }

  private async startupFailure(reason: string): Promise<StartupError> {
    const tail = await logTail(this.logFile);
    const spawnProblem = this.spawnError ? ` (${this.spawnError.message})` : '';
    return new StartupError(
      `redis-server on ${this.host}:${this.port} ${reason}${spawnProblem}.\n` +
        `command: ${this.bin} ${this.argv.map((a) => (a === '' ? "''" : a)).join(' ')}\n` +
        `last lines of ${this.logFile}:\n${tail}`,
      /Address already in use|EADDRINUSE/i.test(tail),
    );
  }

  private async waitUntilReady(child: ChildProcess): Promise<void> {
    const deadline = Date.now() + STARTUP_TIMEOUT_MS;
    while (true) {
      if (!this.running || this.child !== child) throw await this.startupFailure('exited during startup');
      if (await pingOk(this, 500)) {
        // Make sure PONG came from our process and not from someone who grabbed the port first.
        const info = parseInfo(String(await respCommand(this, ['INFO', 'server'], 2_000)));
        if (Number(info['process_id']) === child.pid) return;
        await this.kill('SIGKILL').catch(() => undefined);
        throw await this.startupFailure(`lost its port to another Redis (pid ${info['process_id']})`);
      }
      if (Date.now() >= deadline) {
        await this.kill('SIGKILL').catch(() => undefined);
        throw await this.startupFailure(`did not answer PING within ${STARTUP_TIMEOUT_MS} ms`);
      }
      // Poll again shortly, or at once if the process dies meanwhile.
      await Promise.race([delay(20), this.exited]);
    }
  }

  private async waitForExit(timeoutMs: number): Promise<boolean> {
    if (!this.running) return true;
    const ac = new AbortController();
    const exited = await Promise.race([
      this.exited.then(() => true),
      delay(timeoutMs, false, { signal: ac.signal }).catch(() => false),
    ]);
    ac.abort();
    return exited;
  }

  private signal(signal: NodeJS.Signals): void {
    const pid = this.child?.pid;
    if (!this.running || pid === undefined) return;
    try {
      process.kill(pid, signal);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
    }
  }

  async stop(): Promise<void> {
    if (this.running) {
      if (this.isPaused) this.resume();
      this.signal('SIGTERM');
      if (!(await this.waitForExit(STOP_GRACE_MS))) {
        this.signal('SIGKILL');
        if (!(await this.waitForExit(EXIT_TIMEOUT_MS))) {
          throw new Error(`redis-server pid ${this.child?.pid} on port ${this.port} survived SIGKILL`);
        }
      }
    }
    if (this.ownedRoot) await removeTempRoot(this.ownedRoot);
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (!this.running) return;
    this.signal(signal);
    if (this.isPaused && signal !== 'SIGKILL') this.signal('SIGCONT');
    this.isPaused = false;
    if (!(await this.waitForExit(EXIT_TIMEOUT_MS))) {
      throw new Error(`redis-server pid ${this.child?.pid} on port ${this.port} did not exit after ${signal}`);
    }
  }

  async shutdownNoSave(): Promise<void> {
    if (!this.running) return;
    if (this.isPaused) this.resume();
    const cli = findExecutable('redis-cli');
    if (cli) {
      // redis-cli reports the closed connection as success; its exit code is irrelevant here.
      await execFileAsync(cli, ['-h', this.host, '-p', String(this.port), 'SHUTDOWN', 'NOSAVE'], {
        timeout: EXIT_TIMEOUT_MS,
      }).catch(() => undefined);
    } else {
      await respCommand(this, ['SHUTDOWN', 'NOSAVE'], EXIT_TIMEOUT_MS).catch(() => undefined);
    }
    if (!(await this.waitForExit(EXIT_TIMEOUT_MS))) {
      throw new Error(`redis-server pid ${this.child?.pid} on port ${this.port} did not exit after SHUTDOWN NOSAVE`);
    }
  }

  async restart(): Promise<void> {
    if (this.running) {
      if (this.isPaused) this.resume();
      this.signal('SIGTERM');
      if (!(await this.waitForExit(STOP_GRACE_MS))) await this.kill('SIGKILL');
    }
    await this.launch();
  }

  pause(): void {
    if (!this.running) throw new Error(`cannot pause: redis-server on port ${this.port} is not running`);
    this.signal('SIGSTOP');
    this.isPaused = true;
  }

  resume(): void {
    if (!this.running) return;
    this.signal('SIGCONT');
    this.isPaused = false;
  }
}

const CLUSTER_ARGS = [
  '--cluster-enabled',
  'yes',
  '--cluster-config-file',
  'nodes.conf',
  '--cluster-node-timeout',
  String(CLUSTER_NODE_TIMEOUT_MS),
];

async function serverArgv(bin: string, port: number, dir: string, cluster: boolean, extra: readonly string[]): Promise<string[]> {
  const major = await redisServerMajor(bin);
  return [
    '--port',
    String(port),
    '--bind',
    LOOPBACK,
    '--daemonize',
    'no',
    '--save',
    '',
    '--appendonly',
    'no',
    '--dir',
    dir,
    '--logfile',
    path.join(dir, 'redis.log'),
    // A replica's full sync starts at once instead of after the default 5 s wait for more replicas.
    '--repl-diskless-sync-delay',
    '0',
    // DEBUG (e.g. DEBUG SLEEP, DEBUG SET-ACTIVE-EXPIRE) is off by default since Redis 7.
    ...(major >= 7 ? ['--enable-debug-command', 'local'] : []),
    ...(cluster ? CLUSTER_ARGS : []),
    ...extra,
  ];
}

/**
 * Spawns a `redis-server` bound to 127.0.0.1 (no persistence, DEBUG allowed from loopback) and waits
 * until it answers PING.
 *
 * @throws Error with the tail of the server log if it does not come up.
 */
export async function startServer(opts: StartServerOptions = {}): Promise<RedisServerHandle> {
  const bin = requireExecutable('redis-server');
  const cluster = opts.cluster ?? false;
  const ownedRoot = opts.rootDir === undefined ? await createTempRoot() : undefined;
  const root = opts.rootDir ?? (ownedRoot as string);
  const attempts = opts.port === undefined ? 5 : 1;
  try {
    for (let attempt = 1; ; attempt++) {
      const port = opts.port ?? (await findFreePort({ cluster }));
      const dir = path.join(root, String(port));
      const argv = await serverArgv(bin, port, dir, cluster, opts.args ?? []);
      const server = new SpawnedRedisServer(bin, port, argv, dir, ownedRoot);
      try {
        await server.launch();
        return server;
      } catch (error) {
        await fsp.rm(dir, { recursive: true, force: true }).catch(() => undefined);
        if (error instanceof StartupError && error.addressInUse && attempt < attempts) continue;
        throw error;
      }
    }
  } catch (error) {
    if (ownedRoot) await removeTempRoot(ownedRoot);
    throw error;
  }
}

// ---------------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------------

/** One line of `CLUSTER NODES`. */
interface ClusterNodeLine {
  id: string;
  port: number;
  flags: string[];
  masterId: string | undefined;
  /** Slot ranges owned (migrating/importing markers excluded). */
  slots: string[];
}

function parseClusterNodes(text: string): ClusterNodeLine[] {
  const lines: ClusterNodeLine[] = [];
  for (const raw of text.split('\n')) {
    const fields = raw.trim().split(' ');
    if (fields.length < 8) continue;
    const [id = '', address = '', flags = '', master = '-'] = fields;
    // ip:port@cport[,hostname]
    const hostPort = address.split(',')[0]?.split('@')[0] ?? '';
    lines.push({
      id,
      port: Number(hostPort.slice(hostPort.lastIndexOf(':') + 1)),
      flags: flags.split(','),
      masterId: master === '-' ? undefined : master,
      slots: fields.slice(8).filter((slot) => !slot.startsWith('[')),
    });
  }
  return lines;
}

const isFailing = (line: ClusterNodeLine): boolean =>
  line.flags.some((flag) => flag === 'fail' || flag === 'fail?' || flag === 'handshake' || flag === 'noaddr');

/** Why the cluster is not converged yet, or `undefined` when it is. */
async function clusterNotOkReason(
  healthy: readonly RedisNode[],
  down: readonly RedisNode[],
  totalNodes: number,
): Promise<string | undefined> {
  if (healthy.length === 0) return 'no running node';
  let reference: string | undefined;
  for (const node of healthy) {
    const where = `${node.host}:${node.port}`;
    const info = parseInfo(String(await respCommand(node, ['CLUSTER', 'INFO'], 2_000)));
    if (info['cluster_state'] !== 'ok') return `${where} has cluster_state:${info['cluster_state']}`;
    if (Number(info['cluster_slots_ok']) !== CLUSTER_SLOTS) return `${where} has cluster_slots_ok:${info['cluster_slots_ok']}`;
    if (Number(info['cluster_known_nodes']) !== totalNodes) {
      return `${where} knows ${info['cluster_known_nodes']} of ${totalNodes} nodes`;
    }
    const view = parseClusterNodes(String(await respCommand(node, ['CLUSTER', 'NODES'], 2_000)));
    for (const other of healthy) {
      const line = view.find((l) => l.port === other.port);
      if (!line) return `${where} does not list ${other.port}`;
      if (isFailing(line)) return `${where} flags ${other.port} as ${line.flags.join(',')}`;
    }
    for (const other of down) {
      const line = view.find((l) => l.port === other.port);
      if (line && !line.flags.includes('fail')) return `${where} does not flag the stopped node ${other.port} as failed yet`;
      if (line && line.slots.length > 0) return `${where} still maps slots to the stopped node ${other.port}`;
    }
    // A replica must be in sync with its (running) master, or it could not take over if the master
    // died next (it would refuse: "Disconnected from master for longer than allowed").
    const replication = parseInfo(String(await respCommand(node, ['INFO', 'replication'], 2_000)));
    if (replication['role'] === 'slave') {
      const masterPort = Number(replication['master_port']);
      const masterUp = healthy.some((other) => other.port === masterPort);
      if (masterUp && (replication['master_link_status'] !== 'up' || replication['master_sync_in_progress'] !== '0')) {
        return `replica ${where} is not in sync with its master ${masterPort} yet`;
      }
    }
    const signature = view
      .map((l) => `${l.id} ${l.flags.includes('master') ? 'master' : 'replica'} ${l.masterId ?? '-'} ${l.slots.join(',')}`)
      .sort()
      .join('\n');
    if (reference === undefined) reference = signature;
    else if (signature !== reference) return `${where} does not agree with ${healthy[0]?.port} on the topology yet`;
  }
  return undefined;
}

/**
 * Waits until the cluster formed by `nodes` is converged (see {@link RedisClusterHandle.waitForOk}).
 * `healthy` lists the nodes expected to be up (default: all); every other node must be flagged
 * `fail` by all healthy nodes and own no slots (i.e. failover, if needed, is complete).
 */
export async function waitForClusterOk(
  nodes: readonly RedisNode[],
  opts: { timeoutMs?: number; healthy?: () => readonly RedisNode[] } = {},
): Promise<void> {
  let reason: string | undefined = 'not checked yet';
  await pollUntil(
    async () => {
      const healthy = opts.healthy?.() ?? nodes;
      const down = nodes.filter((node) => !healthy.includes(node));
      reason = await clusterNotOkReason(healthy, down, nodes.length);
      return reason === undefined;
    },
    {
      timeoutMs: opts.timeoutMs ?? 30_000,
      intervalMs: 50,
      get message() {
        return `cluster ${nodes.map((n) => n.port).join(',')} did not converge: ${reason}`;
      },
    },
  );
}

async function clusterView(nodes: readonly SpawnedRedisServer[]): Promise<ClusterNodeLine[]> {
  let lastError: unknown = new Error('no running, unpaused node');
  for (const node of nodes) {
    if (!node.alive || node.paused) continue;
    try {
      return parseClusterNodes(String(await respCommand(node, ['CLUSTER', 'NODES'], 2_000)));
    } catch (error) {
      lastError = error;
    }
  }
  throw new Error('cannot read CLUSTER NODES from any node', { cause: lastError });
}

class SpawnedCluster implements RedisClusterHandle {
  readonly seeds: RedisNode[];

  constructor(
    readonly nodes: SpawnedRedisServer[],
    private readonly ownedRoot: string | undefined,
  ) {
    this.seeds = nodes.map(({ host, port }) => ({ host, port }));
  }

  private byPort(port: number): SpawnedRedisServer | undefined {
    return this.nodes.find((node) => node.port === port);
  }

  async masters(): Promise<RedisServerHandle[]> {
    const view = await clusterView(this.nodes);
    const firstSlot = (line: ClusterNodeLine): number => Math.min(...line.slots.map((s) => Number(s.split('-')[0])));
    return view
      .filter((line) => line.flags.includes('master') && !isFailing(line) && line.slots.length > 0)
      .sort((a, b) => firstSlot(a) - firstSlot(b))
      .map((line) => this.byPort(line.port))
      .filter((node): node is SpawnedRedisServer => node !== undefined);
  }

  async replicas(): Promise<RedisServerHandle[]> {
    const view = await clusterView(this.nodes);
    return view
      .filter((line) => line.flags.includes('slave') && !isFailing(line))
      .map((line) => this.byPort(line.port))
      .filter((node): node is SpawnedRedisServer => node !== undefined);
  }

  waitForOk(timeoutMs = 30_000): Promise<void> {
    return waitForClusterOk(this.nodes, {
      timeoutMs,
      healthy: () => this.nodes.filter((node) => node.alive && !node.paused),
    });
  }

  async stop(): Promise<void> {
    const results = await Promise.allSettled(this.nodes.map((node) => node.stop()));
    if (this.ownedRoot) await removeTempRoot(this.ownedRoot);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }
}

/**
 * Spawns six cluster-enabled `redis-server`s, creates a 3 masters + 3 replicas cluster with
 * `redis-cli --cluster create`, and waits until every node reports `cluster_state:ok` and all agree
 * on the slot map.
 */
export async function startCluster(opts: StartClusterOptions = {}): Promise<RedisClusterHandle> {
  const cli = requireExecutable('redis-cli');
  const ownedRoot = opts.rootDir === undefined ? await createTempRoot() : undefined;
  const rootDir = opts.rootDir ?? (ownedRoot as string);
  const started = await Promise.allSettled(
    Array.from({ length: 6 }, () => startServer({ cluster: true, rootDir, args: opts.args ?? [] })),
  );
  const nodes = started
    .filter((r): r is PromiseFulfilledResult<RedisServerHandle> => r.status === 'fulfilled')
    .map((r) => r.value as SpawnedRedisServer);
  const cluster = new SpawnedCluster(nodes, ownedRoot);
  try {
    const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    const args = ['--cluster', 'create', ...nodes.map((n) => `${n.host}:${n.port}`), '--cluster-replicas', '1', '--cluster-yes'];
    try {
      await execFileAsync(cli, args, { timeout: 60_000 });
    } catch (error) {
      const { stdout = '', stderr = '' } = error as { stdout?: string; stderr?: string };
      throw new Error(
        `redis-cli ${args.join(' ')} failed: ${(error as Error).message}\n${stdout.split('\n').slice(-20).join('\n')}\n${stderr}`,
        { cause: error },
      );
    }
    await cluster.waitForOk(30_000);
    return cluster;
  } catch (error) {
    await cluster.stop().catch(() => undefined);
    throw error;
  }
}

// ---------------------------------------------------------------------------------------------
// Environment: env vars, spawned processes, or testcontainers
// ---------------------------------------------------------------------------------------------

function parseRedisUrl(url: string): RedisNode & { url: string } {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new Error(`REDIS_URL is not a URL: ${JSON.stringify(url)} (expected redis://host:port)`);
  }
  if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') {
    throw new Error(`REDIS_URL must start with redis:// or rediss://, got ${JSON.stringify(url)}`);
  }
  const host = parsed.hostname.replace(/^\[(.*)\]$/, '$1') || LOOPBACK;
  return { host, port: parsed.port ? Number(parsed.port) : 6379, url };
}

/** Parses `REDIS_CLUSTER_NODES` (`host:port,host:port,...`; IPv6 as `[::1]:7000`). */
function parseClusterNodesVar(value: string): RedisNode[] {
  const nodes = value
    .split(',')
    .map((item) => item.trim())
    .filter(Boolean)
    .map((item) => {
      const match = /^\[?([^\]]+?)\]?:(\d+)$/.exec(item);
      if (!match) throw new Error(`REDIS_CLUSTER_NODES entry ${JSON.stringify(item)} is not host:port`);
      return { host: match[1] as string, port: Number(match[2]) };
    });
  if (nodes.length === 0) throw new Error('REDIS_CLUSTER_NODES is set but lists no host:port');
  return nodes;
}

type Testcontainers = typeof import('testcontainers');

/** Loads testcontainers and checks that a container runtime answers; the reason when not. */
async function loadTestcontainers(): Promise<{ tc: Testcontainers } | { reason: string }> {
  let tc: Testcontainers;
  try {
    tc = await import('testcontainers');
  } catch (error) {
    return { reason: `testcontainers is not installed (${(error as Error).message})` };
  }
  try {
    await tc.getContainerRuntimeClient();
    return { tc };
  } catch (error) {
    return { reason: `no reachable Docker engine (${(error as Error).message.split('\n')[0]})` };
  }
}

interface Started<T> {
  value: T;
  stop: () => Promise<void>;
}

async function startContainerStandalone(): Promise<Started<RedisNode & { url: string }>> {
  const { RedisContainer } = await import('@testcontainers/redis');
  const container = await new RedisContainer(DOCKER_IMAGE).start();
  return {
    value: { host: container.getHost(), port: container.getPort(), url: container.getConnectionUrl() },
    stop: async () => {
      await container.stop();
    },
  };
}

/**
 * A 3+3 cluster inside ONE container: six redis-server processes on ports published 1:1 on the host
 * and announcing 127.0.0.1, so the addresses in CLUSTER SLOTS work both inside the container (for
 * the cluster bus) and from the host (for clients). Needs a local Docker engine (host = localhost).
 */
async function startContainerCluster(tc: Testcontainers): Promise<Started<RedisNode[]>> {
  const ports: number[] = [];
  for (let i = 0; i < 6; i++) ports.push(await findFreePort({ cluster: true }));
  const nodeCommand = (port: number, background: boolean): string =>
    [
      'redis-server',
      `--port ${port}`,
      '--protected-mode no',
      '--cluster-enabled yes',
      `--cluster-config-file nodes-${port}.conf`,
      `--cluster-node-timeout ${CLUSTER_NODE_TIMEOUT_MS}`,
      '--cluster-announce-ip 127.0.0.1',
      "--save ''",
      '--appendonly no',
      '--dir /data',
      ...(background ? ['--daemonize yes', `--logfile /data/redis-${port}.log`] : []),
    ].join(' ');
  const script = [
    'set -e',
    ...ports.slice(0, -1).map((port) => nodeCommand(port, true)),
    `exec ${nodeCommand(ports[ports.length - 1] as number, false)}`,
  ].join('\n');
  const container = await new tc.GenericContainer(DOCKER_IMAGE)
    .withExposedPorts(...ports.map((port) => ({ container: port, host: port })))
    .withCommand(['sh', '-c', script])
    .withWaitStrategy(tc.Wait.forListeningPorts())
    .withStartupTimeout(60_000)
    .start();
  const stop = async (): Promise<void> => {
    await container.stop();
  };
  try {
    const host = container.getHost();
    if (!['localhost', '127.0.0.1', '::1'].includes(host)) {
      throw new Error(`the Docker engine is remote (${host}); the cluster announces 127.0.0.1`);
    }
    const create = await container.exec([
      'redis-cli',
      '--cluster',
      'create',
      ...ports.map((port) => `127.0.0.1:${port}`),
      '--cluster-replicas',
      '1',
      '--cluster-yes',
    ]);
    if (create.exitCode !== 0) throw new Error(`redis-cli --cluster create failed:\n${create.output}`);
    const nodes = ports.map((port) => ({ host: LOOPBACK, port }));
    await waitForClusterOk(nodes, { timeoutMs: 60_000 });
    return { value: nodes, stop };
  } catch (error) {
    await stop().catch(() => undefined);
    throw error;
  }
}

const NO_REDIS_HELP = [
  'No Redis available for the tests. Use one of:',
  '  1. point them at running servers: REDIS_URL=redis://host:port and, for the cluster suites,',
  '     REDIS_CLUSTER_NODES=host:port,host:port,... (e.g. `docker compose up -d` with docker-compose.yml);',
  '  2. install redis-server so it can be spawned from PATH (Debian/Ubuntu: `apt-get install redis-server`,',
  '     macOS: `brew install redis`);',
  '  3. run a Docker engine, so testcontainers can start redis:7.2.',
].join('\n');

/**
 * Provides Redis for a test run or the demo, in this order of preference:
 *
 * 1. `REDIS_URL` (standalone) and `REDIS_CLUSTER_NODES` (comma-separated `host:port` seeds) when set.
 *    With `REDIS_URL` but no `REDIS_CLUSTER_NODES`, a requested cluster is spawned locally if
 *    `redis-server` is on PATH, else there is no cluster (with a warning).
 * 2. `redis-server` from PATH: one standalone server, plus a 3+3 cluster if requested.
 * 3. testcontainers, when a Docker engine is reachable (`redis:7.2`; the cluster runs in a single
 *    container and needs a local engine, else there is no cluster, with a warning).
 * 4. Otherwise throws an Error explaining the three ways above.
 *
 * @param opts.cluster - also provide a 3 masters + 3 replicas cluster
 */
export async function startRedisEnvironment(opts: { cluster: boolean }): Promise<RedisEnvironment> {
  const envUrl = process.env['REDIS_URL']?.trim() || undefined;
  const envClusterNodes = process.env['REDIS_CLUSTER_NODES']?.trim() || undefined;
  const stoppers: Array<() => Promise<void>> = [];
  let stopped = false;
  const stopAll = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    const errors: unknown[] = [];
    for (const stop of stoppers.reverse()) {
      await stop().catch((error: unknown) => errors.push(error));
    }
    if (errors.length > 0) throw new AggregateError(errors, 'stopping the Redis environment failed');
  };

  try {
    let source: RedisEnvironment['source'];
    let standalone: RedisNode & { url: string };
    let cluster: RedisNode[] | undefined;
    let clusterSource = opts.cluster ? 'none' : 'not requested';
    const serverBin = findExecutable('redis-server');
    let root: string | undefined;
    const ensureRoot = async (): Promise<string> => {
      if (root === undefined) {
        const created = await createTempRoot();
        root = created;
        stoppers.push(() => removeTempRoot(created));
      }
      return root;
    };

    if (envUrl) {
      // (a) servers named by the environment
      source = 'env';
      standalone = parseRedisUrl(envUrl);
      if (opts.cluster) {
        if (envClusterNodes) {
          cluster = parseClusterNodesVar(envClusterNodes);
          clusterSource = 'env';
        } else if (serverBin && findExecutable('redis-cli')) {
          const spawned = await startCluster({ rootDir: await ensureRoot() });
          stoppers.push(() => spawned.stop());
          cluster = spawned.seeds;
          clusterSource = 'spawned';
        } else {
          clusterSource = 'none: REDIS_CLUSTER_NODES is unset and redis-server/redis-cli are not on PATH';
          console.warn(`[redis] WARNING: no cluster (${clusterSource}); cluster suites will not run.`);
        }
      }
    } else if (serverBin) {
      // (b) spawn from PATH
      source = 'spawned';
      const server = await startServer({ rootDir: await ensureRoot() });
      stoppers.push(() => server.stop());
      standalone = { host: server.host, port: server.port, url: server.url };
      if (opts.cluster) {
        if (envClusterNodes) {
          cluster = parseClusterNodesVar(envClusterNodes);
          clusterSource = 'env';
        } else {
          const spawned = await startCluster({ rootDir: await ensureRoot() });
          stoppers.push(() => spawned.stop());
          cluster = spawned.seeds;
          clusterSource = 'spawned';
        }
      }
    } else {
      // (c) testcontainers
      const loaded = await loadTestcontainers();
      if ('reason' in loaded) throw new Error(`${NO_REDIS_HELP}\n(redis-server is not on PATH; ${loaded.reason}.)`);
      source = 'testcontainers';
      const container = await startContainerStandalone();
      stoppers.push(container.stop);
      standalone = container.value;
      if (opts.cluster && envClusterNodes) {
        cluster = parseClusterNodesVar(envClusterNodes);
        clusterSource = 'env';
      } else if (opts.cluster) {
        try {
          const clusterContainer = await startContainerCluster(loaded.tc);
          stoppers.push(clusterContainer.stop);
          cluster = clusterContainer.value;
          clusterSource = 'testcontainers';
        } catch (error) {
          clusterSource = `none: could not run a cluster under Docker (${(error as Error).message.split('\n')[0]})`;
          console.warn(
            `[redis] WARNING: ${clusterSource}; cluster suites will not run. ` +
              'Install redis-server or set REDIS_CLUSTER_NODES (see docker-compose.yml).',
          );
        }
      }
    }

    return { source, standalone, cluster, clusterSource, stop: stopAll };
  } catch (error) {
    await stopAll().catch(() => undefined);
    throw error;
  }
}
