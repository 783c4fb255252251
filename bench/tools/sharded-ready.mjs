/**
 * How long a sharded-pub/sub cache manager takes to be ready (16,384 slots, one channel each), alone
 * and eight at once in one process, on a spawned 3+3 cluster. Run after `npm run build`:
 *
 *   node bench/tools/sharded-ready.mjs [rounds]
 */
import { performance } from 'node:perf_hooks';
import { startRedisCluster } from '../lib/redis-cluster.mjs';
import { importFromRoot, rootRequire } from '../lib/root.mjs';

const { PubSubRedisDict, PubSubCacheManager } = await importFromRoot('dist/index.js');
const { Cluster } = rootRequire('ioredis');
const rounds = Number(process.argv[2] ?? 3);
const cluster = await startRedisCluster();
console.log(`cluster up: ${cluster.nodes.map((n) => n.port).join(", ")}`);
const clients = [];
const client = () => {
  const c = new Cluster(cluster.nodes);
  clients.push(c);
  return c;
};
const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
try {
  // Connect the data clients first: only the subscription is timed.
  const one = [];
  const eight = [];
  for (let r = 0; r < rounds; r++) {
    const c = client();
    await c.ping();
    const m = new PubSubCacheManager(new PubSubRedisDict(c, `ready-${r}`, { shardedPubSub: true }));
    const start = performance.now();
    await m.ready();
    one.push(performance.now() - start);
    await m.close();
    const cs = Array.from({ length: 8 }, client);
    await Promise.all(cs.map((x) => x.ping()));
    const start8 = performance.now();
    const ms = cs.map((x, i) => new PubSubCacheManager(new PubSubRedisDict(x, `ready8-${r}-${i}`, { shardedPubSub: true })));
    await Promise.all(ms.map((m8) => m8.ready()));
    eight.push(performance.now() - start8);
    await Promise.all(ms.map((m8) => m8.close()));
  }
  console.log(`one manager ready(): ${one.map((x) => x.toFixed(0)).join(', ')} ms (median ${median(one).toFixed(0)})`);
  console.log(`eight managers ready(): ${eight.map((x) => x.toFixed(0)).join(', ')} ms (median ${median(eight).toFixed(0)})`);
} finally {
  for (const c of clients) c.disconnect();
  await cluster.stop();
}
process.exit(0);
