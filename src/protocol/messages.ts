/**
 * The pub/sub wire format (see `docs/protocol.md`).
 *
 * A message is a MessagePack array `[1, type, origin, seq, group, entries]`:
 * - `1`: format version;
 * - `type`: `'u'` (values written, channel `<ns>/update`) or `'d'` (tombstones, channel `<ns>/delete`);
 * - `origin`: the writer's 16-hex-character id (the last part of its stamps);
 * - `seq`: the writer's sequence number for this `group`, 1, 2, 3, ... without gaps;
 * - `group`: the hash slot of the entries on a Cluster, 0 on a standalone server;
 * - `entries`: `[[key, stamp], ...]`, or `[[key, stamp, payload], ...]` when values are published
 *   (`payload` is the codec's bytes, MessagePack bin); a write with an expiry has a fourth item,
 *   `[key, stamp, payload | nil, expiresAt]` (ms since the epoch, writer's clock).
 *
 * With `signingKeys`, the format version is 2 and a 7th item follows the entries: the signature
 * tag (see `src/protocol/signing.ts`).
 *
 * The writer encodes the header and one fragment per entry; the Lua script that applies the batch
 * appends an array header and the fragments of the entries it actually wrote, then publishes.
 * The decoder trusts nothing: size limits, a strict schema, and any failure is a
 * {@link MalformedMessageError}, never a crash.
 *
 * @module
 */
import { Decoder } from '@msgpack/msgpack';
import { type FrameSigner, TAG_BYTES } from './signing.js';
import { isStamp, type Stamp, ZERO_STAMP } from './stamp.js';

/** Message type: values written (`'u'`) or tombstones written (`'d'`). */
export type MessageType = 'u' | 'd';

/** One entry of a message. */
export interface MessageEntry {
  /** Dictionary key. */
  readonly key: string;
  /** Stamp of the write. */
  readonly stamp: Stamp;
  /** Codec bytes of the new value, when values are published. */
  readonly payload: Uint8Array | undefined;
  /** Expiry time of the written value (ms since the epoch, writer's clock), when it has one. */
  readonly expiresAt?: number | undefined;
}

/** A decoded message. */
export interface Message {
  readonly type: MessageType;
  readonly origin: string;
  readonly seq: number;
  readonly group: number;
  readonly entries: readonly MessageEntry[];
  /**
   * True for a signed message whose batch was partly refused: it lists every entry of the batch,
   * applied or not, so a receiver only drops its cached entries of those keys.
   */
  readonly partial: boolean;
}

/** A message that does not follow the wire format. */
export class MalformedMessageError extends Error {
  /** Why the message was refused, e.g. `'signature does not verify'`. */
  readonly reason: string;

  constructor(reason: string, options?: { cause?: unknown }) {
    super(`Malformed message: ${reason}`, options);
    this.name = 'MalformedMessageError';
    this.reason = reason;
  }
}


/** Sequence number reserved for heartbeat probes (real messages start at 1). */
export const PROBE_SEQ = 2 ** 53 - 1;

/** First characters of a probe's only key (a nonce no dictionary key can equal: keys cannot hold NUL). */
export const PROBE_PREFIX = '\u0000probe:';

/**
 * A heartbeat probe for sharded pub/sub: an update message of `origin` with sequence number
 * {@link PROBE_SEQ}, in `group` (the slot of `channel`), whose only entry is `nonce` with the zero
 * stamp. With a `signer` it is signed like any message, so that peers with keys do not count it as
 * forged.
 */
export function encodeProbe(origin: string, group: number, nonce: string, channel: string, signer: FrameSigner | undefined): Buffer {
  const parts = [encodeHeader('u', origin, PROBE_SEQ, group, signer !== undefined), arrayHeader(1), encodeEntry(nonce, ZERO_STAMP)];
  if (signer !== undefined) parts.push(signer.tags(Buffer.from(channel, 'utf8'), parts).subarray(0, TAG_BYTES));
  return Buffer.concat(parts);
}

/**
 * True when `bytes` is a message of `origin` that is not a probe, recognised from the fixed layout
 * of the header ({@link encodeHeader}) without decoding: an array of 6 or 7, the origin as a
 * 16-byte fixstr at offset 5, and a sequence number that is not the probe's (a uint64, `0xcf`, at
 * offset 21). A writer drops its own messages so, the bulk of its traffic. Never true for another
 * origin; false for an own message whose sequence number needs a uint64 too (2^32 and above), which
 * the subscriber then decodes and drops.
 */
export function isOwnMessage(bytes: Buffer, origin: string): boolean {
  return (
    bytes.length > 21 &&
    (bytes[0] === 0x96 || bytes[0] === 0x97) &&
    bytes[4] === 0xb0 &&
    bytes[21] !== 0xcf &&
    bytes.toString('latin1', 5, 21) === origin
  );
}

