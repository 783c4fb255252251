/**
 * A private 3 masters + 3 replicas Redis Cluster for the benchmark: six `redis-server` children
 * (see redis-server.mjs: free loopback ports, no persistence, stopped by pid), joined with
 * `redis-cli --cluster create`. Returns `{ nodes: [{ host, port }], pids, stop() }`.
 */
import { spawnSync } from 'node:child_process';
import net from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import { startRedisServer } from './redis-server.mjs';

/** One command over a raw socket (inline protocol); resolves with the reply text. */
function ask(port, line) {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    let buffer = '';
    socket.setTimeout(1000);
    socket.on('connect', () => socket.write(`${line}\r\n`));
    socket.on('data', (chunk) => {
      buffer += chunk;
      if (/cluster_state:\w+/.test(buffer) || buffer.startsWith('-')) {
        socket.destroy();
        resolve(buffer);
      }
    });
    socket.on('timeout', () => {
      socket.destroy();
      resolve(buffer);
    });
    socket.on('error', () => resolve(''));
  });
}

export async function startRedisCluster({ cli = process.env.REDIS_CLI_BIN ?? 'redis-cli' } = {}) {
  const servers = [];
  const stop = async () => {
    await Promise.all(servers.map((s) => s.stop()));
  };
  try {
    for (let i = 0; i < 6; i++) {
      servers.push(await startRedisServer({ extraArgs: ['--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', '5000'] }));
    }
    const addresses = servers.map((s) => `127.0.0.1:${s.port}`);
    const created = spawnSync(cli, ['--cluster', 'create', ...addresses, '--cluster-replicas', '1', '--cluster-yes'], { encoding: 'utf8' });
    if (created.status !== 0) throw new Error(`redis-cli --cluster create failed:\n${created.stdout}\n${created.stderr}`);
    const deadline = Date.now() + 30_000;
    for (;;) {
      const states = await Promise.all(servers.map((s) => ask(s.port, 'CLUSTER INFO')));
      if (states.every((s) => /cluster_state:ok/.test(s) && /cluster_slots_ok:16384/.test(s))) break;
      if (Date.now() > deadline) throw new Error('the benchmark cluster did not reach cluster_state:ok within 30 s');
      await delay(100);
    }
  } catch (error) {
    await stop();
    throw error;
  }
  return { nodes: servers.map((s) => ({ host: '127.0.0.1', port: s.port })), pids: servers.map((s) => s.pid), stop };
}
