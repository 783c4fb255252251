/**
 * The stored record format (see `docs/protocol.md`).
 *
 * - A live entry is a Redis string: the byte `v`, the 34-character stamp, then the codec's bytes.
 * - A deleted entry is a tombstone: a Redis hash `{ s: <stamp> }` with a TTL. Being a different
 *   Redis type, tombstones are skipped by `SCAN ... TYPE string` and read as missing by `MGET`,
 *   so they never show through `get`, `has`, iteration or `size()`.
 *
 * @module
 */
import { CorruptDataError } from './errors.js';
import { STAMP_LENGTH, isStamp, type Stamp } from './stamp.js';

/** First byte of a live record (`v`). */
export const RECORD_TAG = 0x76;
/** Bytes before the payload: tag and stamp. */
export const RECORD_HEADER_LENGTH = 1 + STAMP_LENGTH;

/** A stored value with its stamp, as read from Redis. */
export interface VersionedValue<V> {
  /** The value. */
  readonly value: V;
  /** The stamp of the write that stored it. */
  readonly stamp: Stamp;
}

/** First byte of the change that stores a tombstone (`t`), in the apply script's arguments. */
export const TOMBSTONE_TAG = 0x74;

/**
 * Writes at `at` the change the apply script stores: a live record (`v`, stamp, payload), or `t`
 * and the stamp for a tombstone (`payload` undefined). Returns the offset after it.
 */
export function writeChange(out: Buffer, at: number, stamp: Stamp, payload: Uint8Array | undefined): number {
  out[at] = payload === undefined ? TOMBSTONE_TAG : RECORD_TAG;
  out.write(stamp, at + 1, STAMP_LENGTH, 'latin1');
  if (payload === undefined) return at + RECORD_HEADER_LENGTH;
  out.set(payload, at + RECORD_HEADER_LENGTH);
  return at + RECORD_HEADER_LENGTH + payload.length;
}

/** Splits a live record into stamp and payload; throws {@link CorruptDataError} naming `key`. */
export function splitRecord(key: string, raw: Buffer): { stamp: Stamp; payload: Buffer } {
  if (raw.length < RECORD_HEADER_LENGTH || raw[0] !== RECORD_TAG) {
    throw new CorruptDataError(key, 'not a record written by redis-pubsub-dict');
  }
  const stamp = raw.toString('latin1', 1, RECORD_HEADER_LENGTH);
  if (!isStamp(stamp)) throw new CorruptDataError(key, 'the version stamp is malformed');
  return { stamp, payload: raw.subarray(RECORD_HEADER_LENGTH) };
}