/**
 * Encodes the message header, everything before the entries array: `[1, type, origin, seq, group, `
 * (an array of 6 whose sixth item the script appends), or with `signed`, `[2, type, origin, seq,
 * group, ` (an array of 7: the entries, then the signature tag, see `src/protocol/signing.ts`). Written by
 * hand, like {@link encodeEntry}.
 */
export function encodeHeader(type: MessageType, origin: string, seq: number, group: number, signed = false): Buffer {
  const out = Buffer.allocUnsafe(5 + 16 + 9 + 3);
  out[0] = signed ? 0x97 : 0x96;
  out[1] = signed ? 0x02 : 0x01;
  out[2] = 0xa1;
  out[3] = type === 'u' ? 0x75 : 0x64;
  out[4] = 0xb0;
  out.write(origin, 5, 16, 'latin1');
  const at = writeUint(out, writeUint(out, 21, seq), group);
  return out.subarray(0, at);
}

/**
 * Encodes one entry fragment, `[key, stamp]`, `[key, stamp, payload]` or, with an expiry,
 * `[key, stamp, payload | nil, expiresAt]`, written by hand: this runs once per key of every write,
 * and the generic encoder's copies showed in profiles.
 */
export function encodeEntry(key: string, stamp: Stamp, payload?: Uint8Array, expiresAt?: number): Buffer {
  const keyBytes = Buffer.byteLength(key, 'utf8');
  const out = Buffer.allocUnsafe(entryLength(keyBytes, stamp, payload, expiresAt));
  writeEntry(out, 0, key, keyBytes, stamp, payload, expiresAt);
  return out;
}

/** Bytes of the entry fragment of a key of `keyBytes` UTF-8 bytes (see {@link encodeEntry}). */
export function entryLength(keyBytes: number, stamp: Stamp, payload?: Uint8Array, expiresAt?: number): number {
  const keyHeader = keyBytes < 32 ? 1 : keyBytes < 0x100 ? 2 : keyBytes < 0x10000 ? 3 : 5;
  const payloadHeader = payload === undefined ? (expiresAt === undefined ? 0 : 1) : payload.length < 0x100 ? 2 : payload.length < 0x10000 ? 3 : 5;
  const expiry = expiresAt === undefined ? 0 : uintLength(expiresAt);
  return 1 + keyHeader + keyBytes + 2 + stamp.length + payloadHeader + (payload?.length ?? 0) + expiry;
}

/** Bytes of a non-negative integer in MessagePack's shortest form (see {@link writeUint}). */
function uintLength(n: number): number {
  return n < 0x80 ? 1 : n < 0x100 ? 2 : n < 0x10000 ? 3 : n < 0x100000000 ? 5 : 9;
}

/**
 * Writes the entry fragment of {@link encodeEntry} at `at` (room for {@link entryLength} bytes
 * must exist); returns the offset after it. Lets a batch write its entries into one buffer.
 */
export function writeEntry(out: Buffer, at: number, key: string, keyBytes: number, stamp: Stamp, payload?: Uint8Array, expiresAt?: number): number {
  const keyHeader = keyBytes < 32 ? 1 : keyBytes < 0x100 ? 2 : keyBytes < 0x10000 ? 3 : 5;
  out[at++] = expiresAt !== undefined ? 0x94 : payload === undefined ? 0x92 : 0x93;
  at = writeHeader(out, at, keyBytes, keyHeader, [0xa0, 0xd9, 0xda, 0xdb]);
  at += out.write(key, at, keyBytes, 'utf8');
  out[at++] = 0xd9;
  out[at++] = stamp.length;
  at += out.write(stamp, at, stamp.length, 'latin1');
  if (payload !== undefined) {
    const payloadHeader = payload.length < 0x100 ? 2 : payload.length < 0x10000 ? 3 : 5;
    at = writeHeader(out, at, payload.length, payloadHeader, [-1, 0xc4, 0xc5, 0xc6]);
    out.set(payload, at);
    at += payload.length;
  } else if (expiresAt !== undefined) {
    out[at++] = 0xc0;
  }
  if (expiresAt !== undefined) at = writeUint(out, at, expiresAt);
  return at;
}

/** The MessagePack array header of `count` items, as the apply script writes it (`arr` in the Lua). */
export function arrayHeader(count: number): Buffer {
  if (count < 16) return Buffer.from([0x90 | count]);
  if (count < 0x10000) return Buffer.from([0xdc, count >> 8, count & 0xff]);
  const out = Buffer.allocUnsafe(5);
  out[0] = 0xdd;
  out.writeUInt32BE(count, 1);
  return out;
}

/** Writes a non-negative integer in MessagePack's shortest form; returns the next offset. */
export function writeUint(out: Buffer, at: number, n: number): number {
  if (n < 0x80) {
    out[at] = n;
    return at + 1;
  }
  if (n < 0x100) {
    out[at] = 0xcc;
    out[at + 1] = n;
    return at + 2;
  }
  if (n < 0x10000) {
    out[at] = 0xcd;
    out.writeUInt16BE(n, at + 1);
    return at + 3;
  }
  if (n < 0x100000000) {
    out[at] = 0xce;
    out.writeUInt32BE(n, at + 1);
    return at + 5;
  }
  out[at] = 0xcf;
  out.writeBigUInt64BE(BigInt(n), at + 1);
  return at + 9;
}

