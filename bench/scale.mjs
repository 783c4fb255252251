/**
 * `npm run bench -- --scale`: the cost per key of every batch operation at n = 10k, 100k and 1M
 * keys (issue #17), on a standalone server and on a 3 masters + 3 replicas cluster, both spawned
 * here (or `--redis-url` for the standalone part only). The claim checked: the cost per key at the
 * largest n is at most 1.5 times the cost per key at the smallest n (no super-linear path).
 *
 *   npm run bench -- --scale [--scale-sizes 10000,100000,1000000] [--scale-topologies standalone,cluster]
 *
 * Every operation is one call over all n keys (one `getMany` of n keys, one `setMany` of n pairs...),
 * except the write-back sets (n `set()` calls, then one `flush()`), measured from before the call
 * until its promise settles, after a full GC. The cost compared is CPU time, this process's
 * (`process.cpuUsage()`) plus every Redis server's (`INFO cpu`), not wall time: on a machine shared
 * with other work a call of a few ms often runs within one scheduling slice while a call of
 * seconds waits its turn many times, which makes wall time per key grow with n for no algorithmic
 * reason (measured: hot getMany 0.1 µs/key at 10k and 3-8 µs/key at 100k, wall, load average 20
 * on 2 cores). The wall time is reported beside it. One measurement per (operation, n), the median of 3 for the
 * operations that change nothing (hot getMany, resync, keys()).
 *
 * Writes bench/results/scale.json, scale.md and scale.svg, and splices scale.md into
 * docs/benchmarks.md between its `scale:start` and `scale:end` markers.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join, relative } from 'node:path';
import { makeValue } from './lib/data.mjs';
import { startRedisCluster } from './lib/redis-cluster.mjs';
import { redisServerVersion, startRedisServer } from './lib/redis-server.mjs';
import { benchDir, rootDir, rootRequire } from './lib/root.mjs';
import { barChart } from './lib/svg.mjs';
import { now, since } from './lib/timing.mjs';
import { load } from './adapters/redis-pubsub-dict.mjs';

const fmt = (n, digits = 0) => (Number.isFinite(n) ? n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits }) : '—');

const OPERATIONS = [
  ['setMany', 'setMany of n new keys (write-through, published)'],
  ['getMany hot', 'getMany of n cached keys'],
  ['getMany cold', 'getMany of n keys on a fresh manager (read from Redis, cached)'],
  ['resync', 'resync of n cached keys (stamps revalidated)'],
  ['keys()', 'keys() iteration over n keys (SCAN)'],
  ['deleteMany', 'deleteMany of n keys (write-through, published)'],
  ['write-back new', 'write-back: n set() of new keys, then flush()'],
  ['write-back existing', 'write-back: n set() of existing keys, then flush()'],
  ['clear()', 'clear() of n keys (SCAN + deletes, published)'],
];

/**
 * @param {object} opts
 * @param {(line: string) => void} opts.log
 * @param {string | undefined} opts.redisUrl  a user's standalone Redis (the cluster part is then skipped)
 * @param {number[]} opts.sizes
 * @param {string[]} opts.topologies
 * @param {string | undefined} opts.outDir
 */
