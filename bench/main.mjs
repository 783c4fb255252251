/**
 * The benchmark itself. Run through `npm run bench` (bench/run.mjs installs bench/ dependencies,
 * builds the library, then starts this file with `node --expose-gc`).
 *
 *   node --expose-gc bench/main.mjs [--redis-url redis://host:port] [--quick] [--only a,b]
 *
 * Sections (--only): single, mixed, memory, miss, invalidation, writeback, fanout.
 * `--scale` runs only the batch-scaling case instead (bench/scale.mjs).
 * Writes bench/results/latest.json, latest.md and *.svg.
 */
import { parseArgs } from 'node:util';
import os from 'node:os';
import { isDeepStrictEqual } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';

import { makeDataset, makeValue } from './lib/data.mjs';
import { startRedisServer, redisServerVersion } from './lib/redis-server.mjs';
import { median, now, pool, runConcurrent, runSequential, since, summarize, tick } from './lib/timing.mjs';
import { bernoulliSequence, topShare, zipfSequence } from './lib/zipf.mjs';
import { writeReports } from './lib/report.mjs';

import * as rawAdapter from './adapters/ioredis.mjs';
import * as lruAdapter from './adapters/lru-cache.mjs';
import * as nodeRedisAdapter from './adapters/node-redis.mjs';
import * as bentoAdapter from './adapters/bentocache.mjs';
import * as libAdapter from './adapters/redis-pubsub-dict.mjs';

// ------------------------------------------------------------------------------------ config

const { values: argv } = parseArgs({
  options: {
    'redis-url': { type: 'string' },
    quick: { type: 'boolean', default: false },
    only: { type: 'string' },
    'out-dir': { type: 'string' },
    scale: { type: 'boolean', default: false },
    'scale-sizes': { type: 'string' },
    'scale-topologies': { type: 'string' },
  },
  allowPositionals: false,
});

const quick = argv.quick;
const config = {
  keyCount: 100_000,
  cacheEntries: 100_000,
  valueBytes: 'about 100 B as MessagePack (128 B as JSON)',
  zipfExponent: 0.99,
  sequenceLength: 1 << 20,
  readHeavyWriteShare: 0.05,
  writeHeavyWriteShare: 0.8,
  inFlight: 100,
  warmupMs: quick ? 150 : 300,
  durationMs: quick ? 600 : 1500,
  mixedDurationMs: quick ? 800 : 2000,
  invalidationSamples: quick ? 100 : 300,
  invalidationMaxMs: quick ? 2000 : 5000,
  writeBackN: 10_000,
  // Write-back repetitions (the raw MSET rows take 7); write-through stops repeating after ~8 s.
  writeBackReps: quick ? 4 : 9,
  quick,
};
/** A fixed 32-byte key for the signed cases (signingKeys). */
const SIGNING_KEY = 'bench-signing-key-0123456789abcdef';

const sections = new Set((argv.only ?? 'single,memory,mixed,miss,invalidation,writeback,fanout').split(',').map((s) => s.trim()));
const has = (s) => sections.has(s);

// ------------------------------------------------------------------------------------ state

const t0 = now();
const results = { rows: [], invalidation: [], writeBack: [], fanOut: [], memory: [], targets: [], failures: [] };
const elapsed = () => `${(since(t0) / 1e9).toFixed(1).padStart(5)}s`;
const log = (line) => console.log(`[${elapsed()}] ${line}`);
const fmt = (n, digits = 0) => (Number.isFinite(n) ? n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits }) : '—');
const fmtNs = (ns) => (ns >= 1e6 ? `${fmt(ns / 1e6, 2)} ms` : ns >= 1e3 ? `${fmt(ns / 1e3, 1)} µs` : `${fmt(ns)} ns`);

function errorStatus(error) {
  if (error?.skipped) return { status: 'skipped', message: error.message };
  return { status: 'failed', message: `failed: ${error?.message ?? error}` };
}

/** Records one throughput row and prints its progress line. */
function record(section, adapter, name, outcome) {
  const row = { section, adapter, case: name, ...outcome };
  results.rows.push(row);
  if (row.status === 'ok') {
    const lat = row.p50Us !== undefined ? `  p50 ${fmt(row.p50Us, 1)} µs  p99 ${fmt(row.p99Us, 1)} µs` : `  ${fmtNs(row.nsPerOp)}/op`;
    log(`${section} › ${adapter} › ${name}: ${fmt(row.opsPerSec)} ops/s${lat}${row.note ? `  (${row.note})` : ''}`);
  } else {
    log(`${section} › ${adapter} › ${name}: ${row.message}`);
    if (section === 'memory') results.memory.push({ adapter, status: row.status, message: row.message });
    if (row.status === 'failed') results.failures.push(`${section} › ${adapter} › ${name}: ${row.message}`);
  }
  return row;
}

/**
 * Creates an adapter instance, runs `cases` (each `[section, name, async (inst) => outcome]`) on it,
 * closes it. If the instance cannot be created, every case is recorded as skipped/failed.
 */
async function group(adapter, create, cases) {
  let inst;
  try {
    inst = await create();
  } catch (error) {
    for (const [section, name] of cases) record(section, adapter, name, errorStatus(error));
    return;
  }
  try {
    for (const [section, name, run] of cases) {
      try {
        const outcome = await run(inst);
        if (outcome) record(section, adapter, name, { status: 'ok', ...outcome });
      } catch (error) {
        record(section, adapter, name, errorStatus(error));
      }
    }
  } finally {
    await inst.close().catch((error) => log(`${adapter}: close failed: ${error.message}`));
  }
}

// ------------------------------------------------------------------------------------ data

