/**
 * Message authentication for the pub/sub frames (opt-in `signingKeys`, see `docs/protocol.md`).
 *
 * A signed frame is the unsigned one with format version 2, an array of 7 items instead of 6, and a
 * 7th item, the tag: a MessagePack bin of 21 bytes `flag (1) | key id (4) | MAC (16)`.
 *
 * - `flag` is `'a'` when every entry of the frame was applied, `'p'` when some were refused (the
 *   apply script then publishes the frame whole, and receivers only drop those keys);
 * - `key id` is the first 4 bytes of HMAC-SHA-256(key, "redis-pubsub-dict key id"): it names the key
 *   without revealing it, so that a receiver tries one key, not all;
 * - `MAC` is one half of T = HMAC-SHA-256(key, domain | u32 channel length | channel | frame): its
 *   first 16 bytes for flag `'a'`, its last 16 bytes for flag `'p'`, where `frame` is every byte
 *   before the tag item: the header, the array header and every entry of the batch, as the writer
 *   built them.
 *
 * One HMAC gives the writer both tags (the script picks one) and the receiver the one to compare:
 * HMAC-SHA-256 is a pseudorandom function, so its two halves are independent 128-bit MACs, and
 * the partial tag of a frame (which the script publishes when a change is refused) tells nothing
 * about its 'all applied' tag. The channel name is inside the MAC, so that a frame captured on one
 * tenant's channel does not verify on another's.
 *
 * The HMAC of a frame of up to {@link NATIVE_FROM_BYTES} bytes (the common single-key write) is
 * computed by `sha256.ts` (each key's padded blocks hashed once): `node:crypto`'s `createHmac`
 * spends several times the hash itself on its per-call set-up. Longer frames (batches) go to
 * `createHmac`, whose hashing is faster per byte. Both compute the same HMAC.
 *
 * @module
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { InvalidArgumentError } from '../errors.js';
import { HmacSha256 } from './sha256.js';

/** Bytes of the tag item: bin8 header (2), flag (1), key id (4), MAC (16). */
export const TAG_BYTES = 23;
/** Shortest signing key, in bytes. */
const MIN_KEY_BYTES = 32;
/** Most keys in `signingKeys` (the current one and the previous ones still accepted). */
const MAX_KEYS = 8;
const MAC_BYTES = 16;
const DOMAIN = Buffer.from('redis-pubsub-dict frame v2\0', 'latin1');
const KEY_ID_LABEL = Buffer.from('redis-pubsub-dict key id', 'latin1');
const FLAG_ALL = 0x61; // 'a'
const FLAG_PARTIAL = 0x70; // 'p'

interface SigningKey {
  readonly secret: Buffer;
  readonly hmac: HmacSha256;
  readonly id: Buffer;
}

/** What {@link FrameSigner.verify} found: the frame's flag, or why it is refused. */
export type Verdict = { readonly partial: boolean } | { readonly refused: string };

/** Signs and verifies frames with a list of keys: the first signs, any verifies. */
export class FrameSigner {
  private readonly keys: readonly SigningKey[];

  private constructor(secrets: readonly Buffer[]) {
    this.keys = secrets.map((secret) => {
      const hmac = new HmacSha256(secret);
      const id = Buffer.allocUnsafe(32);
      hmac.start().update(KEY_ID_LABEL).finish(id);
      return { secret, hmac, id: id.subarray(0, 4) };
    });
  }

  /** Validates the `signingKeys` option; `undefined` when it is not set. */
  static fromOption(where: string, value: unknown): FrameSigner | undefined {
    if (value === undefined) return undefined;
    const expected = `an array of 1 to ${MAX_KEYS} keys (strings or Uint8Arrays of at least ${MIN_KEY_BYTES} bytes)`;
    if (!Array.isArray(value) || value.length === 0 || value.length > MAX_KEYS) {
      const got = Array.isArray(value) ? `an array of ${value.length}` : `a ${value === null ? 'null' : typeof value}`;
      throw new InvalidArgumentError('E_INVALID_OPTION', `${where}: expected \`signingKeys\` to be ${expected}, got ${got}`);
    }
    const secrets = (value as unknown[]).map((key) => {
      const bytes = typeof key === 'string' ? Buffer.from(key, 'utf8') : key instanceof Uint8Array ? Buffer.from(key) : undefined;
      if (bytes === undefined || bytes.length < MIN_KEY_BYTES) {
        // Never echo a key, even a short one: name its type and size only.
        const got = bytes === undefined ? `a ${key === null ? 'null' : typeof key}` : `a key of ${bytes.length} bytes`;
        throw new InvalidArgumentError('E_INVALID_OPTION', `${where}: expected \`signingKeys\` to be ${expected}, got ${got}`);
      }
      return bytes;
    });
    return new FrameSigner(secrets);
  }