/** Writes a MessagePack str/bin length header of `size` bytes (1: fix, 2: 8-bit, 3: 16-bit, 5: 32-bit). */
function writeHeader(out: Buffer, at: number, length: number, size: number, codes: readonly [number, number, number, number]): number {
  if (size === 1) {
    out[at] = codes[0] | length;
    return at + 1;
  }
  if (size === 2) {
    out[at] = codes[1];
    out[at + 1] = length;
    return at + 2;
  }
  if (size === 3) {
    out[at] = codes[2];
    out.writeUInt16BE(length, at + 1);
    return at + 3;
  }
  out[at] = codes[3];
  out.writeUInt32BE(length, at + 1);
  return at + 5;
}

/** Limits applied before and while decoding a message. */
export interface DecodeLimits {
  /** Largest message accepted, in bytes; larger ones are refused without decoding. */
  readonly maxMessageBytes: number;
  /** Largest value payload, in bytes. */
  readonly maxValueBytes: number;
  /** Most entries in one message. */
  readonly maxEntries: number;
}

/** A decoder bound to size limits; one per subscriber. */
export class MessageDecoder {
  private readonly decoder: Decoder;
  private readonly limits: DecodeLimits;

  constructor(limits: DecodeLimits) {
    this.limits = limits;
    this.decoder = new Decoder({
      maxStrLength: 65_536,
      maxBinLength: limits.maxValueBytes,
      maxArrayLength: Math.max(limits.maxEntries, 7),
      maxMapLength: 0,
      maxExtLength: 0,
    });
  }

  /** Decodes and validates a message; throws {@link MalformedMessageError}. */
  decode(bytes: Uint8Array): Message {
    if (bytes.length > this.limits.maxMessageBytes) {
      throw new MalformedMessageError(`${bytes.length} bytes is above the limit of ${this.limits.maxMessageBytes}`);
    }
    let raw: unknown;
    try {
      raw = this.decoder.decode(bytes);
    } catch (cause) {
      throw new MalformedMessageError('not valid MessagePack within the limits', { cause });
    }
    if (!Array.isArray(raw) || (raw.length !== 6 && raw.length !== 7)) throw new MalformedMessageError('expected an array of 6 or 7 items');
    const [version, type, origin, seq, group, entries, tag] = raw as unknown[];
    // Version 1: unsigned, 6 items. Version 2: signed, a 7th item holds the tag (checked by the
    // subscriber against its keys before decoding; a receiver without keys only reads its flag).
    if (version !== raw.length - 5) throw new MalformedMessageError('unknown format version');
    let partial = false;
    if (version === 2) {
      if (!(tag instanceof Uint8Array) || tag.length !== TAG_BYTES - 2 || (tag[0] !== 0x61 && tag[0] !== 0x70)) throw new MalformedMessageError('bad signature tag');
      partial = tag[0] === 0x70;
    }
    if (type !== 'u' && type !== 'd') throw new MalformedMessageError('unknown message type');
    if (typeof origin !== 'string' || !/^[0-9a-f]{16}$/.test(origin)) throw new MalformedMessageError('bad origin');
    if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 1) throw new MalformedMessageError('bad sequence number');
    if (typeof group !== 'number' || !Number.isInteger(group) || group < 0 || group > 16383) throw new MalformedMessageError('bad group');
    if (!Array.isArray(entries)) throw new MalformedMessageError('entries must be an array');
    const out: MessageEntry[] = [];
    for (const entry of entries as unknown[]) {
      if (!Array.isArray(entry) || entry.length < 2 || entry.length > 4) throw new MalformedMessageError('bad entry');
      const [key, stamp, rawPayload, expiresAt] = entry as unknown[];
      if (typeof key !== 'string' || key.length === 0) throw new MalformedMessageError('bad entry key');
      if (!isStamp(stamp)) throw new MalformedMessageError('bad entry stamp');
      // nil stands for "no value" only before an expiry time.
      const payload = rawPayload === null && entry.length === 4 ? undefined : rawPayload;
      if (payload !== undefined && !(payload instanceof Uint8Array)) throw new MalformedMessageError('bad entry payload');
      if (type === 'd' && (payload !== undefined || entry.length === 4)) throw new MalformedMessageError('a delete entry carries no value');
      if (entry.length === 4 && (typeof expiresAt !== 'number' || !Number.isSafeInteger(expiresAt) || expiresAt < 0)) {
        throw new MalformedMessageError('bad entry expiry time');
      }
      out.push(entry.length === 4 ? { key, stamp, payload, expiresAt: expiresAt as number } : { key, stamp, payload });
    }
    return { type, origin, seq, group, entries: out, partial };
  }
}
