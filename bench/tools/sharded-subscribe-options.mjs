/**
 * The ways of sending a sharded subscription's 16,384 SSUBSCRIBE calls, measured on one spawned
 * 3+3 cluster: ioredis's `shardedSubscribers` (what the library used before #13 item 1), and one
 * connection per master (what it does now), one call at a time or in pipelines of 1,024, with the
 * two channels of each slot or one. One manager's subscription, then eight at once; and the client
 * CPU per manager (steadier than wall time on a loaded host). Run after `npm run build`:
 *
 *   node bench/tools/sharded-subscribe-options.mjs [rounds] [cases, e.g. 01234]
 */
import { performance } from 'node:perf_hooks';
import { setImmediate } from 'node:timers';
import { startRedisCluster } from '../lib/redis-cluster.mjs';
import { importFromRoot, rootRequire } from '../lib/root.mjs';

const { channelNames } = await importFromRoot('dist/pubsub-redis-dict.js');
const { Cluster, Redis } = rootRequire('ioredis');
const rounds = Number(process.argv[2] ?? 3);
const selected = process.argv[3] ?? '01234';
const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const cluster = await startRedisCluster();
try {
  const data = new Cluster(cluster.nodes);
  await data.ping();
  const names = (ns) => Array.from({ length: 16384 }, (_, s) => channelNames({ namespace: ns }, s));
  async function viaCluster(ns) {
    const conn = data.duplicate(undefined, { shardedSubscribers: true });
    conn.on('error', () => {});
    await new Promise((resolve) => conn.once('ready', resolve));
    const ch = names(ns);
    await Promise.all(ch.map((c) => conn.ssubscribe(c.update, c.delete)));
    return () => conn.disconnect();
  }
  async function perMaster(ns, oneChannel, pipelineSlots) {
    const ch = names(ns);
    const byNode = new Map();
    data.slots.forEach((owners, slot) => {
      const list = byNode.get(owners[0]) ?? [];
      list.push(slot);
      byNode.set(owners[0], list);
    });
    const conns = [];
    const subscribe = (target, slot) => (oneChannel ? target.ssubscribe(ch[slot].update) : target.ssubscribe(ch[slot].update, ch[slot].delete));
    await Promise.all(
      [...byNode].map(async ([node, slots]) => {
        const colon = node.lastIndexOf(':');
        const c = new Redis({ host: node.slice(0, colon), port: Number(node.slice(colon + 1)), autoResubscribe: false });
        c.on('error', () => {});
        conns.push(c);
        await new Promise((resolve) => c.once('ready', resolve));
        if (pipelineSlots === 0) return Promise.all(slots.map((slot) => subscribe(c, slot)));
        const sent = [];
        for (let i = 0; i < slots.length; i += pipelineSlots) {
          const p = c.pipeline();
          for (const slot of slots.slice(i, i + pipelineSlots)) subscribe(p, slot);
          sent.push(p.exec());
          await new Promise((resolve) => setImmediate(resolve));
        }
        return Promise.all(sent);
      }),
    );
    return () => conns.forEach((c) => c.disconnect());
  }
  const cases = [
    ['ioredis shardedSubscribers, 2 channels per slot', viaCluster],
    ['own connection per master, one call at a time, 2 channels per slot', (ns) => perMaster(ns, false, 0)],
    ['own connection per master, one call at a time, 1 channel per slot', (ns) => perMaster(ns, true, 0)],
    ['own connection per master, pipelines of 1,024, 2 channels per slot', (ns) => perMaster(ns, false, 1024)],
    ['own connection per master, pipelines of 1,024, 1 channel per slot', (ns) => perMaster(ns, true, 1024)],
  ];
  for (const [index, [label, run]] of cases.entries()) {
    if (!selected.includes(String(index))) continue;
    const one = [];
    const eight = [];
    const cpu = process.cpuUsage();
    for (let r = 0; r < rounds; r++) {
      let start = performance.now();
      const close = await run(`o${index}-${r}`);
      one.push(performance.now() - start);
      close();
      start = performance.now();
      const closes = await Promise.all(Array.from({ length: 8 }, (_, i) => run(`e${index}-${r}-${i}`)));
      eight.push(performance.now() - start);
      closes.forEach((c) => c());
    }
    const used = process.cpuUsage(cpu);
    console.log(
      `${label}: one ${one.map((x) => x.toFixed(0)).join('/')} ms (median ${median(one).toFixed(0)}), ` +
        `eight ${eight.map((x) => x.toFixed(0)).join('/')} ms (median ${median(eight).toFixed(0)}); ` +
        `client CPU ${((used.user + used.system) / 1000 / (9 * rounds)).toFixed(0)} ms per manager`,
    );
  }
  data.disconnect();
} finally {
  await cluster.stop();
}
process.exit(0);
