/**
 * Seeded random numbers and a Zipf key distribution, pre-generated so that no timed loop pays for
 * choosing its keys.
 */

/** mulberry32: a small seeded PRNG returning floats in [0, 1). */
export function prng(seed = 0x9e3779b9) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * `length` indexes in [0, n) drawn from a Zipf distribution with exponent `s` (rank 0 the most
 * frequent). The ranks are shuffled onto key indexes so hot keys are spread over the key space.
 */
export function zipfSequence(n, length, { s = 0.99, seed = 42 } = {}) {
  const cdf = new Float64Array(n);
  let total = 0;
  for (let k = 0; k < n; k++) {
    total += 1 / Math.pow(k + 1, s);
    cdf[k] = total;
  }
  for (let k = 0; k < n; k++) cdf[k] /= total;
  const random = prng(seed);
  // rank -> key index permutation
  const perm = new Int32Array(n);
  for (let k = 0; k < n; k++) perm[k] = k;
  for (let k = n - 1; k > 0; k--) {
    const j = Math.floor(random() * (k + 1));
    const t = perm[k];
    perm[k] = perm[j];
    perm[j] = t;
  }
  const out = new Int32Array(length);
  for (let i = 0; i < length; i++) {
    const u = random();
    let lo = 0;
    let hi = n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (cdf[mid] < u) lo = mid + 1;
      else hi = mid;
    }
    out[i] = perm[lo];
  }
  return out;
}

/** `length` booleans (as 0/1 bytes), 1 with probability `p`. */
export function bernoulliSequence(p, length, seed = 7) {
  const random = prng(seed);
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = random() < p ? 1 : 0;
  return out;
}

/** Share of the draws that fall on the `top` most frequent keys (for the report). */
export function topShare(sequence, top) {
  const counts = new Map();
  for (const k of sequence) counts.set(k, (counts.get(k) ?? 0) + 1);
  const sorted = [...counts.values()].sort((a, b) => b - a);
  let sum = 0;
  for (let i = 0; i < Math.min(top, sorted.length); i++) sum += sorted[i];
  return sum / sequence.length;
}
