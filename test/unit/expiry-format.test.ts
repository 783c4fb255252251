/**
 * Expiry in the record and message formats (issue #15): an expiring record (`x`) and a message
 * entry with a fourth item round-trip; records and entries without expiry are unchanged; a hostile
 * expiry is refused as malformed.
 */
import { encode } from '@msgpack/msgpack';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CorruptDataError } from '../../src/errors.js';
import { MalformedMessageError, MessageDecoder, encodeEntry, encodeHeader, entryLength } from '../../src/protocol/messages.js';
import { changeHeaderLength, splitRecord, writeChange } from '../../src/protocol/record.js';
import { formatStamp } from '../../src/protocol/stamp.js';

const ORIGIN = '0123456789abcdef';
const STAMP = formatStamp(1_700_000_000_000, 3, ORIGIN);
const decoder = new MessageDecoder({ maxMessageBytes: 1 << 20, maxValueBytes: 4096, maxEntries: 100 });

function message(type: 'u' | 'd', entries: Buffer[]): Buffer {
  return Buffer.concat([encodeHeader(type, ORIGIN, 1, 0), Buffer.from([0x90 + entries.length]), ...entries]);
}

function record(payload: Uint8Array, expiresAt?: number): Buffer {
  const out = Buffer.alloc(changeHeaderLength(expiresAt) + payload.length);
  expect(writeChange(out, 0, STAMP, payload, expiresAt)).toBe(out.length);
  return out;
}

describe('expiring records', () => {
  it('keeps records without expiry byte-identical: v, stamp, payload', () => {
    const payload = Buffer.from([1, 2, 3]);
    expect(record(payload).equals(Buffer.concat([Buffer.from(`v${STAMP}`, 'latin1'), payload]))).toBe(true);
    expect(splitRecord('k', record(payload))).toEqual({ stamp: STAMP, payload, expiresAt: undefined });
  });

  it('round-trips any expiry time and payload', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), fc.uint8Array({ maxLength: 64 }), (expiresAt, payload) => {
        const raw = record(payload, expiresAt);
        expect(raw.toString('latin1', 0, 1)).toBe('x');
        const split = splitRecord('k', raw);
        expect(split.stamp).toBe(STAMP);
        expect(split.expiresAt).toBe(expiresAt);
        expect(Buffer.from(split.payload).equals(Buffer.from(payload))).toBe(true);
      }),
    );
  });

  it('refuses a malformed expiry or a truncated expiring record as corrupt', () => {
    const raw = record(Buffer.from([1]), 1_700_000_000_000);
    raw[40] = 0x41; // a letter among the digits
    expect(() => splitRecord('k', raw)).toThrow(CorruptDataError);
    expect(() => splitRecord('k', Buffer.from(`x${STAMP}123`, 'latin1'))).toThrow(CorruptDataError);
  });
});

describe('message entries with an expiry', () => {
  it('decodes [key, stamp, payload, expiresAt] and [key, stamp, nil, expiresAt]', () => {
    const payload = encode('v');
    const withValue = encodeEntry('a', STAMP, payload, 1_765_000_000_123);
    const withoutValue = encodeEntry('b', STAMP, undefined, 2 ** 40);
    expect(withValue.length).toBe(entryLength(1, STAMP, payload, 1_765_000_000_123));
    expect(withoutValue.length).toBe(entryLength(1, STAMP, undefined, 2 ** 40));
    const decoded = decoder.decode(message('u', [withValue, withoutValue, encodeEntry('c', STAMP)]));
    const [a, b, c] = decoded.entries;
    expect(a).toMatchObject({ key: 'a', stamp: STAMP, expiresAt: 1_765_000_000_123 });
    expect(Buffer.from(a!.payload!).equals(Buffer.from(payload))).toBe(true);
    expect(b).toEqual({ key: 'b', stamp: STAMP, payload: undefined, expiresAt: 2 ** 40 });
    expect(c).toEqual({ key: 'c', stamp: STAMP, payload: undefined });
  });

  it('round-trips any expiry time', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), fc.boolean(), (expiresAt, withValue) => {
        const payload = withValue ? encode(expiresAt) : undefined;
        const entry = encodeEntry('k', STAMP, payload, expiresAt);
        expect(entry.length).toBe(entryLength(1, STAMP, payload, expiresAt));
        expect(decoder.decode(message('u', [entry])).entries[0]!.expiresAt).toBe(expiresAt);
      }),
    );
  });

  it('refuses hostile expiry items: negative, fractional, a string, 5 items, an expiry on a delete, nil without expiry', () => {
    const entry = (items: unknown[]): Buffer => Buffer.from(encode(items));
    const hostile: [type: 'u' | 'd', items: unknown[]][] = [
      ['u', ['k', STAMP, null, -1]],
      ['u', ['k', STAMP, null, 1.5]],
      ['u', ['k', STAMP, null, '1765000000000']],
      ['u', ['k', STAMP, null, 1, 2]],
      ['d', ['k', STAMP, null, 1_765_000_000_000]],
      ['u', ['k', STAMP, null]],
    ];
    for (const [type, items] of hostile) {
      expect(() => decoder.decode(message(type, [entry(items)])), JSON.stringify(items)).toThrow(MalformedMessageError);
    }
  });
});
