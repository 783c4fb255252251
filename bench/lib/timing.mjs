/**
 * Timing helpers: every measurement uses process.hrtime.bigint(), warms up first, and is bounded
 * both by a duration and by an operation count.
 */

import { setImmediate, setTimeout } from 'node:timers';

/** Monotonic clock in nanoseconds (bigint). */
export const now = () => process.hrtime.bigint();

/** Elapsed nanoseconds since `start`, as a number. */
export const since = (start) => Number(process.hrtime.bigint() - start);

/** Resolves on the next turn of the event loop (lets socket I/O run). */
export const tick = () => new Promise((resolve) => setImmediate(resolve));

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Percentile (0..100) of a sorted numeric array. */
export function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index];
}

/** p50/p99/mean (in microseconds) of nanosecond samples. */
export function summarize(samplesNs) {
  const sorted = Float64Array.from(samplesNs).sort();
  let sum = 0;
  for (const v of sorted) sum += v;
  return {
    samples: sorted.length,
    meanUs: sorted.length ? sum / sorted.length / 1000 : NaN,
    p50Us: percentile(sorted, 50) / 1000,
    p99Us: percentile(sorted, 99) / 1000,
  };
}

/**
 * Runs `op(i)` one at a time (each awaited) for `warmupMs`, then measures for `durationMs` or
 * `maxOps` operations, whichever comes first.
 *
 * With `latency: true` every operation is timed on its own (p50/p99 reported); use it for
 * operations that cost microseconds. Without it the clock is read once per `batch` operations so
 * that reading the clock (~40 ns) does not distort sub-microsecond operations.
 *
 * `after` (optional, awaited) runs once after the timed loop and its time is included in the total
 * (used for a write-back cache's final flush).
 */
export async function runSequential(op, { warmupMs = 300, durationMs = 1500, maxOps = 5_000_000, latency = false, batch = 256, after } = {}) {
  // Warm-up: same loop, results discarded.
  let i = 0;
  const warmEnd = now() + BigInt(Math.round(warmupMs * 1e6));
  while (now() < warmEnd) {
    for (let j = 0; j < batch; j++) await op(i++);
  }
  const limitNs = durationMs * 1e6;
  const samples = latency ? new Float64Array(Math.min(maxOps, 2_000_000)) : undefined;
  let ops = 0;
  const start = now();
  if (latency) {
    const cap = Math.min(maxOps, samples.length);
    while (ops < cap) {
      const t = now();
      await op(i++);
      const end = now();
      samples[ops++] = Number(end - t);
      if (Number(end - start) >= limitNs) break;
    }
  } else {
    while (ops < maxOps) {
      for (let j = 0; j < batch; j++) await op(i++);
      ops += batch;
      if (since(start) >= limitNs) break;
    }
  }
  let elapsedNs = since(start);
  let afterNs = 0;
  if (after) {
    const t = now();
    await after();
    afterNs = since(t);
    elapsedNs += afterNs;
  }
  const result = { ops, elapsedNs, opsPerSec: (ops / elapsedNs) * 1e9, nsPerOp: elapsedNs / ops, afterNs };
  if (samples) Object.assign(result, summarize(samples.subarray(0, ops)));
  return result;
}

/**
 * Keeps `inFlight` operations outstanding (each worker awaits its own op and starts the next) for
 * `warmupMs`, then counts completions for `durationMs`. Throughput only.
 */
export async function runConcurrent(op, { inFlight = 100, warmupMs = 300, durationMs = 1500, maxOps = 10_000_000 } = {}) {
  let i = 0;
  let stop = false;
  let counting = false;
  let ops = 0;
  const worker = async () => {
    while (!stop) {
      await op(i++);
      if (counting) ops++;
    }
  };
  const workers = Array.from({ length: inFlight }, worker);
  await sleep(warmupMs);
  counting = true;
  ops = 0;
  const start = now();
  const limitNs = durationMs * 1e6;
  while (since(start) < limitNs && ops < maxOps) await sleep(10);
  const counted = ops;
  const elapsedNs = since(start);
  stop = true;
  await Promise.all(workers);
  return { ops: counted, elapsedNs, opsPerSec: (counted / elapsedNs) * 1e9, nsPerOp: elapsedNs / counted, inFlight };
}

/** Runs `fn(i)` for i in [0, n) with at most `limit` promises outstanding. */
export async function pool(n, limit, fn) {
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      await fn(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, n) }, worker));
}

/** Median of numbers. */
export function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}
