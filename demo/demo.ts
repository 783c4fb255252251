/**
 * The demo: `npm run demo` (or `npm run demo -- --redis-url redis://host:port`).
 *
 * Starts an embedded Redis (through the test harness) unless a URL is given, then shows the
 * library's main job: three instances sharing a namespace and staying coherent, a write-back batch
 * flushed with its throughput, a conflict under each policy, and a subscriber cut off and
 * recovering without serving stale data. Stops every process it started.
 */
import { Redis } from 'ioredis';
import { PubSubCacheManager, PubSubRedisDict, type Conflict, WriteBackCacheManager } from '../src/index.js';
import type { RedisEnvironment } from '../test/helpers/harness.js';

interface Row {
  step: string;
  result: string;
}

const rows: Row[] = [];
const clients: Redis[] = [];
const closers: (() => Promise<unknown>)[] = [];

function log(line: string): void {
  process.stdout.write(`${line}\n`);
}

function progress(label: string, done: number, total: number): void {
  if (!process.stdout.isTTY) return;
  const width = 30;
  const filled = Math.round((done / total) * width);
  process.stdout.write(`\r  ${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total}`);
  if (done === total) process.stdout.write('\n');
}

function connect(url: string): Redis {
  const client = new Redis(url, { lazyConnect: false });
  clients.push(client);
  return client;
}

/** Resolves when `check` is true, polling every 5 ms; rejects after `timeoutMs`. */
async function until(check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<number> {
  const start = performance.now();
  for (;;) {
    if (await check()) return performance.now() - start;
    if (performance.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Waits for the wall clock to move to the next millisecond. */
async function nextMillisecond(): Promise<void> {
  const now = Date.now();
  while (Date.now() === now) await new Promise((resolve) => setImmediate(resolve));
}

function parseArgs(argv: string[]): { redisUrl: string | undefined } {
  const at = argv.indexOf('--redis-url');
  if (at >= 0) {
    const url = argv[at + 1];
    if (!url) throw new Error('--redis-url needs a value, e.g. --redis-url redis://127.0.0.1:6379');
    return { redisUrl: url };
  }
  const inline = argv.find((a) => a.startsWith('--redis-url='));
  return { redisUrl: inline?.slice('--redis-url='.length) };
}

async function coherence(url: string, ns: string): Promise<void> {
  log('\n1. Three instances share a namespace (near cache, invalidate mode)');
  const [a, b, c] = [0, 1, 2].map(() => new PubSubCacheManager<{ price: number }>(new PubSubRedisDict(connect(url), ns), { cache: 1000 })) as [
    PubSubCacheManager<{ price: number }>,
    PubSubCacheManager<{ price: number }>,
    PubSubCacheManager<{ price: number }>,
  ];
  for (const m of [a, b, c]) closers.push(() => m.close());
  await Promise.all([a, b, c].map((m) => m.ready()));
  await a.set('apple', { price: 1 });
  await b.get('apple');
  await c.get('apple');
  log(`   A wrote apple=1; B and C read it and cache it (B cache: ${b.cache.size} entry)`);
  // Timed by the events themselves: each of B and C emits 'invalidate' the moment A's message
  // drops its stale entry (a poll with a timer would measure the timer, not the library).
  const dropped = (m: PubSubCacheManager<{ price: number }>): Promise<number> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('timed out waiting for the invalidation of apple')), 2000);
      const listener = (key: string): void => {
        if (key !== 'apple') return;
        clearTimeout(timer);
        m.off('invalidate', listener);
        resolve(performance.now());
      };
      m.on('invalidate', listener);
    });
  const events = Promise.all([dropped(b), dropped(c)]);
  const start = performance.now();
  await a.set('apple', { price: 2 });
  const writeMs = performance.now() - start;
  const seen = Math.max(...(await events)) - start;
  await until(async () => (await b.get('apple'))?.price === 2 && (await c.get('apple'))?.price === 2, 2000, 'B and C to read apple=2');
  log(`   A wrote apple=2 (its set() took ${writeMs.toFixed(2)} ms); B and C dropped their stale copy ${seen.toFixed(2)} ms after the write began, and read apple=2`);
  const stats = b.stats();
  log(`   B: ${stats.hits} hits, ${stats.misses} misses, ${stats.eventsApplied} events applied`);
  rows.push({ step: 'write on A visible on B and C (from the start of the write)', result: `${seen.toFixed(2)} ms` });
}

async function writeBack(url: string, ns: string): Promise<void> {
  log('\n2. A write-back batch');
  const store = new PubSubRedisDict<{ n: number; label: string }>(connect(url), ns);
  const wb = new WriteBackCacheManager(store, { flushIntervalMs: 0, maxDirty: 1_000_000, maxPending: 1_000_000 });
  closers.push(() => wb.close());
  await wb.ready();
  const total = 20_000;
  const start = performance.now();
  for (let i = 0; i < total; i++) {
    await wb.set(`item:${i}`, { n: i, label: `item number ${i}` });
    if (i % 2000 === 1999) progress('local sets', i + 1, total);
  }
  const setMs = performance.now() - start;
  log(`   ${total} local sets in ${setMs.toFixed(0)} ms; ${wb.dirtyCount} keys dirty`);
  const flushStart = performance.now();
  const report = await wb.flush();
  const flushMs = performance.now() - flushStart;
  const rate = Math.round(total / ((setMs + flushMs) / 1000));
  log(`   flush wrote ${report.written.length} keys in ${flushMs.toFixed(0)} ms (${Math.round(total / (flushMs / 1000))} keys/s); ${wb.dirtyCount} dirty now`);
  log(`   end to end: ${rate} keys/s`);
  rows.push({ step: `write-back: ${total} sets + 1 flush`, result: `${rate} keys/s` });
}