const dataset = makeDataset(config.keyCount);
const { keys, values } = dataset;
const zipf = zipfSequence(config.keyCount, config.sequenceLength, { s: config.zipfExponent });
const mask = config.sequenceLength - 1;
const readHeavyWrites = bernoulliSequence(config.readHeavyWriteShare, config.sequenceLength, 11);
const writeHeavyWrites = bernoulliSequence(config.writeHeavyWriteShare, config.sequenceLength, 13);
/** Values written by the set/mixed cases (version 1, so distinguishable from the seeded ones). */
const writePool = Array.from({ length: 1024 }, (_, i) => makeValue(i, 1));
const drawn = new Set(zipf);
const zipfTop = { top100: topShare(zipf, 100), top1000: topShare(zipf, 1000), distinct: drawn.size };
/** Keys the Zipf sequence never draws: no case writes them, so they keep their seeded values. */
const neverWritten = keys.map((_, i) => i).filter((i) => !drawn.has(i));
const checkIndexes = [neverWritten[0], neverWritten[neverWritten.length >> 1], neverWritten[neverWritten.length - 1]];

const hitOp = (inst) => (i) => inst.get(keys[zipf[i & mask]]);
/**
 * The most drawn key of the Zipf sequence: a hit on one hot key measures the cache's own code with its data in the
 * CPU cache (how the issue's reference figures were taken); the Zipf hit over 100,000 keys also
 * pays main-memory latency, the same for every cache (see the floor).
 */
const hotKey = keys[mostDrawn(zipf)];
const hotHitOp = (inst) => () => inst.get(hotKey);
const setOp = (inst) => (i) => inst.set(keys[zipf[i & mask]], writePool[i & 1023]);
const mixedOp = (inst, writes) => (i) => {
  const key = keys[zipf[i & mask]];
  return writes[i & mask] === 1 ? inst.set(key, writePool[i & 1023]) : inst.get(key);
};

/** The index drawn most often in `sequence`. */
function mostDrawn(sequence) {
  const counts = new Map();
  let best = sequence[0];
  for (const index of sequence) {
    const n = (counts.get(index) ?? 0) + 1;
    counts.set(index, n);
    if (n > counts.get(best)) best = index;
  }
  return best;
}

/** Reads a few keys and checks they hold the seeded values (catches a wrong data layout). */
async function checkSeeded(inst, label) {
  for (const i of checkIndexes) {
    const got = await inst.get(keys[i]);
    if (!isDeepStrictEqual(got, values[i])) throw new Error(`${label}: key ${keys[i]} read back ${JSON.stringify(got)}`);
  }
}

async function prefill(inst) {
  if (inst.prefill) return inst.prefill(dataset);
  await pool(keys.length, config.inFlight, (i) => inst.get(keys[i]));
}

// ------------------------------------------------------------------------------------ memory

const canGc = typeof globalThis.gc === 'function';
async function heapSnapshot() {
  for (let i = 0; i < 4; i++) {
    globalThis.gc();
    await tick();
  }
  return process.memoryUsage();
}

/**
 * Between two timed turns of different subjects: a round trip to Redis (it has done everything sent
 * before), a short pause for what is still in flight to the process (a flush's own message on its
 * subscriber), so that a turn does not pay for the last. (No forced GC: a full collection before
 * each turn slowed the library's flushes by a third and not the raw MSETs, a cost of its own.)
 */
async function quiesce(client) {
  await client.ping();
  await sleep(20);
}

/** Fills `inst` with every key and records (heap delta / entries). */
async function measureMemory(adapter, inst) {
  if (!canGc) {
    await prefill(inst);
    results.memory.push({ adapter, status: 'skipped', message: 'skipped: run with node --expose-gc' });
    return;
  }
  const before = await heapSnapshot();
  const start = now();
  await prefill(inst);
  const fillNs = since(start);
  const after = await heapSnapshot();
  const entries = keys.length;
  const row = {
    adapter,
    status: 'ok',
    entries,
    heapBytesPerEntry: (after.heapUsed - before.heapUsed) / entries,
    externalBytesPerEntry: (after.external - before.external) / entries,
    fillMs: fillNs / 1e6,
  };
  results.memory.push(row);
  log(`memory › ${adapter}: ${fmt(row.heapBytesPerEntry)} B/entry heap (${fmt(row.externalBytesPerEntry)} B/entry external), filled ${fmt(entries)} entries in ${fmt(row.fillMs)} ms`);
}

// ------------------------------------------------------------------------------------ main

let server;
let url = argv['redis-url'];
const prefix = `rpdbench-${process.pid}-${Date.now().toString(36)}`;
const env = { url, prefix, cacheEntries: config.cacheEntries, log };
const libNamespace = `${prefix}-lib`;

