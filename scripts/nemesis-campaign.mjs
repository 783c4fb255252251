#!/usr/bin/env node
/**
 * Driver of a long nemesis campaign (`property-tests/nemesis.test.ts`, issue #13 item 7).
 *
 * One lane runs the test file in batches: each batch is one vitest process with its own servers
 * (the file spawns them) and a fresh seed, under `nice`, logged to its own file. The lanes mostly
 * wait on real time (write pauses, restarts, failovers), so several run in parallel. The driver
 * stops starting batches once the finished batches reached `--target` commands or the clock
 * reached `--until`; at `--hard-stop` it ends the running batches (SIGTERM to each batch's own
 * process group: vitest, its fork and the redis-servers it spawned; SIGKILL 20 s later).
 *
 * Every finished batch adds one JSON line to `<out>/batches.jsonl`, read from the lines the test
 * file prints: `[property] nemesis: R runs, C commands …`, `… exercised: {…}`,
 * `[property] nemesis faults=…: {…}`, and for a failure fast-check's seed, path and replayPath.
 * `--summarize <out>` prints the totals of a campaign directory without running anything.
 *
 * ```sh
 * node scripts/nemesis-campaign.mjs --lanes 6 --target 200000 --until 23:50 --hard-stop 23:58 \
 *   --out /tmp/campaign/standalone
 * node scripts/nemesis-campaign.mjs --cluster --lanes 1 --runs 4 --until 23:40 --out /tmp/campaign/cluster
 * node scripts/nemesis-campaign.mjs --summarize /tmp/campaign/standalone
 * ```
 *
 * Options: `--lanes K` (4), `--runs N` (`PROPERTY_RUNS` of a batch, per policy: 20),
 * `--target C` (commands; default none), `--until HH:MM` / `--hard-stop HH:MM` (UTC, today or
 * tomorrow), `--faults` (`NEMESIS_FAULTS`, default `kill,restart,pause,scriptFlush,skew`;
 * `all` with `--cluster`), `--max-commands` (`NEMESIS_MAX_COMMANDS`, 60), `--nice` (15),
 * `--max-load L` (12: while the 1-minute load average stays above L for 2 minutes, one lane
 * fewer starts batches; below 3L/4 for 2 minutes, one more, up to `--lanes`), `--cluster`
 * (`NEMESIS_CLUSTER=1 -t cluster`), `--out DIR`. `kill -USR1 <driver pid>` drains: no new batch
 * starts, the running ones finish and are counted.
 *
 * Written by hand (no dependency): a loop over child processes and a few regular expressions.
 */
import { spawn, execFileSync } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync, createWriteStream } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import process from 'node:process';
import console from 'node:console';
import { setTimeout as delay } from 'node:timers/promises';
import { setTimeout, clearTimeout, setInterval, clearInterval } from 'node:timers';
import { randomInt } from 'node:crypto';
import { parseArgs } from 'node:util';

const { values: opts } = parseArgs({
  options: {
    lanes: { type: 'string', default: '4' },
    runs: { type: 'string', default: '20' },
    target: { type: 'string' },
    until: { type: 'string' },
    'hard-stop': { type: 'string' },
    faults: { type: 'string' },
    'max-commands': { type: 'string', default: '60' },
    nice: { type: 'string', default: '15' },
    'max-load': { type: 'string', default: '12' },
    cluster: { type: 'boolean', default: false },
    out: { type: 'string' },
    summarize: { type: 'string' },
  },
});

