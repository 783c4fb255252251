/**
 * CPU profiles of the library's hot paths, one `.cpuprofile` per path in bench/profiles/ (open them
 * in Chrome DevTools › Performance, or https://www.speedscope.app for a flame graph). Run after
 * `npm run build`:
 *
 *   node bench/tools/profile.mjs            # every path: hit, write-through, flush, resync
 *   node bench/tools/profile.mjs hit        # one path
 *
 * Each path runs in its own child `node --cpu-prof` (sampling every 200 µs), against an embedded
 * redis-server, for about 2 s of work after a warm-up, so the profile holds that path and little
 * else (setup is in it too, but small). A summary of the top functions by self time is printed.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, renameSync, rmSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { startRedisServer } from '../lib/redis-server.mjs';
import { benchDir, importFromRoot, rootRequire } from '../lib/root.mjs';

const PATHS = ['hit', 'write-through', 'flush', 'resync'];
const self = fileURLToPath(import.meta.url);

if (process.env.PROFILE_CHILD) {
  await child(process.env.PROFILE_CHILD, process.env.PROFILE_URL);
  process.exit(0);
}

const wanted = process.argv.slice(2).length ? process.argv.slice(2) : PATHS;
const server = await startRedisServer();
try {
  for (const path of wanted) {
    const dir = mkdtempSync(join(tmpdir(), 'rpd-prof-'));
    const out = spawnSync(process.execPath, ['--cpu-prof', '--cpu-prof-interval', '200', '--cpu-prof-dir', dir, self], {
      env: { ...process.env, PROFILE_CHILD: path, PROFILE_URL: server.url },
      stdio: 'inherit',
    });
    if (out.status !== 0) throw new Error(`profile ${path}: child exited with ${out.status}`);
    const file = join(benchDir, 'profiles', `${path}.cpuprofile`);
    renameSync(join(dir, readdirSync(dir)[0]), file);
    rmSync(dir, { recursive: true, force: true });
    summarize(path, file);
  }
} finally {
  await server.stop();
}

function summarize(path, file) {
  const profile = JSON.parse(readFileSync(file, 'utf8'));
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const selfTime = new Map();
  profile.samples.forEach((id, i) => {
    const { functionName, url, lineNumber } = byId.get(id).callFrame;
    const name = `${functionName || '(anonymous)'} ${url.split('/').slice(-2).join('/')}:${lineNumber + 1}`;
    selfTime.set(name, (selfTime.get(name) ?? 0) + (profile.timeDeltas[i] ?? 0));
  });
  const total = [...selfTime.values()].reduce((a, b) => a + b, 0);
  console.log(`\n${path}: ${file}`);
  for (const [name, t] of [...selfTime].sort((a, b) => b[1] - a[1]).slice(0, 10)) console.log(`  ${((100 * t) / total).toFixed(1).padStart(5)} %  ${name}`);
}

async function child(path, url) {
  const { PubSubRedisDict, PubSubCacheManager, WriteBackCacheManager } = await importFromRoot('dist/index.js');
  const { Redis } = rootRequire('ioredis');
  const redis = new Redis(url);
  const ns = `prof-${path}-${process.pid}`;
  const keys = Array.from({ length: 10_000 }, (_, i) => `k${i}`);
  const value = (i) => ({ id: i, name: `user-${i}`, score: i % 100, tags: ['red', 'blue'] });
  const m = path === 'flush' ? new WriteBackCacheManager(new PubSubRedisDict(redis, ns), { flushIntervalMs: 0, maxDirty: 100_000, maxPending: 100_000 }) : new PubSubCacheManager(new PubSubRedisDict(redis, ns), { cache: 'unbounded' });
  await m.ready();
  await m.setMany(keys.map((k, i) => [k, value(i)]));
  if (path === 'write-through') await m.getMany(keys);
  const until = performance.now() + 2000;
  let i = 0;
  if (path === 'hit') {
    while (performance.now() < until) for (let j = 0; j < 10_000; j++) await m.get(keys[j]);
  } else if (path === 'write-through') {
    while (performance.now() < until) await m.set(keys[i++ % keys.length], value(i));
  } else if (path === 'flush') {
    while (performance.now() < until) {
      for (let j = 0; j < keys.length; j++) await m.set(keys[j], value(i++));
      await m.flush();
    }
  } else if (path === 'resync') {
    while (performance.now() < until) await m.resync('sequence-gap');
  }
  await m.close();
  redis.disconnect();
}