async function conflictUnder(url: string, ns: string, label: string, policy: ConstructorParameters<typeof WriteBackCacheManager<string>>[1]): Promise<void> {
  const mk = (name: string) => {
    const m = new WriteBackCacheManager<string>(new PubSubRedisDict(connect(url), ns), { flushIntervalMs: 0, sync: 'update', ...policy });
    closers.push(() => m.close());
    return [name, m] as const;
  };
  const [[, a], [, b]] = [mk('A'), mk('B')];
  await Promise.all([a.ready(), b.ready()]);
  const conflicts: Conflict<string>[] = [];
  a.on('conflict', (c) => conflicts.push(c));
  // A edits first, B edits, A edits again; B flushes first. The clock moves between the steps so
  // that the stamps are ordered: A1 < B < A2.
  await a.set('doc', 'A, first edit');
  await nextMillisecond();
  await b.set('doc', 'B');
  await nextMillisecond();
  await a.set('doc', 'A, second edit');
  await b.flush();
  await until(async () => conflicts.length > 0 || !a.isDirty('doc'), 2000, 'the conflict on A').catch(() => 0);
  await a.onIdle();
  await b.onIdle();
  const final = await until(async () => (await a.get('doc')) === (await b.get('doc')), 2000, 'A and B to agree');
  const value = await new PubSubRedisDict<string>(connect(url), ns).get('doc');
  const c = conflicts[0];
  const outcome = c ? `A's pending change ${c.outcome === 'remote' ? 'discarded' : c.outcome === 'merged' ? 'merged' : 'kept'} (conflict reported)` : `A's newer change won, B's write was older`;
  log(`   ${label.padEnd(26)} ${outcome}; Redis and both caches hold "${value}" (agreed after ${final.toFixed(0)} ms)`);
  rows.push({ step: `conflict, ${label}`, result: `"${value}"` });
}

async function conflicts(url: string, ns: string): Promise<void> {
  log('\n3. The same conflict under each policy');
  log('   A edits "doc", B edits it, A edits it again; B flushes first, then A.');
  await conflictUnder(url, `${ns}-lww`, 'last-writer-wins', { conflictPolicy: 'last-writer-wins' });
  await conflictUnder(url, `${ns}-discard`, 'discard-on-remote-update', { conflictPolicy: 'discard-on-remote-update' });
  await conflictUnder(url, `${ns}-merge`, 'custom resolver (merge)', {
    conflictPolicy: (local, remote) => ({ value: `${remote.value ?? ''} + ${local.value ?? ''}` }),
  });
}

async function recovery(url: string, ns: string): Promise<void> {
  log('\n4. A subscriber cut off and recovering');
  const writer = new PubSubCacheManager<number>(new PubSubRedisDict(connect(url), ns));
  const reader = new PubSubCacheManager<number>(new PubSubRedisDict(connect(url), ns), { heartbeatIntervalMs: 200 });
  closers.push(() => writer.close(), () => reader.close());
  await Promise.all([writer.ready(), reader.ready()]);
  await writer.set('counter', 1);
  await reader.get('counter');
  const down = new Promise<string>((resolve) => reader.once('down', resolve));
  const resynced = new Promise<string>((resolve) => reader.once('resync', (info) => resolve(`${info.reason}, ${info.dropped} dropped, ${info.kept} kept`)));
  const admin = connect(url);
  await admin.call('CLIENT', 'KILL', 'TYPE', 'pubsub');
  log(`   killed every pub/sub connection; reader went down: ${await down}`);
  await writer.set('counter', 2); // its event is lost: the reader was not subscribed
  const whileDown = await reader.get('counter');
  log(`   writer set counter=2 while the reader was cut off; the reader answered ${whileDown} (read from Redis, not the stale cache)`);
  log(`   reader resynced: ${await resynced}`);
  const after = await reader.get('counter');
  log(`   after recovery the reader answers ${after}`);
  rows.push({ step: 'subscriber killed, value read meanwhile', result: `${whileDown} (fresh)` });
  rows.push({ step: 'after resync', result: `${after} (fresh)` });
}

async function main(): Promise<void> {
  const { redisUrl } = parseArgs(process.argv.slice(2));
  let env: RedisEnvironment | undefined;
  let url = redisUrl;
  if (!url) {
    log('Starting an embedded Redis ...');
    const { startRedisEnvironment } = await import('../test/helpers/harness.js');
    env = await startRedisEnvironment({ cluster: false });
    url = env.standalone.url;
  }
  log(`Redis: ${url}${env ? ` (${env.source})` : ''}`);
  const ns = `demo-${Date.now().toString(36)}`;
  try {
    await coherence(url, `${ns}-shared`);
    await writeBack(url, `${ns}-wb`);
    await conflicts(url, `${ns}-conflict`);
    await recovery(url, `${ns}-recovery`);
    log('\nSummary');
    const width = Math.max(...rows.map((r) => r.step.length));
    log(`  ${'step'.padEnd(width)}  result`);
    log(`  ${'-'.repeat(width)}  ------`);
    for (const row of rows) log(`  ${row.step.padEnd(width)}  ${row.result}`);
  } finally {
    for (const close of closers.reverse()) await close().catch(() => undefined);
    const cleanup = new Redis(url);
    for await (const keys of cleanup.scanStream({ match: `${ns}-*`, count: 1000 }) as AsyncIterable<string[]>) {
      if (keys.length > 0) await cleanup.del(...keys);
    }
    cleanup.disconnect();
    for (const client of clients) client.disconnect();
    await env?.stop();
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error);
    process.exit(1);
  },
);
