/**
 * Tests of the real-Redis test harness itself: the provided endpoints, spawned servers and their
 * fault controls (restart, shutdown, kill, pause), a private cluster with failover, and the TCP proxy.
 */
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import {
  clusterSeeds,
  hasCluster,
  pollUntil,
  standaloneClient,
  uniqueNamespace,
  withClients,
} from '../helpers/connections.js';
import { startCluster, startServer, type RedisNode, type RedisServerHandle } from '../helpers/harness.js';
import { parseInfo, pingOk } from '../helpers/resp.js';
import { startTcpProxy } from '../helpers/tcp-proxy.js';

const clients = withClients({ closeAfter: 'each' });

/** A client that fails fast instead of retrying, for probing servers that may be down. */
function probe(node: RedisNode, extra: RedisOptions = {}): Redis {
  return clients.track(
    new Redis({
      host: node.host,
      port: node.port,
      lazyConnect: true,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
      ...extra,
    }),
  );
}

/** Expected errors (timeouts, resets) are asserted through promises; keep ioredis from logging them. */
function quiet<T extends Redis>(client: T): T {
  client.on('error', () => undefined);
  return client;
}

async function runId(node: RedisNode): Promise<string> {
  const client = probe(node);
  await client.connect();
  const info = parseInfo(await client.info('server'));
  client.disconnect();
  return info['run_id'] ?? '';
}

function countRoles(clusterNodes: string): { masters: number; replicas: number } {
  const lines = clusterNodes.trim().split('\n');
  return {
    masters: lines.filter((line) => / (myself,)?master /.test(line) && line.split(' ').length > 8).length,
    replicas: lines.filter((line) => / (myself,)?slave /.test(line)).length,
  };
}

describe('provided endpoints', () => {
  it('the standalone server answers PING', async () => {
    const redis = clients.track(standaloneClient());
    await expect(redis.ping()).resolves.toBe('PONG');
  });

  it.skipIf(!hasCluster())('the cluster has 3 masters with slots, 3 replicas, and cluster_state:ok everywhere', async () => {
    const seeds = clusterSeeds();
    expect(seeds).toHaveLength(6);
    for (const seed of seeds) {
      const node = probe(seed);
      await node.connect();
      const info = parseInfo(String(await node.call('CLUSTER', 'INFO')));
      expect(info['cluster_state'], `${seed.port}`).toBe('ok');
      expect(info['cluster_slots_ok'], `${seed.port}`).toBe('16384');
      expect(countRoles(String(await node.call('CLUSTER', 'NODES')))).toEqual({ masters: 3, replicas: 3 });
    }

    const cluster = clients.track(new Cluster(seeds));
    const ns = uniqueNamespace('harness');
    const keys = Array.from({ length: 30 }, (_, i) => `${ns}:${i}`);
    for (const key of keys) await cluster.set(key, key, 'EX', 60);
    for (const key of keys) await expect(cluster.get(key)).resolves.toBe(key);
    expect(cluster.nodes('master')).toHaveLength(3);
  });
});