export async function runScale({ log, redisUrl, sizes, topologies, outDir }) {
  const { mod, error } = await load();
  if (error) throw new Error(`the library is not built: ${error}`);
  const { PubSubRedisDict, PubSubCacheManager, WriteBackCacheManager } = mod;
  const ioredis = rootRequire('ioredis');
  const { Redis, Cluster } = ioredis;
  const rows = [];
  const meta = {
    date: new Date().toISOString(),
    loadAverageAtStart: os.loadavg(),
    node: process.version,
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model,
    redis: redisServerVersion(),
    sizes,
  };

  for (const topology of topologies) {
    let stop = async () => {};
    let makeClient;
    let serverPorts = [];
    if (topology === 'standalone') {
      let url = redisUrl;
      if (!url) {
        const server = await startRedisServer();
        url = server.url;
        stop = server.stop;
        log(`scale › standalone redis-server on ${url} (pid ${server.pid})`);
      }
      serverPorts = [url];
      makeClient = () => new Redis(url, { maxRetriesPerRequest: 3 });
    } else {
      if (redisUrl) {
        log('scale › cluster: skipped with --redis-url');
        continue;
      }
      const cluster = await startRedisCluster();
      stop = cluster.stop;
      log(`scale › 3+3 cluster on ${cluster.nodes.map((n) => n.port).join(', ')} (pids ${cluster.pids.join(', ')})`);
      makeClient = () => new Cluster(cluster.nodes, { redisOptions: { maxRetriesPerRequest: 3 } });
      serverPorts = cluster.nodes.map((node) => `redis://${node.host}:${node.port}`);
    }
    try {
      for (const n of sizes) {
        const servers = serverPorts.map((u) => new Redis(u));
        try {
          for (const row of await measureSize({ topology, n, makeClient, servers, PubSubRedisDict, PubSubCacheManager, WriteBackCacheManager, log })) rows.push(row);
        } finally {
          for (const x of servers) x.disconnect();
        }
        // Free this size's data before the next one (and give the heap back).
        globalThis.gc?.();
      }
    } finally {
      await stop();
    }
  }

  // Cost per key relative to the smallest size of the same operation and topology.
  for (const row of rows) {
    const base = rows.find((r) => r.topology === row.topology && r.operation === row.operation && r.n === sizes[0]);
    row.ratio = base ? row.usPerKey / base.usPerKey : NaN;
  }
  const largest = sizes[sizes.length - 1];
  const verdicts = rows.filter((r) => r.n === largest && sizes.length > 1).map((r) => ({ ...r, pass: r.ratio <= 1.5 }));
  for (const v of verdicts) log(`scale › ${v.topology} › ${v.operation}: ${fmt(v.ratio, 2)}× the cost per key at n = ${fmt(sizes[0])} (target ≤ 1.5×) ${v.pass ? 'PASS' : 'FAIL'}`);
  return writeScaleReports({ meta, rows, sizes }, outDir, log);
}

/** CPU seconds used so far by the Redis servers (INFO cpu: used_cpu_user + used_cpu_sys, summed). */
async function serverCpu(servers) {
  let total = 0;
  for (const server of servers) {
    const info = await server.info('cpu');
    total += Number(/used_cpu_user:([\d.]+)/.exec(info)?.[1] ?? 0) + Number(/used_cpu_sys:([\d.]+)/.exec(info)?.[1] ?? 0);
  }
  return total;
}

