/**
 * Update-mode write-to-visible, signed vs unsigned, isolated from the rest of the bench: instance A
 * sets a key that instance B holds cached; B polls its get() until it serves the new version (the
 * same sample as bench/main.mjs's invalidation section). Signed and unsigned pairs alternate
 * sample by sample, so both see the same load. Run after `npm run build`:
 *
 *   node bench/tools/signing-wtv.mjs [samples] [only]   # only: 'signed' or 'unsigned' (for --cpu-prof)
 *
 * SIGNING_WTV_BASE=<absolute dir>: also runs both cases on another build of the library, taking
 * turns with this build's, so that a change is compared with its base in one run: a copy of dist/
 * built from the base commit, in a directory that also holds a `node_modules` symlink to this
 * repository's (for ioredis). Several builds: comma-separated, each `label=dir` or `dir` (labelled
 * `base`, `base2`…). SIGNING_WTV_TIME=1: also times each FrameSigner.tags and .verify call of every
 * build where it runs.
 *
 * Prints p50 / p90 of write-to-visible and of the writer's set() per case, and the ratio
 * unsigned ÷ signed of the write-to-visible p50 (the bench's goal: at least 0.87).
 */
import { startRedisServer } from '../lib/redis-server.mjs';
import { importFromRoot, rootIORedis } from '../lib/root.mjs';
import { keyName, makeValue } from '../lib/data.mjs';
import { now, since, tick, percentile } from '../lib/timing.mjs';

const samples = Number(process.argv[2] ?? 3000);
const only = process.argv[3];
const builds = [{ label: '', lib: await importFromRoot('dist/index.js'), signing: () => importFromRoot('dist/protocol/signing.js') }];
for (const [i, spec] of (process.env.SIGNING_WTV_BASE ?? '').split(',').filter(Boolean).entries()) {
  const [label, dir] = spec.includes('=') ? spec.split('=') : [`base${i ? i + 1 : ''}`, spec];
  const root = dir.replace(/\/$/, '');
  builds.push({ label: ` (${label})`, lib: await import(`${root}/index.js`), signing: () => import(`${root}/protocol/signing.js`) });
}
const Redis = rootIORedis();
// SIGNING_WTV_TIME=1: time FrameSigner.tags and .verify where they run (hrtime around each call).
const timed = {};
if (process.env.SIGNING_WTV_TIME) {
  for (const build of builds) {
    const { FrameSigner } = await build.signing();
    for (const name of ['tags', 'verify']) {
      const times = (timed[`${name}${build.label}`] = []);
      const original = FrameSigner.prototype[name];
      FrameSigner.prototype[name] = function (...args) {
        const t = now();
        try {
          return original.apply(this, args);
        } finally {
          times.push(since(t));
        }
      };
    }
  }
}
const SIGNING_KEY = 'bench-signing-key-0123456789abcdef';
const server = process.env.REDIS_URL ? undefined : await startRedisServer();
const url = process.env.REDIS_URL ?? server.url;

async function instance({ PubSubRedisDict, PubSubCacheManager }, namespace, signed) {
  const redis = new Redis(url, { lazyConnect: true });
  await redis.connect();
  const store = new PubSubRedisDict(redis, namespace, signed ? { signingKeys: [SIGNING_KEY] } : {});
  const cache = new PubSubCacheManager(store, { cache: 1000, sync: 'update' });
  await cache.ready();
  const close = async () => {
    await cache.close();
    await redis.quit();
  };
  return { cache, close };
}

async function pair(lib, name, signed) {
  const namespace = `wtv-${name.replace(/[^A-Za-z0-9]+/g, '-')}`;
  const a = await instance(lib, namespace, signed);
  const b = await instance(lib, namespace, signed);
  const total = [];
  const writer = [];
  return {
    name,
    a,
    b,
    total,
    writer,
    async sample(n) {
      const index = n % 20;
      const key = keyName(index);
      const version = 1000 + n;
      await b.cache.get(key);
      await b.cache.get(key);
      const fresh = makeValue(index, version);
      const start = now();
      let writerNs = 0;
      const write = a.cache.set(key, fresh).then(() => (writerNs = since(start)));
      for (;;) {
        const seen = await b.cache.get(key);
        if (seen?.version === version) break;
        await tick();
      }
      const latency = since(start);
      await write;
      if (n >= 50) {
        total.push(latency);
        writer.push(writerNs);
      }
    },
  };
}

const cases = [];
for (const { label, lib } of builds) {
  if (only !== 'signed') cases.push(await pair(lib, `unsigned${label}`, false));
  if (only !== 'unsigned') cases.push(await pair(lib, `signed${label}`, true));
}
try {
  for (let n = 0; n < samples + 50; n++) {
    const turn = n % cases.length;
    for (const c of [...cases.slice(turn), ...cases.slice(0, turn)]) await c.sample(n);
  }
} finally {
  for (const c of cases) {
    await c.a.close();
    await c.b.close();
  }
  await server?.stop();
}
const us = (ns) => (ns / 1000).toFixed(1);
const p = (values, q) => percentile([...values].sort((x, y) => x - y), q);
const row = {};
for (const c of cases) {
  row[c.name] = p(c.total, 50);
  console.log(`${c.name.padEnd(16)} write-to-visible p50 ${us(p(c.total, 50))} µs  p90 ${us(p(c.total, 90))} µs; set() p50 ${us(p(c.writer, 50))} µs  p90 ${us(p(c.writer, 90))} µs  (${c.total.length} samples)`);
}
for (const [name, times] of Object.entries(timed)) {
  if (times.length) console.log(`FrameSigner.${name}: ${times.length} calls, p50 ${us(p(times, 50))} µs, p90 ${us(p(times, 90))} µs`);
}
for (const { label } of builds) {
  const [u, g] = [row[`unsigned${label}`], row[`signed${label}`]];
  if (u && g) console.log(`ratio unsigned ÷ signed (p50)${label}: ${(u / g).toFixed(3)}`);
}
