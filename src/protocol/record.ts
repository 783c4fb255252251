/**
 * The stored record format (see `docs/protocol.md`).
 *
 * - A live entry is a Redis string: the byte `v`, the 34-character stamp, then the codec's bytes.
 * - A live entry with an expiry: the byte `x`, the stamp, the expiry time (ms since the epoch by the
 *   writer's clock) as 16 decimal digits, then the codec's bytes; Redis expires the key at that
 *   time (PEXPIREAT). Records without expiry stay exactly as they were.
 * - A deleted entry is a tombstone: a Redis hash `{ s: <stamp> }` with a TTL. Being a different
 *   Redis type, tombstones are skipped by `SCAN ... TYPE string` and read as missing by `MGET`,
 *   so they never show through `get`, `has`, iteration or `size()`.
 *
 * @module
 */
import { CorruptDataError } from '../errors.js';
import { STAMP_LENGTH, isStamp, type Stamp } from './stamp.js';

/** First byte of a live record (`v`). */
export const RECORD_TAG = 0x76;
/** Bytes before the payload: tag and stamp. */
const RECORD_HEADER_LENGTH = 1 + STAMP_LENGTH;
/** First byte of a live record with an expiry (`x`). */
export const EXPIRING_RECORD_TAG = 0x78;
/** Digits of the expiry time in an expiring record. */
const EXPIRY_DIGITS = 16;
/** Bytes before the payload of an expiring record: tag, stamp and expiry time. */
const EXPIRING_HEADER_LENGTH = RECORD_HEADER_LENGTH + EXPIRY_DIGITS;
/** Largest expiry time a record can carry (16 decimal digits, and a safe integer). */
export const MAX_EXPIRES_AT = Number.MAX_SAFE_INTEGER;

/** Header bytes of the change written by {@link writeChange}. */
export function changeHeaderLength(expiresAt: number | undefined): number {
  return expiresAt === undefined ? RECORD_HEADER_LENGTH : EXPIRING_HEADER_LENGTH;
}

/** A stored value with its stamp, as read from Redis. */
export interface VersionedValue<V> {
  /** The value. */
  readonly value: V;
  /** The stamp of the write that stored it. */
  readonly stamp: Stamp;
  /** Expiry time (ms since the epoch, writer's clock) when the write set one. */
  readonly expiresAt?: number | undefined;
}

/** First byte of the change that stores a tombstone (`t`), in the apply script's arguments. */
export const TOMBSTONE_TAG = 0x74;

/**
 * Writes at `at` the change the apply script stores: a live record (`v`, stamp, payload, or `x`,
 * stamp, expiry, payload when `expiresAt` is given), or `t` and the stamp for a tombstone
 * (`payload` undefined). Returns the offset after it.
 */
export function writeChange(out: Buffer, at: number, stamp: Stamp, payload: Uint8Array | undefined, expiresAt?: number): number {
  out[at] = payload === undefined ? TOMBSTONE_TAG : expiresAt === undefined ? RECORD_TAG : EXPIRING_RECORD_TAG;
  out.write(stamp, at + 1, STAMP_LENGTH, 'latin1');
  if (payload === undefined) return at + RECORD_HEADER_LENGTH;
  let header = RECORD_HEADER_LENGTH;
  if (expiresAt !== undefined) {
    out.write(String(expiresAt).padStart(EXPIRY_DIGITS, '0'), at + header, EXPIRY_DIGITS, 'latin1');
    header = EXPIRING_HEADER_LENGTH;
  }
  out.set(payload, at + header);
  return at + header + payload.length;
}

/** A stored record split into its parts. */
export interface SplitRecord {
  readonly stamp: Stamp;
  readonly payload: Buffer;
  /** Expiry time of an expiring record (`x`), else undefined. */
  readonly expiresAt: number | undefined;
}

/** Splits a live record into stamp, expiry and payload; throws {@link CorruptDataError} naming `key`. */
export function splitRecord(key: string, raw: Buffer): SplitRecord {
  const tag = raw[0];
  const header = tag === RECORD_TAG ? RECORD_HEADER_LENGTH : tag === EXPIRING_RECORD_TAG ? EXPIRING_HEADER_LENGTH : 0;
  if (header === 0 || raw.length < header) {
    throw new CorruptDataError(key, 'not a record written by redis-pubsub-dict');
  }
  const stamp = raw.toString('latin1', 1, RECORD_HEADER_LENGTH);
  if (!isStamp(stamp)) throw new CorruptDataError(key, 'the version stamp is malformed');
  let expiresAt: number | undefined;
  if (tag === EXPIRING_RECORD_TAG) {
    const digits = raw.toString('latin1', RECORD_HEADER_LENGTH, EXPIRING_HEADER_LENGTH);
    if (!/^[0-9]{16}$/.test(digits)) throw new CorruptDataError(key, 'the expiry time is malformed');
    expiresAt = Number(digits);
  }
  return { stamp, payload: raw.subarray(header), expiresAt };
}
