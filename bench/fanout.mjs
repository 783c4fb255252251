/**
 * Fan-out (issue #17): write throughput of one PubSubCacheManager when 16 other instances
 * subscribe to its namespace, against the same with one subscriber. Goal: at least 0.85× .
 *
 * The subscribers are 16 child processes (bench/fanout-subscriber.mjs), each a PubSubCacheManager
 * with the written keys cached; child 0 also subscribes to a second namespace, which has that one
 * subscriber only. The writer (this process) alternates between the two namespaces, so both see the
 * same background. Separate processes, not instances in the writer's process: there their CPU
 * would be taken from the writer's event loop, which is not what a fleet sees. On a 2-core host the
 * children still share the CPU with the writer and Redis, so they run at the lowest priority
 * (nice 19): they take what the writer and Redis leave, and what is measured is what the fan-out
 * costs Redis and the writer. Every subscriber's count of received entries is checked afterwards
 * (untimed): each must have received every write.
 */
import { fork } from 'node:child_process';
import { setTimeout as delay } from 'node:timers/promises';
import { clearTimeout, setTimeout } from 'node:timers';
import { URL } from 'node:url';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { median, now, pool, since } from './lib/timing.mjs';

const CHILD = fileURLToPath(new URL('./fanout-subscriber.mjs', import.meta.url));
export const FANOUT_SUBSCRIBERS = 16;

/** Runs the fan-out case; returns its rows, its targets, and `problem` when the subscribers did not all receive every write. */
export async function fanOutSection({ url, prefix, config, log, libAdapter, fmt }) {
  const rows = [];
  const targets = [];
  const keys = Array.from({ length: 1000 }, (_, i) => `fan-${i}`);
  const nsOne = `${prefix}-fan1`;
  const nsMany = `${prefix}-fan${FANOUT_SUBSCRIBERS}`;
  // Kept small enough that every subscriber, at the lowest priority, keeps up without Redis
  // disconnecting it for its output buffer (`client-output-buffer-limit pubsub`, 8 MB for 60 s):
  // a subscriber that lost messages would leave Redis less work and the ratio would flatter.
  const seqN = config.quick ? 1000 : 2000;
  const concN = config.quick ? 5000 : 10_000;
  const reps = config.quick ? 2 : 4;
  const children = [];
  const writers = {};
  const written = { [nsOne]: 0, [nsMany]: 0 };
  let problem;
  try {
    // The subscribers, each ready (subscribed, keys cached) before any timing.
    for (let c = 0; c < FANOUT_SUBSCRIBERS; c++) {
      const child = fork(CHILD, [], { env: { ...process.env, FANOUT_CHILD: JSON.stringify({ url, namespaces: c === 0 ? [nsMany, nsOne] : [nsMany], keys }) }, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      children.push(child);
      try {
        os.setPriority(child.pid, 19);
      } catch {
        log('fan-out: could not lower the subscribers\' priority; they compete with the writer for CPU');
      }
    }
    await Promise.all(children.map((child) => new Promise((resolve, reject) => {
      child.on('message', (m) => {
        if (m.type === 'ready') resolve();
        if (m.type === 'error') log(`fan-out subscriber ${child.pid}: ${m.message}`);
      });
      child.once('exit', (code) => reject(new Error(`fan-out subscriber exited with ${code} before it was ready`)));
    })));
    for (const ns of [nsOne, nsMany]) {
      writers[ns] = await libAdapter.create({ url, cacheEntries: 100_000, log }, { namespace: ns });
      await writers[ns].cache.getMany(keys);
    }
    const samples = { seq: { [nsOne]: [], [nsMany]: [] }, conc: { [nsOne]: [], [nsMany]: [] } };
    let v = 0;
    for (let rep = 0; rep < reps + 1; rep++) {
      // Alternate which namespace goes first; the first repetition is a warm-up.
      for (const ns of rep % 2 ? [nsMany, nsOne] : [nsOne, nsMany]) {
        const w = writers[ns];
        let start = now();
        for (let i = 0; i < seqN; i++) await w.set(keys[i % keys.length], { v: v++, pad: 'x'.repeat(80) });
        const seqNs = since(start);
        start = now();
        await pool(concN, config.inFlight, (i) => w.set(keys[i % keys.length], { v: v + i, pad: 'x'.repeat(80) }));
        v += concN;
        const concNs = since(start);
        written[ns] += seqN + concN;
        if (rep >= 1) {
          samples.seq[ns].push(seqNs);
          samples.conc[ns].push(concNs);
        }
      }
    }
    const row = (name, n, list, subscribers) => {
      const ns = median(list);
      const r = { case: name, status: 'ok', subscribers, keysPerSec: (n / ns) * 1e9, ms: ns / 1e6, reps: list.length };
      rows.push(r);
      log(`fan-out › ${name}: ${fmt(r.keysPerSec)} writes/s (median of ${r.reps})`);
      return r;
    };
    const seqOne = row('set() one at a time, 1 subscriber', seqN, samples.seq[nsOne], 1);
    const seqMany = row(`set() one at a time, ${FANOUT_SUBSCRIBERS} subscribers`, seqN, samples.seq[nsMany], FANOUT_SUBSCRIBERS);
    const concOne = row(`set(), ${config.inFlight} in flight, 1 subscriber`, concN, samples.conc[nsOne], 1);
    const concMany = row(`set(), ${config.inFlight} in flight, ${FANOUT_SUBSCRIBERS} subscribers`, concN, samples.conc[nsMany], FANOUT_SUBSCRIBERS);
    targets.push([`fan-out: write-through one at a time, ${FANOUT_SUBSCRIBERS} subscribers vs 1`, seqMany.keysPerSec / seqOne.keysPerSec, 0.85]);
    targets.push([`fan-out: write-through ${config.inFlight} in flight, ${FANOUT_SUBSCRIBERS} subscribers vs 1`, concMany.keysPerSec / concOne.keysPerSec, 0.85]);

    // Every subscriber received every write (untimed; each write is one message entry).
    const deadline = Date.now() + 120_000;
    let id = 0;
    for (;;) {
      const stats = await Promise.all(children.map((child) => new Promise((resolve) => {
        const ask = ++id;
        const on = (m) => {
          if (m.type === 'stats' && m.id === ask) {
            child.off('message', on);
            resolve(m.received);
          }
        };
        child.on('message', on);
        child.send({ type: 'stats', id: ask });
      })));
      const short = stats.flatMap((received) => Object.entries(received).filter(([ns, n]) => n < written[ns]));
      if (short.length === 0) break;
      if (Date.now() > deadline) {
        // The figures do not hold: some subscriber lost messages (disconnected by Redis, say).
        problem = `${short.length} subscriber(s) did not receive every write (${JSON.stringify(short.slice(0, 3))} of ${written[nsMany]}): the ratios are not valid`;
        log(`fan-out: ${problem}`);
        break;
      }
      await delay(100);
    }
    if (problem === undefined) log(`fan-out: every subscriber received all ${fmt(written[nsMany])} writes of its namespace (and child 0 the ${fmt(written[nsOne])} of the other)`);
  } finally {
    for (const w of Object.values(writers)) await w.close().catch(() => {});
    await Promise.all(children.map((child) => new Promise((resolve) => {
      if (child.exitCode !== null) return resolve();
      const kill = setTimeout(() => child.kill('SIGKILL'), 10_000);
      child.once('exit', () => {
        clearTimeout(kill);
        resolve();
      });
      child.send({ type: 'stop' }, (error) => {
        if (error) child.kill('SIGKILL');
      });
    })));
  }
  return { rows, targets, problem };
}