/** Parses the lines a nemesis test file printed into the figures of one batch. */
export function parseLog(text) {
  // eslint-disable-next-line no-control-regex
  const plain = text.replace(/\u001b\[[0-9;]*m/g, '');
  const out = { runs: 0, commands: 0, byCommand: {}, exercised: null, faults: null, wallByCommand: null, failures: [] };
  const summary = /\[property\] nemesis: (\d+) runs, (\d+) commands \([^)]*\) in [\d.]+ s: (.*)/.exec(plain);
  if (summary) {
    out.runs = Number(summary[1]);
    out.commands = Number(summary[2]);
    for (const pair of summary[3].trim().split(/\s+/)) {
      const [name, n] = pair.split('=');
      if (name && n) out.byCommand[name] = Number(n);
    }
  }
  const exercised = /\[property\] nemesis exercised: (\{.*\})/.exec(plain);
  if (exercised) out.exercised = JSON.parse(exercised[1]);
  const faults = /\[property\] nemesis faults=[^:]*: (\{.*\})/.exec(plain);
  if (faults) out.faults = JSON.parse(faults[1]);
  const wall = /\[property\] nemesis wall ms by command: (.*)/.exec(plain);
  if (wall) out.wallByCommand = Object.fromEntries(wall[1].trim().split(/\s+/).map((p) => p.split('=')).map(([n, ms]) => [n, Number(ms)]));
  // fast-check: "Property failed after N tests\n{ seed: S, path: "P", endOnFailure: true }\nCounterexample: [...]"
  const re = /\{ seed: (-?\d+), path: "([^"]*)", endOnFailure: true \}\s*\n\s*Counterexample: (.*)\n[\s\S]*?Shrunk (\d+) time/g;
  for (let m = re.exec(plain); m; m = re.exec(plain)) {
    const replayPath = /replayPath="([^"]*)"/.exec(m[3])?.[1] ?? /replayPath=([^*\s]*)/.exec(m[3])?.[1];
    out.failures.push({ seed: Number(m[1]), path: m[2], replayPath, counterexample: m[3].slice(0, 2_000), shrunk: Number(m[4]) });
  }
  const failedTests = [...plain.matchAll(/^\s*(?:×|FAIL)\s+(.*I1-I4.*)$/gm)].map((m) => m[1].trim());
  out.failedTests = [...new Set(failedTests)];
  out.runFailedLines = [...plain.matchAll(/^\[nemesis\] run failed: (.*)$/gm)].length;
  return out;
}

function addInto(total, part) {
  for (const [k, v] of Object.entries(part ?? {})) {
    if (typeof v === 'number') total[k] = (total[k] ?? 0) + v;
    else if (v && typeof v === 'object') addInto((total[k] ??= {}), v);
  }
  return total;
}

/** Totals of the batches of a campaign directory. */
export function summarize(dir) {
  const file = join(dir, 'batches.jsonl');
  const batches = existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l)) : [];
  const total = { batches: batches.length, passed: 0, failed: 0, interrupted: 0, runs: 0, commands: 0, byCommand: {}, exercised: {}, faults: {}, wallByCommand: {}, failures: [], seeds: [], laneSeconds: 0, load: { min: Infinity, max: 0 } };
  let first = Infinity;
  let last = 0;
  for (const line of batches) {
    // Figures are read again from the batch's log when it is still there (a parser fix applies).
    const b = existsSync(line.log) ? { ...line, ...parseLog(readFileSync(line.log, 'utf8')) } : line;
    total[b.status]++;
    total.runs += b.runs;
    total.commands += b.commands;
    addInto(total.byCommand, b.byCommand);
    addInto(total.exercised, b.exercised);
    addInto(total.faults, b.faults);
    addInto(total.wallByCommand, b.wallByCommand);
    for (const f of b.failures) total.failures.push({ lane: b.lane, log: b.log, ...f });
    total.seeds.push(b.seed);
    total.laneSeconds += b.wallSeconds;
    for (const l of [b.loadStart, b.loadEnd]) {
      total.load.min = Math.min(total.load.min, l);
      total.load.max = Math.max(total.load.max, l);
    }
    first = Math.min(first, Date.parse(b.started));
    last = Math.max(last, Date.parse(b.ended));
  }
  total.wallSeconds = batches.length ? Math.round((last - first) / 1000) : 0;
  total.commandsPerSecond = total.wallSeconds ? +(total.commands / total.wallSeconds).toFixed(1) : 0;
  if (!batches.length) total.load = null;
  return total;
}