async function measureSize({ topology, n, makeClient, servers, PubSubRedisDict, PubSubCacheManager, WriteBackCacheManager, log }) {
  const out = [];
  const keys = Array.from({ length: n }, (_, i) => `k${i}`);
  const entries = keys.map((k, i) => [k, makeValue(i, 0)]);
  const namespace = `scale-${topology}-${n}-${Date.now().toString(36)}`;
  const clients = [];
  const client = () => {
    const c = makeClient();
    clients.push(c);
    return c;
  };
  // A full GC before each measurement, so that no operation pays for the garbage of the previous
  // one; the operations that change nothing (hot getMany, resync, keys()) run 3 times and keep the
  // median, as they are short enough for one scheduling hiccup of a shared machine to dominate.
  const time = async (operation, fn, repeat = 1) => {
    const samples = [];
    for (let r = 0; r < repeat; r++) {
      globalThis.gc?.();
      const serverBefore = await serverCpu(servers);
      const cpuBefore = process.cpuUsage();
      const start = now();
      await fn();
      const ms = since(start) / 1e6;
      const cpu = process.cpuUsage(cpuBefore);
      const clientCpuMs = (cpu.user + cpu.system) / 1000;
      const serverCpuMs = ((await serverCpu(servers)) - serverBefore) * 1000;
      samples.push({ ms, clientCpuMs, serverCpuMs, cpuMs: clientCpuMs + serverCpuMs });
    }
    const { ms, clientCpuMs, serverCpuMs, cpuMs } = samples.sort((x, y) => x.cpuMs - y.cpuMs)[samples.length >> 1];
    const row = { topology, operation, n, ms, clientCpuMs, serverCpuMs, cpuMs, usPerKey: (cpuMs * 1000) / n, wallUsPerKey: (ms * 1000) / n, samples };
    out.push(row);
    log(`scale › ${topology} › ${operation} › n = ${fmt(n)}: ${fmt(row.usPerKey, 2)} µs CPU/key (client ${fmt(clientCpuMs, 0)} ms + Redis ${fmt(serverCpuMs, 0)} ms; wall ${fmt(ms, 0)} ms)`);
  };
  const managers = [];
  const manager = async (Manager, options = {}) => {
    const m = new Manager(new PubSubRedisDict(client(), namespace), { cache: 'unbounded', ...options });
    m.on('error', (error) => log(`scale › error: ${error.message}`));
    managers.push(m);
    await m.ready();
    return m;
  };
  try {
    const a = await manager(PubSubCacheManager);
    await time('setMany', () => a.setMany(entries));
    await time('getMany hot', async () => {
      const got = await a.getMany(keys);
      if (got[n - 1]?.id !== entries[n - 1][1].id) throw new Error('getMany hot: wrong value');
    }, 3);
    const b = await manager(PubSubCacheManager);
    await time('getMany cold', async () => {
      const got = await b.getMany(keys);
      if (got[n - 1]?.id !== entries[n - 1][1].id) throw new Error('getMany cold: wrong value');
    });
    // Reads are cached only while the manager serves: a heartbeat missed on a loaded machine (a
    // long synchronous stretch of a 1M-key call) is a gap, after which nothing read before is cached.
    const cachedCold = b.stats().size;
    if (cachedCold !== n) log(`scale › ${topology} › n = ${fmt(n)}: ${fmt(cachedCold)} of ${fmt(n)} keys cached after the cold getMany (a gap meanwhile)`);
    out[out.length - 1].cached = cachedCold;
    // The resync a gap starts (internal method: the bench times it alone, without forging a gap).
    await time('resync', async () => {
      let info;
      b.once('resync', (i) => (info = i));
      await b.resync('sequence-gap');
      if (info === undefined) throw new Error('resync: no resync event');
    }, 3);
    await b.close();
    await time('keys()', async () => {
      let count = 0;
      for await (const _ of a.keys()) count++;
      if (count !== n) throw new Error(`keys() gave ${count} of ${n}`);
    }, 3);
    await time('deleteMany', async () => {
      const deleted = await a.deleteMany(keys);
      if (deleted !== n) throw new Error(`deleteMany deleted ${deleted} of ${n}`);
    });
    await a.close();
    const w = await manager(WriteBackCacheManager, { flushIntervalMs: 0, maxDirty: n + 1, maxPending: n + 1 });
    for (const [operation, version] of [['write-back new', 1], ['write-back existing', 2]]) {
      const values = keys.map((_, i) => makeValue(i, version));
      await time(operation, async () => {
        for (let i = 0; i < n; i++) await w.set(keys[i], values[i]);
        const report = await w.flush();
        if (report.written.length !== n) throw new Error(`${operation}: flushed ${report.written.length} of ${n}`);
      });
    }
    await time('clear()', async () => {
      await w.clear();
      if ((await w.size()) !== 0) throw new Error('clear() left keys');
    });
  } finally {
    for (const m of managers) await m.close().catch(() => {});
    for (const c of clients) await c.quit().catch(() => c.disconnect());
  }
  return out;
}