async function main() {
  if (!url) {
    server = await startRedisServer();
    url = env.url = server.url;
    log(`embedded redis-server ${redisServerVersion()} on ${url} (pid ${server.pid})`);
  } else {
    log(`using --redis-url ${url.replace(/\/\/[^@]*@/, '//***@')} (keys under the prefix ${prefix}*, deleted at the end)`);
  }

  const probe = await rawAdapter.connect(url);
  const info = await probe.info('server');
  const redisVersion = /redis_version:([^\r\n]+)/.exec(info)?.[1];
  await probe.quit();

  const lib = await libAdapter.load();
  if (lib.error) log(`library: ${lib.error} — its rows will be skipped`);
  else {
    const missing = ['RedisDict', 'PubSubRedisDict', 'PubSubCacheManager', 'WriteBackCacheManager'].filter((n) => typeof lib.mod[n] !== 'function');
    log(`library: dist/index.js loaded${missing.length ? `; not implemented yet: ${missing.join(', ')}` : ''}`);
  }

  const load = os.loadavg()[0];
  if (load > os.cpus().length * 0.5) {
    log(`warning: the 1-minute load average is ${load.toFixed(2)} on ${os.cpus().length} CPU(s) — other processes compete for the CPU and the numbers will be noisy`);
  }
  results.meta = {
    date: new Date().toISOString(),
    loadAverageAtStart: os.loadavg(),
    node: process.version,
    platform: `${os.type()} ${os.release()} ${os.arch()}`,
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model,
    redis: { version: redisVersion, embedded: !argv['redis-url'] },
    packages: {
      'redis-pubsub-dict': libAdapter.version(),
      'ioredis (library + raw baseline)': rawAdapter.version(),
      'ioredis (bentocache)': bentoAdapter.ioredisVersion(),
      bentocache: bentoAdapter.version(),
      'redis (node-redis)': nodeRedisAdapter.version(),
      'lru-cache': lruAdapter.version(),
    },
    config,
    zipf: zipfTop,
    gc: canGc,
  };

  // Seed the data set once per layout.
  let start = now();
  await rawAdapter.populate(url, `${prefix}:raw:`, dataset);
  await bentoAdapter.populate(env, dataset);
  let libSeeded = false;
  try {
    await libAdapter.populate(env, libNamespace, dataset);
    libSeeded = true;
  } catch (error) {
    if (!error.skipped) results.failures.push(`seeding the library namespace: ${error.message}`);
    log(`library seeding: ${error.message}`);
  }
  log(`seeded ${fmt(keys.length)} keys × 3 layouts (raw JSON, bentocache, library) in ${fmtNs(since(start))}`);

  const libCreate = (options) => async () => {
    if (!libSeeded) throw new libAdapter.NotImplemented('library data could not be seeded');
    return libAdapter.create(env, { namespace: libNamespace, ...options });
  };

  // ---------------------------------------------------------------- single ops, memory, mixed
  const wantCached = has('single') || has('memory') || has('mixed');
  const seq = (opts = {}) => ({ warmupMs: config.warmupMs, durationMs: config.durationMs, ...opts });
  const mixed = (opts = {}) => ({ warmupMs: config.warmupMs, durationMs: config.mixedDurationMs, latency: true, ...opts });

  if (wantCached) {
    // Raw ioredis: the baseline (sequential GET) and the 100-in-flight pipelined variant.
    await group(rawAdapter.name, () => rawAdapter.create(env), [
      ['single', 'GET, one at a time (baseline)', async (inst) => (has('single') || has('mixed') ? runSequential((i) => inst.getRaw(keys[zipf[i & mask]]), seq({ latency: true })) : null)],
      ['single', 'SET, one at a time', async (inst) => (has('single') ? runSequential(setOp(inst), seq({ latency: true })) : null)],
      ['mixed', 'read-heavy, one at a time', async (inst) => (has('mixed') ? runSequential(mixedOp(inst, readHeavyWrites), mixed()) : null)],
      ['mixed', 'write-heavy, one at a time', async (inst) => (has('mixed') ? runSequential(mixedOp(inst, writeHeavyWrites), mixed()) : null)],
    ]);
    await group(rawAdapter.name, () => rawAdapter.create(env, { autoPipelining: true }), [
      ['single', `GET, ${config.inFlight} in flight (auto-pipelining)`, async (inst) => (has('single') ? runConcurrent((i) => inst.getRaw(keys[zipf[i & mask]]), seq({ inFlight: config.inFlight })) : null)],
      ['mixed', `read-heavy, ${config.inFlight} in flight (auto-pipelining)`, async (inst) => (has('mixed') ? runConcurrent(mixedOp(inst, readHeavyWrites), mixed({ inFlight: config.inFlight })) : null)],
      ['mixed', `write-heavy, ${config.inFlight} in flight (auto-pipelining)`, async (inst) => (has('mixed') ? runConcurrent(mixedOp(inst, writeHeavyWrites), mixed({ inFlight: config.inFlight })) : null)],
    ]);

    // Caches: fill (memory per entry), hit, set, then the mixed workloads on the warm cache.
    const cached = [
      [lruAdapter.name, () => lruAdapter.create(env), { noRedis: true }],
      [nodeRedisAdapter.name, () => nodeRedisAdapter.create(env), {}],
      [bentoAdapter.name, () => bentoAdapter.create(env), {}],
      [`${bentoAdapter.name} (L1 serialize: false)`, () => bentoAdapter.create(env, { serialize: false }), {}],
      [`${libAdapter.name} (PubSubCacheManager)`, libCreate({ sync: 'invalidate' }), {}],
    ];
    for (const [adapter, create, flags] of cached) {
      const cases = [
        ['memory', 'fill', async (inst) => {
          if (has('memory')) await measureMemory(adapter, inst);
          else await prefill(inst);
          if (!flags.noRedis) await checkSeeded(inst, adapter);
          return null;
        }],
      ];
      if (has('single')) {
        cases.push(['single', flags.noRedis ? 'get (the floor)' : 'get (hit)', async (inst) => runSequential(hitOp(inst), seq())]);
        cases.push(['single', flags.noRedis ? 'get one hot key (the floor)' : 'get one hot key (hit)', async (inst) => runSequential(hotHitOp(inst), seq())]);
        if (adapter.includes('PubSub')) {
          // Cache-aside: a getOrSet hit (the entry is cached) against the get hit above; goal ≤ 1.2× its cost.
          const loader = () => 'loaded';
          const options = { ttlMs: 3_600_000 };
          cases.push(['single', 'getOrSet (hit)', async (inst) => runSequential((i) => inst.getOrSet(keys[zipf[i & mask]], loader, options), seq())]);
          cases.push(['single', 'getOrSet one hot key (hit)', async (inst) => runSequential(() => inst.getOrSet(hotKey, loader, options), seq())]);
        }
        if (!flags.noRedis) cases.push(['single', adapter.includes('PubSub') ? 'set (write-through)' : 'set', async (inst) => runSequential(setOp(inst), seq({ latency: true }))]);
      }
      if (has('mixed') && !flags.noRedis) {
        cases.push(['mixed', 'read-heavy, one at a time', async (inst) => runSequential(mixedOp(inst, readHeavyWrites), mixed())]);
        cases.push(['mixed', 'write-heavy, one at a time', async (inst) => runSequential(mixedOp(inst, writeHeavyWrites), mixed())]);
      }
      await group(adapter, create, cases);
      await tick();
    }
    if (has('mixed')) {
      // Write-back: sets stay local until a flush (every 1 s, or at 10,000 dirty keys, both the
      // defaults); the final flush is included in the measured time.
      const adapter = `${libAdapter.name} (WriteBackCacheManager)`;
      await group(adapter, libCreate({ writeBack: true }), [
        ['mixed', 'fill', async (inst) => {
          await prefill(inst);
          await checkSeeded(inst, adapter);
          return null;
        }],
        ['mixed', 'read-heavy, one at a time', async (inst) => flushed(await runSequential(mixedOp(inst, readHeavyWrites), mixed({ after: () => inst.flush() })))],
        ['mixed', 'write-heavy, one at a time', async (inst) => flushed(await runSequential(mixedOp(inst, writeHeavyWrites), mixed({ after: () => inst.flush() })))],
      ]);
    }
  }

  // ---------------------------------------------------------------- misses
  if (has('miss')) {
    // A fresh instance reads keys it has never seen, one at a time: each read is a cache miss
    // that goes to Redis (and fills the cache).
    const missOp = (inst) => (i) => inst.get(keys[i % keys.length]);
    const missRun = async (inst) => runSequential(missOp(inst), seq({ latency: true, maxOps: keys.length / 2 }));
    await group(nodeRedisAdapter.name, () => nodeRedisAdapter.create(env), [['miss', 'get (miss)', missRun]]);
    await group(bentoAdapter.name, () => bentoAdapter.create(env), [['miss', 'get (miss)', missRun]]);
    await group(`${libAdapter.name} (PubSubCacheManager)`, libCreate({ sync: 'invalidate' }), [['miss', 'get (miss)', missRun]]);
  }

  // ---------------------------------------------------------------- invalidation latency
  if (has('invalidation')) await invalidationSection(libCreate);

  // ---------------------------------------------------------------- write-back vs write-through
  if (has('writeback')) await writeBackSection();
  if (has('fanout')) await runFanOut();

  // ---------------------------------------------------------------- ratios and targets
  const baseline = results.rows.find((r) => r.section === 'single' && r.adapter === rawAdapter.name && r.case.startsWith('GET, one at a time') && r.status === 'ok');
  for (const row of results.rows) {
    if (row.status !== 'ok' || !baseline) continue;
    row.ratio = row.opsPerSec / baseline.opsPerSec;
  }
  for (const workload of ['read-heavy', 'write-heavy']) {
    const raw = results.rows.find((r) => r.section === 'mixed' && r.adapter === rawAdapter.name && r.case === `${workload}, one at a time` && r.status === 'ok');
    for (const row of results.rows) {
      if (raw && row.section === 'mixed' && row.status === 'ok' && row.case.startsWith(workload)) row.ratioSameWorkload = row.opsPerSec / raw.opsPerSec;
    }
  }
  results.meta.baselineOpsPerSec = baseline?.opsPerSec;
  issueGoals();
  results.meta.loadAverageAtEnd = os.loadavg();
  results.meta.durationS = since(t0) / 1e9;
}

