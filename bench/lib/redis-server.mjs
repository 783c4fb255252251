/**
 * A private redis-server for the benchmark: a child process on a free loopback port, no
 * persistence, stopped by its pid at the end (also on error, Ctrl-C, or an uncaught exception).
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { clearTimeout, setTimeout } from 'node:timers';

// A signal ends the process through process.exit, so that every server's 'exit' handler below
// kills it by pid (without this, Ctrl-C or a `timeout` would leave the servers running).
for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]]) {
  process.once(signal, () => process.exit(code));
}

/** A free TCP port on 127.0.0.1 (asked from the OS). */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Resolves when a PING on `port` answers PONG, or rejects after `timeoutMs`. */
async function waitForPing(port, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      let buffer = '';
      socket.setTimeout(500);
      socket.on('connect', () => socket.write('PING\r\n'));
      socket.on('data', (chunk) => {
        buffer += chunk;
        if (buffer.includes('\r\n')) {
          socket.destroy();
          resolve(buffer.startsWith('+PONG'));
        }
      });
      socket.on('timeout', () => {
        socket.destroy();
        resolve(false);
      });
      socket.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`redis-server on port ${port} did not answer PING within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The version string of the redis-server binary, or undefined when it is not installed. */
export function redisServerVersion(bin = 'redis-server') {
  const out = spawnSync(bin, ['--version'], { encoding: 'utf8' });
  if (out.error || out.status !== 0) return undefined;
  return /v=([\d.]+)/.exec(out.stdout)?.[1] ?? out.stdout.trim();
}

/**
 * Starts `redis-server` on a free loopback port (`extraArgs` appended to its command line, e.g. the
 * cluster options). Returns `{ url, port, pid, stop() }`.
 * `stop()` is idempotent; the server is also killed (by pid) when this process exits.
 */
export async function startRedisServer({ bin = process.env.REDIS_SERVER_BIN ?? 'redis-server', extraArgs = [] } = {}) {
  if (!redisServerVersion(bin)) {
    throw new Error(`\`${bin}\` was not found: install Redis (e.g. apt-get install redis-server) or pass --redis-url redis://host:port`);
  }
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'rpd-bench-redis-'));
  const child = spawn(
    bin,
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--daemonize', 'no', '--protected-mode', 'yes', '--loglevel', 'warning', ...extraArgs],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  child.stdout.on('data', (d) => (output = (output + d).slice(-4000)));
  child.stderr.on('data', (d) => (output = (output + d).slice(-4000)));
  let exited = false;
  const exitPromise = new Promise((resolve) => child.once('exit', () => ((exited = true), resolve())));

  const killNow = () => {
    if (!exited && child.pid) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  };
  process.once('exit', killNow);

  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    process.removeListener('exit', killNow);
    if (!exited && child.pid) {
      try {
        process.kill(child.pid, 'SIGTERM');
      } catch {
        // already gone
      }
      const timer = setTimeout(killNow, 3000);
      await exitPromise;
      clearTimeout(timer);
    }
    rmSync(dir, { recursive: true, force: true });
  };

  try {
    await Promise.race([
      waitForPing(port, 10_000),
      exitPromise.then(() => {
        throw new Error(`redis-server exited at start:\n${output}`);
      }),
    ]);
  } catch (error) {
    await stop();
    throw error;
  }
  return { url: `redis://127.0.0.1:${port}`, port, pid: child.pid, stop };
}