if (opts.summarize) {
  console.log(JSON.stringify(summarize(opts.summarize), null, 2));
  process.exit(0);
}

/** `HH:MM` (UTC) as the next such instant, or undefined. */
function clockTime(hhmm) {
  if (hhmm === undefined) return undefined;
  const m = /^(\d\d):(\d\d)$/.exec(hhmm);
  if (!m) throw new Error(`expected HH:MM (UTC), got ${hhmm}`);
  const now = new Date();
  const t = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate(), Number(m[1]), Number(m[2]));
  return t > now.getTime() ? t : t + 24 * 3600_000;
}

const out = opts.out ?? join('/tmp', `nemesis-campaign-${Date.now()}`);
mkdirSync(out, { recursive: true });
const lanes = Number(opts.lanes);
const target = opts.target === undefined ? Infinity : Number(opts.target);
const until = clockTime(opts.until) ?? Infinity;
const hardStop = clockTime(opts['hard-stop']) ?? Infinity;
const maxLoad = Number(opts['max-load']);
const faults = opts.faults ?? (opts.cluster ? 'all' : 'kill,restart,pause,scriptFlush,skew');
/** The code a batch runs: HEAD, and whether tracked files differ from it (vitest reads the work tree). */
function codeState() {
  const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
  const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' }).trim() !== '';
  return { commit, dirty };
}
const { commit, dirty } = codeState();

const log = (line) => {
  const text = `${new Date().toISOString()} ${line}`;
  console.log(text);
  appendFileSync(join(out, 'driver.log'), `${text}\n`);
};

writeFileSync(join(out, 'campaign.json'), JSON.stringify({ commit, dirty, lanes, runs: Number(opts.runs), faults, maxCommands: Number(opts['max-commands']), cluster: opts.cluster, nice: Number(opts.nice), target, until: opts.until, hardStop: opts['hard-stop'], started: new Date().toISOString() }, null, 2));
log(`campaign in ${out}: commit ${commit}${dirty ? ' (+uncommitted changes)' : ''}, ${lanes} lanes, faults ${faults}${opts.cluster ? ', cluster' : ''}, PROPERTY_RUNS=${opts.runs}`);

let stopping = false;
/** Set by SIGUSR1: no new batch starts; the running ones finish (a clean end, e.g. to change the code). */
let draining = false;
let allowedLanes = lanes;
const running = new Map(); // lane -> child

function commandsDone() {
  return summarize(out).commands;
}

function wantMore() {
  return !stopping && !draining && Date.now() < until && commandsDone() < target;
}