/**
 * The goals of issue #6 as ratios of this run's rows (the write-back goals of issue #4 are added
 * by the write-back section). A goal "within 2x of X" is a ratio of at least 0.5 against X.
 */
function issueGoals() {
  const single = (adapter, name) =>
    results.rows.find((r) => r.section === 'single' && r.status === 'ok' && r.adapter.startsWith(adapter) && r.case.startsWith(name))?.opsPerSec;
  const lib = `${libAdapter.name} (PubSubCacheManager)`;
  const libSet = single(lib, 'set (write-through)');
  const p50 = (adapter) => results.invalidation.find((r) => r.adapter === adapter && r.status === 'ok')?.p50Us;
  const goal = (name, value, target, issue = 6) => {
    const t = { name, value, target, pass: Number.isFinite(value) ? value >= target : null, issue };
    results.targets.push(t);
    log(`goal › ${name}: ${Number.isFinite(value) ? `${fmt(value, 2)}×` : 'not measured'} (target ≥ ${fmt(target, 2)}×) ${t.pass === null ? '' : t.pass ? 'met' : 'missed'}`);
  };
  // The hit goals, on one hot key (as the issue's reference figures were measured) and on the
  // Zipf draw over every key (where main-memory latency bounds the floor itself).
  for (const [label, hitCase, floorCase] of [
    ['one hot key', 'get one hot key (hit)', 'get one hot key (the floor)'],
    ['Zipf, 100k keys', 'get (hit)', 'get (the floor)'],
  ]) {
    const hit = single(lib, hitCase);
    goal(`cache hit vs sequential ioredis GET (${label})`, hit / single(rawAdapter.name, 'GET, one at a time'), 300);
    goal(`cache hit vs awaited lru-cache get, within 2× (${label})`, hit / single('lru-cache', floorCase), 0.5);
    goal(`cache hit vs node-redis CSC hit (${label})`, hit / single('node-redis', hitCase), 10);
    goal(`cache hit vs bentocache hit (${label})`, hit / single('bentocache', hitCase), 40);
  }
  // Issue #15: a getOrSet hit costs at most 1.2× a get hit (its rate at least 1/1.2 of the get hit's).
  goal('getOrSet hit vs get hit, rate (cost ≤ 1.2×), one hot key', single(lib, 'getOrSet one hot key (hit)') / single(lib, 'get one hot key (hit)'), 1 / 1.2, 15);
  goal('getOrSet hit vs get hit, rate (cost ≤ 1.2×), Zipf, 100k keys', single(lib, 'getOrSet (hit)') / single(lib, 'get (hit)'), 1 / 1.2, 15);
  goal('write-through set vs raw ioredis SET', libSet / single(rawAdapter.name, 'SET, one at a time'), 0.8);
  goal('write-through set vs bentocache set', libSet / single('bentocache', 'set'), 2.5);
  const csc = p50('node-redis CSC');
  goal('write-to-visible p50, invalidate mode: node-redis CSC ÷ this (no worse)', csc / p50(`${libAdapter.name} (invalidate)`), 1);
  goal('write-to-visible p50, update mode: node-redis CSC ÷ this (under 0.7×)', csc / p50(`${libAdapter.name} (update)`), 1 / 0.7);
  // Signing (signingKeys) may cost at most 15 % of update-mode write-to-visible latency.
  goal('write-to-visible p50, update mode: unsigned ÷ signed (at most 15 % slower)', p50(`${libAdapter.name} (update)`) / p50(`${libAdapter.name} (update, signed)`), 1 / 1.15);
}