function writeScaleReports(results, outDir, log) {
  const dir = outDir ?? join(benchDir, 'results');
  mkdirSync(dir, { recursive: true });
  const { rows, sizes } = results;
  const largest = sizes[sizes.length - 1];
  const topologies = [...new Set(rows.map((r) => r.topology))];
  const lines = [];
  lines.push(`Cost per key of each batch operation: CPU time per key (this process + every Redis server of the topology, from \`process.cpuUsage()\` and \`INFO cpu\`; one call over n keys), with the wall time of the whole call in parentheses. ${results.meta.date.slice(0, 10)}, ${results.meta.cpus} CPU(s) (${results.meta.cpuModel ?? '?'}), load average at start ${results.meta.loadAverageAtStart.map((l) => l.toFixed(1)).join(' / ')}. "ratio" is the CPU cost per key at n = ${fmt(largest)} divided by the CPU cost per key at n = ${fmt(sizes[0])} (target ≤ 1.5).`);
  lines.push('');
  for (const topology of topologies) {
    lines.push(`**${topology}**`);
    lines.push('');
    const header = ['operation', ...sizes.map((s) => `n = ${fmt(s)}`), `ratio ${fmt(largest)} / ${fmt(sizes[0])}`];
    lines.push(`| ${header.join(' | ')} |`);
    lines.push(`| ${header.map((_, i) => (i === 0 ? '---' : '---:')).join(' | ')} |`);
    for (const [operation, description] of OPERATIONS) {
      const cells = sizes.map((s) => {
        const r = rows.find((x) => x.topology === topology && x.operation === operation && x.n === s);
        return r ? `${fmt(r.usPerKey, 2)} µs (wall ${fmt(r.ms, 0)} ms)` : '—';
      });
      const last = rows.find((x) => x.topology === topology && x.operation === operation && x.n === largest);
      lines.push(`| ${description} | ${cells.join(' | ')} | ${last && sizes.length > 1 ? `${fmt(last.ratio, 2)}×` : '—'} |`);
    }
    lines.push('');
  }
  lines.push('![cost per key by n](scale.svg)');
  const md = lines.join('\n');
  const files = [];
  writeFileSync(join(dir, 'scale.json'), JSON.stringify(results, null, 2));
  files.push(join(dir, 'scale.json'));
  writeFileSync(join(dir, 'scale.md'), `${md}\n`);
  files.push(join(dir, 'scale.md'));
  const palette = ['#93c5fd', '#2563eb', '#1e3a8a'];
  const svg = barChart({
    title: 'Cost per key of batch operations, by number of keys',
    subtitle: `CPU µs per key, client + Redis (log scale); bars: n = ${sizes.map((s) => fmt(s)).join(' / ')}; equal bars = linear cost`,
    unit: 'µs',
    log: true,
    rows: topologies.flatMap((topology) =>
      OPERATIONS.map(([operation]) => ({
        label: `${topology} — ${operation}`,
        values: sizes.map((s, i) => ({ value: rows.find((x) => x.topology === topology && x.operation === operation && x.n === s)?.usPerKey ?? NaN, name: `n = ${fmt(s)}`, color: palette[i % palette.length] })),
      })),
    ),
    legend: sizes.map((s, i) => ({ name: `n = ${fmt(s)}`, color: palette[i % palette.length] })),
  });
  writeFileSync(join(dir, 'scale.svg'), svg);
  files.push(join(dir, 'scale.svg'));
  if (!outDir) {
    const doc = join(rootDir, 'docs', 'benchmarks.md');
    if (existsSync(doc)) {
      const text = readFileSync(doc, 'utf8');
      const start = '<!-- scale:start -->';
      const end = '<!-- scale:end -->';
      const a = text.indexOf(start);
      const b = text.indexOf(end);
      if (a >= 0 && b > a) {
        writeFileSync(doc, `${text.slice(0, a + start.length)}\n\n${md.replace(/\]\(([\w-]+\.svg)\)/g, '](../bench/results/$1)')}\n\n${text.slice(b)}`);
        files.push(doc);
      }
    }
  }
  log(`scale › wrote ${files.map((f) => relative(rootDir, f)).join(', ')}`);
  return files;
}
