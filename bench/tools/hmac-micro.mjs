/**
 * CPU time per frame HMAC (HMAC-SHA-256 over domain | u32 channel length | channel | frame, the
 * frame in three parts, as `FrameSigner` feeds it), by frame size, for the ways to compute it:
 *
 * - `noble-copy1`: `@noble/hashes` keyed once (`hmac.create(sha256, key)`), copied per frame into a
 *   scratch instance with `_cloneInto`, the message copied into one buffer and hashed in one update;
 * - `noble-into`: the same, one update per part;
 * - `noble-clone`: the same with `clone()` (a new instance per frame);
 * - `noble-oneshot`: `hmac.create(sha256, key)` per frame (the key's pads hashed each time);
 * - `createHmac`: `node:crypto` per frame (what signing.ts does above 512 bytes, and did for all);
 * - `extra`: with HMAC_MICRO_EXTRA=<module path>, that module's `HmacSha256` class (constructor(key),
 *   start(), update(bytes), finish(out)), e.g. a build of the former src/protocol/sha256.ts.
 *
 * Variants take turns, in a rotating order, size by size, for `rounds` rounds; each turn is a hot
 * loop of about 20 ms of CPU. Prints, per size and variant, the median over the rounds of the CPU
 * time (user + system) per HMAC, and each round's figure. The noble variants run when
 * `@noble/hashes` (1.x) resolves from the repository (`npm install --no-save @noble/hashes@1.8.0`
 * where it is not a dependency):
 *
 *   node bench/tools/hmac-micro.mjs [rounds] [sizes, comma-separated]
 */
import { createHmac } from 'node:crypto';
import { Buffer } from 'node:buffer';

const rounds = Number(process.argv[2] ?? 3);
const sizes = (process.argv[3] ?? '64,180,264,400,512,768,1024,4096,65536').split(',').map(Number);
const key = Buffer.from('bench-signing-key-0123456789abcdef');
const DOMAIN = Buffer.from('redis-pubsub-dict frame v2\0', 'latin1');
const channel = Buffer.from('rpd:{bench-namespace}:updates');
const length = Buffer.alloc(4);
length.writeUInt32BE(channel.length);
const out = Buffer.alloc(32);

const noble = await Promise.all([import('@noble/hashes/hmac.js'), import('@noble/hashes/sha2.js')]).catch(() => undefined);
const variants = {};
if (noble) {
  const [{ hmac }, { sha256 }] = noble;
  const keyed = hmac.create(sha256, key);
  const work = keyed.clone();
  Object.assign(variants, nobleVariants(hmac, sha256, keyed, work));
}
variants.createHmac = (parts) => {
  const h = createHmac('sha256', key).update(DOMAIN).update(length).update(channel);
  for (const part of parts) h.update(part);
  h.digest().copy(out);
};

function nobleVariants(hmac, sha256, keyed, work) {
  const message = Buffer.alloc(1 << 17);
  return {
  'noble-copy1': (parts) => {
    let at = DOMAIN.copy(message, 0);
    at += length.copy(message, at);
    at += channel.copy(message, at);
    for (const part of parts) at += part.copy(message, at);
    keyed._cloneInto(work).update(message.subarray(0, at)).digestInto(out);
  },
  'noble-into': (parts) => {
    const h = keyed._cloneInto(work).update(DOMAIN).update(length).update(channel);
    for (const part of parts) h.update(part);
    h.digestInto(out);
  },
  'noble-clone': (parts) => {
    const h = keyed.clone().update(DOMAIN).update(length).update(channel);
    for (const part of parts) h.update(part);
    h.digestInto(out);
  },
  'noble-oneshot': (parts) => {
    const h = hmac.create(sha256, key).update(DOMAIN).update(length).update(channel);
    for (const part of parts) h.update(part);
    h.digestInto(out);
  },
  };
}
if (process.env.HMAC_MICRO_EXTRA) {
  const { HmacSha256 } = await import(process.env.HMAC_MICRO_EXTRA);
  const extra = new HmacSha256(key);
  variants.extra = (parts) => {
    extra.start().update(DOMAIN).update(length).update(channel);
    for (const part of parts) extra.update(part);
    extra.finish(out);
  };
}

/** The frame of `size` bytes as signing.ts gets it: header, array header, entry. */
function frame(size) {
  const bytes = Buffer.from(Array.from({ length: size }, (_, i) => (i * 31 + 7) & 0xff));
  const a = Math.min(size, 40);
  return [bytes.subarray(0, a), bytes.subarray(a, Math.min(size, a + 1)), bytes.subarray(Math.min(size, a + 1))];
}

/** Check every variant gives createHmac's bytes, then warm up. */
for (const size of sizes) {
  const parts = frame(size);
  variants.createHmac(parts);
  const want = out.toString('hex');
  for (const [name, run] of Object.entries(variants)) {
    out.fill(0);
    run(parts);
    if (out.toString('hex') !== want) throw new Error(`${name} differs from createHmac at ${size} bytes`);
    for (let i = 0; i < 2000; i++) run(parts);
  }
}

const cpuNs = () => {
  const { user, system } = process.cpuUsage();
  return (user + system) * 1000;
};
/** CPU ns per call of `run`, over about 20 ms. */
function measure(run, parts) {
  let n = 16;
  for (;;) {
    const start = cpuNs();
    for (let i = 0; i < n; i++) run(parts);
    const spent = cpuNs() - start;
    if (spent >= 20e6) return spent / n;
    n *= spent < 2e6 ? 8 : 2;
  }
}

const names = Object.keys(variants);
const results = Object.fromEntries(sizes.map((size) => [size, Object.fromEntries(names.map((name) => [name, []]))]));
for (let round = 0; round < rounds; round++) {
  for (const size of sizes) {
    const parts = frame(size);
    const turn = round % names.length;
    for (const name of [...names.slice(turn), ...names.slice(0, turn)]) results[size][name].push(measure(variants[name], parts));
  }
}
const median = (values) => [...values].sort((x, y) => x - y)[Math.floor(values.length / 2)];
const us = (ns) => (ns / 1000).toFixed(2);
console.log(`CPU µs per HMAC (median of ${rounds} rounds; each round in brackets)`);
console.log(['bytes'.padStart(6), ...names.map((name) => name.padStart(30))].join(''));
for (const size of sizes) {
  const cells = names.map((name) => `${us(median(results[size][name]))} [${results[size][name].map(us).join(' ')}]`.padStart(30));
  console.log([String(size).padStart(6), ...cells].join(''));
}