/** Notes the final-flush time of a write-back run. */
function flushed(result) {
  return { ...result, note: `final flush ${fmtNs(result.afterNs)} included` };
}

// ------------------------------------------------------------------------------------ invalidation

/**
 * Instance A writes a new version of a key that instance B has cached; B polls its own get()
 * (yielding to the event loop between polls) until it returns the new version. Latency = from
 * just before A's set is called until B sees the value. A and B are separate clients with their
 * own connections, in this one process.
 *
 * Every pair is open at once and they take turns, one sample each, the order rotating every
 * round, so that the ratios between them (the goals) do not depend on which ran in the quieter
 * part of the run. Each library pair has a namespace of its own (no cross traffic); the other
 * pairs use keys of their own layout.
 */
async function invalidationSection(libCreate) {
  try {
    const row = await publishFloor();
    results.invalidation.push({ adapter: 'raw ioredis PUBLISH → subscriber (floor)', status: 'ok', ...row });
    log(`invalidation › raw ioredis PUBLISH → subscriber (floor): p50 ${fmt(row.p50Us, 1)} µs  p99 ${fmt(row.p99Us, 1)} µs  (${row.samples} samples)`);
  } catch (error) {
    invalidationError('raw ioredis PUBLISH → subscriber (floor)', error);
  }
  const pairs = [
    [`${libAdapter.name} (invalidate)`, libCreate({ sync: 'invalidate', namespace: `${libNamespace}-wtv-invalidate` })],
    [`${libAdapter.name} (update)`, libCreate({ sync: 'update', namespace: `${libNamespace}-wtv-update` })],
    [`${libAdapter.name} (update, signed)`, libCreate({ sync: 'update', namespace: `${libNamespace}-wtv-signed`, storeOptions: { signingKeys: [SIGNING_KEY] } })],
    [nodeRedisAdapter.name, () => nodeRedisAdapter.create(env)],
    [bentoAdapter.name, () => bentoAdapter.create(env)],
  ];
  const open = [];
  for (const [adapter, create] of pairs) {
    try {
      open.push({ adapter, pair: await openPair(create) });
    } catch (error) {
      invalidationError(adapter, error);
    }
  }
  try {
    const rounds = config.invalidationSamples + 20;
    const deadline = now() + BigInt(config.invalidationMaxMs * 1e6) * BigInt(Math.max(1, open.length));
    for (let n = 0; n < rounds && now() < deadline; n++) {
      const turn = n % Math.max(1, open.length);
      for (const subject of [...open.slice(turn), ...open.slice(0, turn)]) {
        if (subject.error !== undefined) continue;
        try {
          await subject.pair.sample(n);
        } catch (error) {
          subject.error = error;
        }
      }
    }
  } finally {
    for (const { pair } of open) await pair.close();
  }
  for (const subject of open) {
    if (subject.error !== undefined) {
      invalidationError(subject.adapter, subject.error);
      continue;
    }
    const row = subject.pair.summary();
    results.invalidation.push({ adapter: subject.adapter, status: 'ok', ...row });
    log(`invalidation › ${subject.adapter}: p50 ${fmt(row.p50Us, 1)} µs  p99 ${fmt(row.p99Us, 1)} µs  (${row.samples} samples; the writer's set() p50 ${fmt(row.writerP50Us, 1)} µs)`);
  }
}

function invalidationError(adapter, error) {
  const status = errorStatus(error);
  results.invalidation.push({ adapter, ...status });
  log(`invalidation › ${adapter}: ${status.message}`);
  if (status.status === 'failed') results.failures.push(`invalidation › ${adapter}: ${status.message}`);
}

/** Opens writer A and reader B; `sample(n)` takes the n-th sample (the first 20 are warm-up). */
async function openPair(create) {
  const a = await create();
  let b;
  try {
    b = await create();
  } catch (error) {
    await a.close().catch(() => {});
    throw error;
  }
  const hot = keys.slice(0, 20);
  const samples = [];
  const writerSamples = [];
  return {
    async sample(n) {
      const index = n % hot.length;
      const key = hot[index];
      const version = 1000 + n;
      // B has the current value cached (second read is a hit).
      await b.get(key);
      await b.get(key);
      const fresh = makeValue(index, version);
      const start = now();
      let writerNs = 0;
      const write = Promise.resolve(a.set(key, fresh)).then(() => (writerNs = since(start)));
      let polls = 0;
      for (;;) {
        const seen = await b.get(key);
        if (seen?.version === version) break;
        // Bounded in time: a peer that never sees a write fails its own row, within 2 s, instead
        // of using up the section's deadline that every other pair shares.
        if (++polls > 1000 && since(start) > 2e9) throw new Error(`B never saw version ${version} of ${key} within 2 s`);
        await tick();
      }
      const latency = since(start);
      await write;
      if (n >= 20) {
        samples.push(latency);
        writerSamples.push(writerNs);
      }
    },
    summary() {
      const writer = summarize(writerSamples);
      return { ...summarize(samples), writerP50Us: writer.p50Us, writerP99Us: writer.p99Us };
    },
    async close() {
      await b.close().catch(() => {});
      await a.close().catch(() => {});
    },
  };
}