  /**
   * The two tag items of a frame, `all` then `partial` ({@link TAG_BYTES} each), signed with the
   * current key over `channel` and the frame's parts (header, array header, entries).
   */
  tags(channel: Buffer, parts: readonly Uint8Array[]): Buffer {
    const key = this.keys[0]!;
    frameMac(key, channel, parts, writerT);
    const out = Buffer.allocUnsafe(2 * TAG_BYTES);
    writeTag(out, 0, FLAG_ALL, key, writerT.subarray(0, MAC_BYTES));
    writeTag(out, TAG_BYTES, FLAG_PARTIAL, key, writerT.subarray(MAC_BYTES));
    return out;
  }

  /** Checks the tag that ends `bytes`, received on `channel`. Never throws. */
  verify(channel: Buffer, bytes: Buffer): Verdict {
    if (bytes.length < 2 + TAG_BYTES || bytes[0] !== 0x97 || bytes[1] !== 0x02) {
      return { refused: bytes[0] === 0x96 ? 'unsigned message (signing keys are configured)' : 'not a signed message' };
    }
    const at = bytes.length - TAG_BYTES;
    if (bytes[at] !== 0xc4 || bytes[at + 1] !== TAG_BYTES - 2) return { refused: 'no signature tag' };
    const flag = bytes[at + 2]!;
    if (flag !== FLAG_ALL && flag !== FLAG_PARTIAL) return { refused: 'unknown signature flag' };
    const id = bytes.subarray(at + 3, at + 7);
    const mac = bytes.subarray(at + 7);
    let known = false;
    for (const key of this.keys) {
      if (!key.id.equals(id)) continue;
      known = true;
      frameMac(key, channel, [bytes.subarray(0, at)], readerT);
      if (timingSafeEqual(flag === FLAG_ALL ? readerFirst : readerSecond, mac)) return { partial: flag === FLAG_PARTIAL };
    }
    return { refused: known ? 'signature does not verify' : 'signed with an unknown key' };
  }
}

/** The writer's T (see the module's comment), written by {@link FrameSigner.tags}. */
const writerT = Buffer.alloc(32);
/** The receiver's T, and its halves, written by {@link FrameSigner.verify}. */
const readerT = Buffer.alloc(32);
const readerFirst = readerT.subarray(0, MAC_BYTES);
const readerSecond = readerT.subarray(MAC_BYTES);
/** u32be(channel length), rewritten by each {@link frameMac}. */
const channelLength = Buffer.alloc(4);

/**
 * Frames longer than this (bytes) are hashed by `node:crypto`. Measured on a 2-core host (CPU time
 * per HMAC, hot loop): 256 bytes 3.6 µs here vs 4.9 µs with `createHmac`, 512 bytes 5.2 vs 5.2,
 * 1 KiB 7.8 vs 4.5, 64 KiB 447 vs 49. Inside the write path both cost more than in a loop,
 * `createHmac` the more (p50 10-13 µs for a 250-byte frame, 6-7 µs here; docs/benchmarks.md).
 */
const NATIVE_FROM_BYTES = 512;

/** Writes T = HMAC-SHA-256(key, domain | u32be(channel length) | channel | parts…), 32 bytes, into `out`. */
function frameMac(key: SigningKey, channel: Buffer, parts: readonly Uint8Array[], out: Buffer): void {
  channelLength.writeUInt32BE(channel.length, 0);
  let length = 0;
  for (const part of parts) length += part.length;
  if (length > NATIVE_FROM_BYTES) {
    const hmac = createHmac('sha256', key.secret).update(DOMAIN).update(channelLength).update(channel);
    for (const part of parts) hmac.update(part);
    hmac.digest().copy(out);
    return;
  }
  const hmac = key.hmac.start().update(DOMAIN).update(channelLength).update(channel);
  for (const part of parts) hmac.update(part);
  hmac.finish(out);
}

function writeTag(out: Buffer, at: number, flag: number, key: SigningKey, mac: Buffer): void {
  out[at] = 0xc4;
  out[at + 1] = TAG_BYTES - 2;
  out[at + 2] = flag;
  key.id.copy(out, at + 3);
  mac.copy(out, at + 7);
}