async function runBatch(lane, batch) {
  const seed = randomInt(1, 0x7fffffff);
  const code = codeState();
  const logFile = join(out, `lane${lane}-batch${batch}-seed${seed}.log`);
  const env = {
    ...process.env,
    REDIS_SKIP_CLUSTER: '1',
    NEMESIS_FAULTS: faults,
    NEMESIS_MAX_COMMANDS: opts['max-commands'],
    PROPERTY_RUNS: opts.runs,
    PROPERTY_SEED: String(seed),
    FORCE_COLOR: '0',
  };
  if (opts.cluster) env.NEMESIS_CLUSTER = '1';
  const args = ['-n', opts.nice, 'npx', 'vitest', 'run', 'property-tests/nemesis.test.ts', ...(opts.cluster ? ['-t', 'cluster'] : [])];
  const started = new Date();
  const loadStart = loadavg()[0];
  const stream = createWriteStream(logFile);
  stream.write(`# nice ${args.join(' ')}\n# seed ${seed} lane ${lane} batch ${batch} commit ${code.commit}${code.dirty ? ' (+uncommitted changes)' : ''}\n`);
  const child = spawn('nice', args, { env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  running.set(lane, child);
  child.stdout.pipe(stream, { end: false });
  child.stderr.pipe(stream, { end: false });
  log(`lane ${lane} batch ${batch}: seed ${seed}, pid ${child.pid}`);
  const exit = await new Promise((resolve) => child.once('close', (c, signal) => resolve(c ?? signal)));
  running.delete(lane);
  await new Promise((resolve) => stream.end(resolve));
  const text = readFileSync(logFile, 'utf8');
  const parsed = parseLog(text);
  const status = stopping && exit !== 0 && parsed.commands === 0 ? 'interrupted' : exit === 0 ? 'passed' : 'failed';
  const ended = new Date();
  const record = { lane, batch, seed, log: logFile, status, exit, started: started.toISOString(), ended: ended.toISOString(), wallSeconds: Math.round((ended - started) / 1000), loadStart: +loadStart.toFixed(2), loadEnd: +loadavg()[0].toFixed(2), commit: code.commit, dirty: code.dirty, ...parsed };
  appendFileSync(join(out, 'batches.jsonl'), `${JSON.stringify(record)}\n`);
  log(`lane ${lane} batch ${batch}: ${status} (exit ${exit}) ${parsed.runs} runs, ${parsed.commands} commands in ${record.wallSeconds} s; total ${commandsDone()} commands` + (parsed.failures.length ? `; FAILURES ${JSON.stringify(parsed.failures.map(({ counterexample: _c, ...f }) => f))}` : ''));
}

async function laneLoop(lane) {
  for (let batch = 1; ; batch++) {
    while (lane >= allowedLanes && wantMore()) await delay(5_000);
    if (!wantMore()) return;
    await runBatch(lane, batch);
  }
}

function killGroup(child, signal) {
  try {
    process.kill(-child.pid, signal);
  } catch (error) {
    if (error.code !== 'ESRCH') throw error;
  }
}

function stopAll(reason) {
  if (stopping) return;
  stopping = true;
  log(`stopping (${reason}): ${running.size} batches running, SIGTERM to their process groups`);
  for (const child of running.values()) killGroup(child, 'SIGTERM');
  const timer = setTimeout(() => {
    for (const child of running.values()) killGroup(child, 'SIGKILL');
  }, 20_000);
  timer.unref();
}

process.on('SIGINT', () => stopAll('SIGINT'));
process.on('SIGTERM', () => stopAll('SIGTERM'));
process.on('SIGUSR1', () => {
  draining = true;
  log(`draining (SIGUSR1): no new batch; ${running.size} running`);
});

// Load watch: one lane fewer while the 1-minute load stays above --max-load, one more when low.
let high = 0;
let low = 0;
const watch = setInterval(() => {
  const l = loadavg()[0];
  high = l > maxLoad ? high + 1 : 0;
  low = l < maxLoad * 0.75 ? low + 1 : 0;
  if (high >= 4 && allowedLanes > 1) {
    allowedLanes--;
    high = 0;
    log(`load ${l.toFixed(2)} above ${maxLoad} for 2 min: ${allowedLanes} lanes`);
  } else if (low >= 4 && allowedLanes < lanes) {
    allowedLanes++;
    low = 0;
    log(`load ${l.toFixed(2)} below ${maxLoad * 0.75} for 2 min: ${allowedLanes} lanes`);
  }
  if (Date.now() >= hardStop) stopAll('hard stop');
}, 30_000);

const hardTimer = hardStop === Infinity ? undefined : setTimeout(() => stopAll('hard stop'), hardStop - Date.now());

// Lanes start a few seconds apart (their servers' startups do not coincide).
const loops = [];
for (let lane = 0; lane < lanes; lane++) {
  loops.push(laneLoop(lane));
  await delay(3_000);
}
await Promise.all(loops);
clearInterval(watch);
if (hardTimer) clearTimeout(hardTimer);
const total = summarize(out);
writeFileSync(join(out, 'summary.json'), JSON.stringify(total, null, 2));
log(`done: ${total.batches} batches (${total.passed} passed, ${total.failed} failed, ${total.interrupted} interrupted), ${total.runs} runs, ${total.commands} commands in ${total.wallSeconds} s; faults ${JSON.stringify(total.faults)}`);