/** Raw ioredis 6: PUBLISH on one connection until the 'message' event on another. */
async function publishFloor() {
  const pub = await rawAdapter.connect(url);
  const sub = await rawAdapter.connect(url);
  try {
    const channel = `${prefix}:floor`;
    await sub.subscribe(channel);
    let resolveMessage;
    sub.on('message', () => resolveMessage?.());
    const samples = [];
    for (let n = 0; n < config.invalidationSamples + 20; n++) {
      const seen = new Promise((resolve) => (resolveMessage = resolve));
      const start = now();
      pub.publish(channel, 'x');
      await seen;
      if (n >= 20) samples.push(since(start));
    }
    return summarize(samples);
  } finally {
    sub.disconnect();
    pub.disconnect();
  }
}

// ------------------------------------------------------------------------------------ write-back

/**
 * N = 10,000 new keys per repetition (median of the repetitions):
 * - raw MSET: the N values, already MessagePack-encoded (shipping cost only), as MSETs of 1,000
 *   keys in one pipeline (the target's reference), as one MSET, and as a pipeline of N SETs;
 * - write-through: N awaited PubSubCacheManager.set() one at a time (and 100 in flight);
 * - write-back: N awaited WriteBackCacheManager.set() then one flush() (versioned CAS writes).
 */
