/**
 * HMAC-SHA-256 (RFC 2104 over FIPS 180-4 SHA-256) for the frame tags of `signing.ts`, computed here
 * rather than with `node:crypto`'s `createHmac` for frames of up to 512 bytes (longer ones, where
 * OpenSSL's faster hashing pays for its set-up, still go to `createHmac`).
 *
 * Why: a tag is one HMAC over a frame of a few hundred bytes, and `createHmac` spends most of its
 * time outside the hash: a new `Hmac` object (a stream), and in OpenSSL 3 a digest fetch and three
 * digest contexts per key set-up. Measured inside the update-mode write path (the receiver's
 * verify too), that was a p50 of 10-13 µs per HMAC on a loaded 2-core host, against 2-3 µs for the
 * same HMAC here, where the key's inner and outer states (its padded blocks, hashed once) are kept,
 * so a tag costs the compressions of the message and one of the outer hash, and allocates nothing.
 *
 * SHA-256 uses additions, rotations and logical operations on 32-bit words only (no table indexed
 * by data, no branch on data), so its running time does not depend on the key or the message.
 * Checked against `node:crypto` by `test/unit/signing.test.ts` (random keys of 32-200 bytes,
 * messages of 0-300 bytes in random parts) and by the protocol vectors.
 *
 * @module
 */

/** The 64 round constants of SHA-256. */
const K = new Int32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
  0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
  0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
  0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);
/** The initial hash value of SHA-256. */
const IV = new Int32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
const BLOCK = 64;
/** The message schedule, shared: a compression runs to its end before any other starts. */
const W = new Int32Array(64);

/** One SHA-256 compression of the 64 bytes of `data` at `at` into `state`. */
function compress(state: Int32Array, data: Uint8Array, at: number): void {
  for (let i = 0; i < 16; i++, at += 4) W[i] = (data[at]! << 24) | (data[at + 1]! << 16) | (data[at + 2]! << 8) | data[at + 3]!;
  for (let i = 16; i < 64; i++) {
    const x = W[i - 15]!;
    const y = W[i - 2]!;
    const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
    const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
    W[i] = (W[i - 16]! + s0 + W[i - 7]! + s1) | 0;
  }
  let a = state[0]!;
  let b = state[1]!;
  let c = state[2]!;
  let d = state[3]!;
  let e = state[4]!;
  let f = state[5]!;
  let g = state[6]!;
  let h = state[7]!;
  for (let i = 0; i < 64; i++) {
    const s1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
    const t1 = (h + s1 + ((e & f) ^ (~e & g)) + K[i]! + W[i]!) | 0;
    const s0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
    const t2 = (s0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
    h = g;
    g = f;
    f = e;
    e = (d + t1) | 0;
    d = c;
    c = b;
    b = a;
    a = (t1 + t2) | 0;
  }
  state[0] = (state[0]! + a) | 0;
  state[1] = (state[1]! + b) | 0;
  state[2] = (state[2]! + c) | 0;
  state[3] = (state[3]! + d) | 0;
  state[4] = (state[4]! + e) | 0;
  state[5] = (state[5]! + f) | 0;
  state[6] = (state[6]! + g) | 0;
  state[7] = (state[7]! + h) | 0;
}

/** A SHA-256 computation fed in pieces (reusable: {@link Sha256.start} begins the next). */
class Sha256 {
  readonly state = new Int32Array(8);
  private readonly block = new Uint8Array(BLOCK);
  /** Bytes waiting in `block`. */
  private pending = 0;
  /** Bytes hashed so far, the 64-byte blocks hashed before `start`'s state included. */
  private length = 0;

  /** Starts from `state` (the IV, or the state after `length` bytes of whole blocks). */
  start(state: Int32Array, length: number): this {
    this.state.set(state);
    this.pending = 0;
    this.length = length;
    return this;
  }

  /** Hashes `data[from..to)`. */
  update(data: Uint8Array, from = 0, to = data.length): this {
    const { block } = this;
    this.length += to - from;
    let at = from;
    if (this.pending > 0) {
      while (this.pending < BLOCK && at < to) block[this.pending++] = data[at++]!;
      if (this.pending < BLOCK) return this;
      compress(this.state, block, 0);
      this.pending = 0;
    }
    for (; at + BLOCK <= to; at += BLOCK) compress(this.state, data, at);
    while (at < to) block[this.pending++] = data[at++]!;
    return this;
  }

  /** Pads, and writes the 32-byte digest at `out[at..at+32)`. */
  finish(out: Uint8Array, at: number): void {
    const { block, state } = this;
    const bits = this.length * 8;
    let n = this.pending;
    block[n++] = 0x80;
    if (n > BLOCK - 8) {
      block.fill(0, n);
      compress(state, block, 0);
      n = 0;
    }
    block.fill(0, n, BLOCK - 8);
    const high = Math.floor(bits / 0x100000000);
    const low = bits >>> 0;
    block[56] = high >>> 24;
    block[57] = high >>> 16;
    block[58] = high >>> 8;
    block[59] = high;
    block[60] = low >>> 24;
    block[61] = low >>> 16;
    block[62] = low >>> 8;
    block[63] = low;
    compress(state, block, 0);
    for (let j = 0; j < 8; j++) {
      const word = state[j]!;
      out[at++] = word >>> 24;
      out[at++] = word >>> 16;
      out[at++] = word >>> 8;
      out[at++] = word;
    }
  }
}

/**
 * HMAC-SHA-256 with one key: the states after the key's inner and outer padded blocks are computed
 * once, so each message costs its own compressions and one of the outer hash. Use it as
 * `start()`, `update(…)` any number of times, `finish(out, at)`; synchronous, one message at a time.
 */
export class HmacSha256 {
  private readonly innerStart = new Int32Array(8);
  private readonly outerStart = new Int32Array(8);
  private readonly hash = new Sha256();
  private readonly inner = new Uint8Array(32);

  constructor(secret: Uint8Array) {
    // A key longer than a block is hashed first (RFC 2104); a shorter one is padded with zeros.
    const key = new Uint8Array(BLOCK);
    if (secret.length > BLOCK) this.hash.start(IV, 0).update(secret).finish(key, 0);
    else key.set(secret);
    const pad = new Uint8Array(BLOCK);
    for (let i = 0; i < BLOCK; i++) pad[i] = key[i]! ^ 0x36;
    this.innerStart.set(IV);
    compress(this.innerStart, pad, 0);
    for (let i = 0; i < BLOCK; i++) pad[i] = key[i]! ^ 0x5c;
    this.outerStart.set(IV);
    compress(this.outerStart, pad, 0);
    key.fill(0);
    pad.fill(0);
  }

  /** Begins a message. */
  start(): this {
    this.hash.start(this.innerStart, BLOCK);
    return this;
  }

  /** Adds `data[from..to)` to the message. */
  update(data: Uint8Array, from = 0, to = data.length): this {
    this.hash.update(data, from, to);
    return this;
  }

  /** Ends the message: writes its 32-byte HMAC at `out[at..at+32)`. */
  finish(out: Uint8Array, at = 0): void {
    const { hash, inner } = this;
    hash.finish(inner, 0);
    hash.start(this.outerStart, BLOCK).update(inner).finish(out, at);
  }
}