describe('startServer', () => {
  const servers: RedisServerHandle[] = [];
  afterAll(async () => {
    await Promise.all(servers.map((server) => server.stop()));
  });

  it('restart() keeps the port and starts a new process (new run_id, data gone)', async () => {
    const server = await startServer();
    servers.push(server);
    expect(server.url).toBe(`redis://127.0.0.1:${server.port}`);
    const before = { pid: server.pid, runId: await runId(server) };
    const writer = probe(server);
    await writer.connect();
    await writer.set('k', 'v');
    writer.disconnect();

    await server.restart();
    expect(server.alive).toBe(true);
    expect(server.pid).not.toBe(before.pid);
    expect(await runId(server)).not.toBe(before.runId);
    const reader = probe(server);
    await reader.connect();
    await expect(reader.get('k')).resolves.toBeNull(); // --save '' --appendonly no
  });

  it('shutdownNoSave() ends the process; restart() brings it back on the same port', async () => {
    const server = await startServer();
    servers.push(server);
    const port = server.port;
    await server.shutdownNoSave();
    expect(server.alive).toBe(false);
    expect(server.pid).toBeUndefined();
    expect(await pingOk(server, 500)).toBe(false);
    await server.restart();
    expect(server.port).toBe(port);
    expect(await pingOk(server)).toBe(true);
  });

  it('kill() crashes it; pause()/resume() freeze and thaw it', async () => {
    const server = await startServer();
    servers.push(server);

    const client = probe(server, { commandTimeout: 300 });
    await client.connect();
    server.pause();
    expect(server.paused).toBe(true);
    await expect(client.ping()).rejects.toThrow(/timed out/i);
    server.resume();
    expect(server.paused).toBe(false);
    await pollUntil(() => pingOk(server), { timeoutMs: 5_000, message: 'server did not answer after resume' });

    const pid = server.pid;
    expect(pid).toBeTypeOf('number');
    await server.kill();
    expect(server.alive).toBe(false);
    expect(() => process.kill(pid as number, 0)).toThrow(); // the process is gone
  });

  it('passes extra arguments to redis-server and allows DEBUG from loopback', async () => {
    const server = await startServer({ args: ['--maxmemory', '12mb'] });
    servers.push(server);
    const client = probe(server);
    await client.connect();
    expect(await client.config('GET', 'maxmemory')).toEqual(['maxmemory', String(12 * 1024 * 1024)]);
    await expect(client.call('DEBUG', 'SLEEP', '0')).resolves.toBe('OK');
  });
});

describe('startCluster', () => {
  it('forms a 3+3 cluster that fails over when a master dies and takes it back as a replica', async () => {
    const started = Date.now();
    const cluster = await startCluster();
    try {
      console.log(`[harness.test] private cluster ready in ${Date.now() - started} ms`);
      const masters = await cluster.masters();
      expect(masters).toHaveLength(3);
      expect(await cluster.replicas()).toHaveLength(3);
      expect(cluster.seeds).toHaveLength(6);

      const victim = masters[0] as RedisServerHandle;
      await victim.kill();
      const failoverStarted = Date.now();
      await cluster.waitForOk(30_000);
      console.log(`[harness.test] failover converged in ${Date.now() - failoverStarted} ms`);
      const after = await cluster.masters();
      expect(after).toHaveLength(3);
      expect(after).not.toContain(victim);

      await victim.restart();
      await cluster.waitForOk(30_000);
      expect((await cluster.replicas()).map((n) => n.port)).toContain(victim.port);

      const client = clients.track(new Cluster(cluster.seeds));
      await client.set('harness-failover', '1');
      await expect(client.get('harness-failover')).resolves.toBe('1');
    } finally {
      await cluster.stop();
    }
    expect(cluster.nodes.every((node) => !node.alive)).toBe(true);
  });
});

describe('tcp proxy', () => {
  it('passes traffic, blackholes silently, and passes again on a new connection', async () => {
    const target = await startServer();
    const proxy = await startTcpProxy(target);
    try {
      const first = clients.track(quiet(new Redis({ host: proxy.host, port: proxy.port, commandTimeout: 300 })));
      await expect(first.ping()).resolves.toBe('PONG');

      proxy.setMode('blackhole');
      await expect(first.ping()).rejects.toThrow(/timed out/i);
      expect(first.status).toBe('ready'); // a silent partition: nothing tells the client

      // New connections while blackholed are accepted but never answered.
      const during = clients.track(
        quiet(new Redis({ host: proxy.host, port: proxy.port, enableReadyCheck: false, commandTimeout: 300 })),
      );
      await expect(during.ping()).rejects.toThrow(/timed out/i);

      proxy.setMode('pass');
      const second = clients.track(quiet(new Redis({ host: proxy.host, port: proxy.port, commandTimeout: 1_000 })));
      await expect(second.ping()).resolves.toBe('PONG');

      // The connection that lost bytes stays broken until reset; after a reset the client reconnects.
      await expect(first.ping()).rejects.toThrow(/timed out/i);
      const reconnected = new Promise<void>((resolve) => first.once('ready', () => resolve()));
      proxy.resetAll();
      await reconnected;
      await expect(first.ping()).resolves.toBe('PONG');
    } finally {
      await clients.closeAll();
      await proxy.close();
      await target.stop();
    }
  });
});