async function writeBackSection() {
  const N = config.writeBackN;
  const reps = config.writeBackReps;
  const entriesOf = (tag) => {
    const ks = Array.from({ length: N }, (_, i) => `${tag}-${i}`);
    const vs = Array.from({ length: N }, (_, i) => makeValue(i, 2));
    return { ks, vs };
  };
  const addRow = (name, samplesNs, extra = {}) => {
    const ns = median(samplesNs);
    const row = { case: name, status: 'ok', keysPerSec: (N / ns) * 1e9, ms: ns / 1e6, reps: samplesNs.length, ...extra };
    results.writeBack.push(row);
    log(`write-back › ${name}: ${fmt(row.keysPerSec)} keys/s (${fmt(row.ms, 1)} ms for ${fmt(N)} keys, median of ${row.reps})`);
    return row;
  };
  const addError = (name, error) => {
    const status = errorStatus(error);
    results.writeBack.push({ case: name, ...status });
    log(`write-back › ${name}: ${status.message}`);
    if (status.status === 'failed') results.failures.push(`write-back › ${name}: ${status.message}`);
  };

  // raw MSET / pipeline (values pre-encoded with MessagePack: shipping cost only)
  const raw = await rawAdapter.connect(url);
  let msetRow;
  try {
    const chunked = [];
    const single = [];
    const pipe = [];
    for (let rep = 0; rep < 8; rep++) {
      const { ks, vs } = entriesOf(`mset${rep}`);
      const args = rawAdapter.msetArgs(`${prefix}:wb:`, rawAdapter.encodeEntries(ks, vs));
      let start = now();
      const chunks = raw.pipeline();
      for (let i = 0; i < args.length; i += 2000) chunks.mset(args.slice(i, i + 2000));
      await chunks.exec();
      const chunkedNs = since(start);
      const one = args.map((a, i) => (i % 2 ? a : `${a}:1`));
      start = now();
      await raw.mset(one);
      const singleNs = since(start);
      const pipeline = raw.pipeline();
      for (let i = 0; i < args.length; i += 2) pipeline.set(`${args[i]}:p`, args[i + 1]);
      start = now();
      await pipeline.exec();
      const pipeNs = since(start);
      if (rep >= 1) {
        chunked.push(chunkedNs);
        single.push(singleNs);
        pipe.push(pipeNs);
      }
    }
    addRow('raw ioredis: MSET by 1,000 keys, pipelined', chunked);
    addRow(`raw ioredis: one MSET of ${N.toLocaleString('en-US')} keys`, single);
    addRow(`raw ioredis: pipeline of ${N.toLocaleString('en-US')} SET`, pipe);
  } finally {
    await raw.quit();
  }

  // Write-through, and raw SET of the same data one at a time and with 100 in flight on an
  // auto-pipelining client (its references, issue #17: >= 0.8x one at a time, >= 0.7x with 100 in
  // flight), alternating in each repetition so that a change of load on the host affects both.
  let rawSetRow;
  let rawSetConcRow;
  let wtRow;
  let wtConcRow;
  const libCreate = (options) => libAdapter.create(env, options);
  const rawAuto = await rawAdapter.connect(url, { autoPipelining: true });
  try {
    const wt = await libCreate({ namespace: `${prefix}-wt` });
    try {
      const rawSeqSamples = [];
      const rawConcSamples = [];
      const seqSamples = [];
      const concSamples = [];
      // Warm-up: 1,000 writes of each kind, each side.
      const warm = entriesOf('wt-warm');
      const warmArgs = rawAdapter.msetArgs(`${prefix}:wbset:`, rawAdapter.encodeEntries(warm.ks, warm.vs));
      for (let i = 0; i < 1000; i++) await wt.set(warm.ks[i], warm.vs[i]);
      await pool(1000, config.inFlight, (i) => wt.set(`${warm.ks[i]}c`, warm.vs[i]));
      for (let i = 0; i < 1000; i++) await rawAuto.set(warmArgs[2 * i], warmArgs[2 * i + 1]);
      await pool(1000, config.inFlight, (i) => rawAuto.set(`${warmArgs[2 * i]}c`, warmArgs[2 * i + 1]));
      // Write-through one at a time is the slowest case: stop repeating after ~8 s.
      const wtStart = now();
      for (let rep = 0; rep < reps && (rep < 1 || since(wtStart) < 8e9); rep++) {
        const { ks, vs } = entriesOf(`wt${rep}`);
        const args = rawAdapter.msetArgs(`${prefix}:wbset:`, rawAdapter.encodeEntries(ks, vs));
        let start = now();
        for (let i = 0; i < args.length; i += 2) await rawAuto.set(args[i], args[i + 1]);
        rawSeqSamples.push(since(start));
        start = now();
        for (let i = 0; i < N; i++) await wt.set(ks[i], vs[i]);
        seqSamples.push(since(start));
        start = now();
        await pool(N, config.inFlight, (i) => rawAuto.set(`${args[2 * i]}c`, args[2 * i + 1]));
        rawConcSamples.push(since(start));
        start = now();
        await pool(N, config.inFlight, (i) => wt.set(`${ks[i]}c`, vs[i]));
        concSamples.push(since(start));
      }
      rawSetRow = addRow('raw ioredis: N SET one at a time', rawSeqSamples);
      rawSetConcRow = addRow(`raw ioredis: N SET, ${config.inFlight} in flight (auto-pipelining)`, rawConcSamples);
      wtRow = addRow('PubSubCacheManager: N set() one at a time (write-through)', seqSamples);
      wtConcRow = addRow(`PubSubCacheManager: N set(), ${config.inFlight} in flight (write-through)`, concSamples);
    } finally {
      await wt.close();
    }
  } catch (error) {
    addError('PubSubCacheManager: N set() one at a time (write-through)', error);
  } finally {
    await rawAuto.quit();
  }

  // write-back, unsigned and with signingKeys (the cost of signing every flushed batch), beside
  // the targets' reference (raw MSETs of 1,000 keys, pipelined). The three live side by side and
  // take turns, the order rotating every rep, so that none gets the quieter part of the run: the
  // database grows by N keys a rep, and Redis's incremental rehashing, GC and the host's noise
  // land on all alike.
  let wbRow;
  let flushRow;
  let signedFlushRow;
  const variants = [
    { signed: false, namespace: `${prefix}-wb`, total: [], set: [], flush: [], written: 0, conflicts: 0 },
    { signed: true, namespace: `${prefix}-wb-signed`, total: [], set: [], flush: [], written: 0, conflicts: 0 },
  ];
  const wbCaseName = (v) => `WriteBackCacheManager: N set() + one flush()${v.signed ? ' [signed]' : ''}`;
  for (const v of variants) {
    try {
      v.wb = await libCreate({
        namespace: v.namespace,
        writeBack: true,
        writeBackOptions: { flushIntervalMs: 0, maxDirty: 1_000_000_000, maxPending: 1_000_000_000 },
        storeOptions: v.signed ? { signingKeys: [SIGNING_KEY] } : {},
      });
    } catch (error) {
      addError(wbCaseName(v), error);
    }
  }
  const rawTurns = await rawAdapter.connect(url);
  const rawMset = [];
  try {
    for (let rep = 0; rep < reps + 1; rep++) {
      const turns = [undefined, ...variants];
      const order = [...turns.slice(rep % 3), ...turns.slice(0, rep % 3)];
      for (const v of order) {
        // What the previous turn left behind (its own message still arriving on its subscriber,
        // garbage to collect) is not charged to this one.
        await quiesce(rawTurns);
        if (v === undefined) {
          const { ks, vs } = entriesOf(`wbraw${rep}`);
          const args = rawAdapter.msetArgs(`${prefix}:wbraw:`, rawAdapter.encodeEntries(ks, vs));
          const start = now();
          const chunks = rawTurns.pipeline();
          for (let i = 0; i < args.length; i += 2000) chunks.mset(args.slice(i, i + 2000));
          await chunks.exec();
          if (rep >= 1) rawMset.push(since(start));
          continue;
        }
        if (v.wb === undefined || v.error !== undefined) continue;
        try {
          const { ks, vs } = entriesOf(`wb${rep}`);
          const start = now();
          for (let i = 0; i < N; i++) await v.wb.set(ks[i], vs[i]);
          const setNs = since(start);
          const flushStart = now();
          const report = await v.wb.flush();
          const flushNs = since(flushStart);
          v.written = Array.isArray(report?.written) ? report.written.length : Number(report?.written);
          v.conflicts = Array.isArray(report?.conflicts) ? report.conflicts.length : Number(report?.conflicts ?? 0);
          if (v.written !== N) throw new Error(`flush wrote ${v.written} keys, expected ${N}`);
          if (rep >= 1) {
            v.total.push(setNs + flushNs);
            v.set.push(setNs);
            v.flush.push(flushNs);
          }
        } catch (error) {
          v.error = error;
        }
      }
    }
    msetRow = addRow('raw ioredis: MSET by 1,000 keys, pipelined, taking turns with the flushes below', rawMset);
    for (const v of variants) {
      if (v.wb === undefined) continue;
      if (v.error !== undefined) {
        addError(wbCaseName(v), v.error);
        continue;
      }
      try {
        // Check what the flush wrote, through a separate plain store.
        await verifyFlushed(v.namespace, `wb${reps}`, N);
      } catch (error) {
        addError(wbCaseName(v), error);
        continue;
      }
      if (v.signed) {
        addRow(wbCaseName(v), v.total, { written: v.written, conflicts: v.conflicts });
        signedFlushRow = addRow('WriteBackCacheManager: the flush() alone (versioned) [signed]', v.flush);
      } else {
        wbRow = addRow(wbCaseName(v), v.total, { written: v.written, conflicts: v.conflicts });
        addRow('WriteBackCacheManager: the N set() alone (local)', v.set);
        flushRow = addRow('WriteBackCacheManager: the flush() alone (versioned)', v.flush);
      }
    }
  } finally {
    for (const v of variants) await v.wb?.close();
    await rawTurns.quit();
  }

  const target = (name, value, goal, detail, issue = 4) => {
    const t = { name, value, target: goal, pass: Number.isFinite(value) ? value >= goal : null, detail, issue };
    results.targets.push(t);
    log(`target › ${name}: ${Number.isFinite(value) ? `${fmt(value, 2)}×` : 'not measured'} (target ≥ ${goal}×) ${t.pass === null ? '' : t.pass ? 'PASS' : 'FAIL'}`);
  };
  target('write-back (N set + flush) vs write-through (N set one at a time)', wbRow && wtRow ? wbRow.keysPerSec / wtRow.keysPerSec : NaN, 20);
  target('write-through set one at a time vs raw SET one at a time (same data, write-back section)', wtRow && rawSetRow ? wtRow.keysPerSec / rawSetRow.keysPerSec : NaN, 0.8, undefined, 17);
  target(`write-through set, ${config.inFlight} in flight vs raw SET, ${config.inFlight} in flight (auto-pipelining)`, wtConcRow && rawSetConcRow ? wtConcRow.keysPerSec / rawSetConcRow.keysPerSec : NaN, 0.7, undefined, 17);
  target('versioned flush vs raw MSET', flushRow && msetRow ? flushRow.keysPerSec / msetRow.keysPerSec : NaN, 0.7);
  target('signed flush vs unsigned flush (signingKeys cost at most 15 %)', signedFlushRow && flushRow ? signedFlushRow.keysPerSec / flushRow.keysPerSec : NaN, 0.85);
}

// ------------------------------------------------------------------------------------ fan-out

/** Write throughput with 16 subscribing instances (child processes) vs 1: see bench/fanout.mjs. */
async function runFanOut() {
  try {
    const { fanOutSection } = await import('./fanout.mjs');
    const { rows, targets, problem } = await fanOutSection({ url, prefix, config, log, libAdapter, fmt });
    results.fanOut.push(...rows);
    if (problem) results.failures.push(`fan-out: ${problem}`);
    for (const [name, value, goal] of targets) {
      const t = { name, value, target: goal, pass: Number.isFinite(value) && !problem ? value >= goal : null, issue: 17, ...(problem ? { detail: problem } : {}) };
      results.targets.push(t);
      log(`target › ${name}: ${Number.isFinite(value) ? `${fmt(value, 2)}×` : 'not measured'} (target ≥ ${goal}×) ${t.pass === null ? '' : t.pass ? 'PASS' : 'FAIL'}`);
    }
  } catch (error) {
    const status = errorStatus(error);
    results.fanOut.push({ case: 'fan-out', ...status });
    log(`fan-out: ${status.message}`);
    if (status.status === 'failed') results.failures.push(`fan-out: ${status.message}`);
  }
}

async function verifyFlushed(namespace, tag, n) {
  const Dict = await libAdapter.need('PubSubRedisDict');
  const redis = await rawAdapter.connect(url);
  try {
    const dict = new Dict(redis, namespace);
    for (const i of [0, n >> 1, n - 1]) {
      const got = await dict.get(`${tag}-${i}`);
      if (!isDeepStrictEqual(got, makeValue(i, 2))) throw new Error(`after flush, ${tag}-${i} reads ${JSON.stringify(got)}`);
    }
  } finally {
    await redis.quit();
  }
}

// ------------------------------------------------------------------------------------ cleanup

/** On a user's Redis: delete every key this run created (SCAN MATCH prefix*). */
async function cleanupUserRedis() {
  if (!argv['redis-url']) return;
  const redis = await rawAdapter.connect(url);
  try {
    let cursor = '0';
    let deleted = 0;
    do {
      const [next, batch] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
      cursor = next;
      if (batch.length) deleted += await redis.unlink(...batch);
    } while (cursor !== '0');
    log(`deleted ${fmt(deleted)} benchmark keys from ${url.replace(/\/\/[^@]*@/, '//***@')}`);
  } finally {
    await redis.quit();
  }
}

let exitCode = 0;
if (argv.scale) {
  try {
    const { runScale } = await import('./scale.mjs');
    const sizes = (argv['scale-sizes'] ?? '10000,100000,1000000').split(',').map((s) => Number(s.trim()));
    const topologies = (argv['scale-topologies'] ?? 'standalone,cluster').split(',').map((s) => s.trim());
    await runScale({ log, redisUrl: argv['redis-url'], sizes, topologies, outDir: argv['out-dir'] });
  } catch (error) {
    console.error(error);
    exitCode = 1;
  }
  log(`done in ${(since(t0) / 1e9).toFixed(1)} s`);
  process.exit(exitCode);
}
try {
  await main();
  await cleanupUserRedis().catch((error) => log(`cleanup failed: ${error.message}`));
  const files = await writeReports(results, argv['out-dir']);
  log(`wrote ${files.join(', ')}`);
  if (results.failures.length) {
    log(`${results.failures.length} case(s) failed:`);
    for (const f of results.failures) console.log(`  - ${f}`);
  }
} catch (error) {
  console.error(error);
  exitCode = 1;
} finally {
  await server?.stop();
  if (server) log(`stopped redis-server (pid ${server.pid})`);
}
log(`done in ${(since(t0) / 1e9).toFixed(1)} s`);
// Some client libraries keep timers alive; the run is over.
process.exit(exitCode);
