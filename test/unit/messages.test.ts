import { Encoder, encode } from '@msgpack/msgpack';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import {
  type DecodeLimits,
  MalformedMessageError,
  type MessageType,
  MessageDecoder,
  PROBE_SEQ,
  encodeEntry,
  encodeHeader,
  encodeProbe,
  isOwnMessage,
} from '../../src/protocol/messages.js';
import { formatStamp } from '../../src/protocol/stamp.js';

const ORIGIN = '0123456789abcdef';
const LIMITS: DecodeLimits = { maxMessageBytes: 1 << 20, maxValueBytes: 4096, maxEntries: 1000 };
const STAMP_A = formatStamp(1_700_000_000_000, 0, ORIGIN);
const STAMP_B = formatStamp(1_700_000_000_001, 5, ORIGIN);

/** The array header the apply script writes (`arr()` in src/store/scripts.ts), ported byte for byte. */
function luaArrayHeader(count: number): Buffer {
  if (count < 16) return Buffer.from([144 + count]);
  if (count < 65536) return Buffer.from([220, Math.floor(count / 256), count % 256]);
  return Buffer.from([
    221,
    Math.floor(count / 16777216) % 256,
    Math.floor(count / 65536) % 256,
    Math.floor(count / 256) % 256,
    count % 256,
  ]);
}

interface TestEntry {
  key: string;
  stamp: string;
  payload?: Uint8Array;
}

/** Assembles a message the way the apply script does: header, array header, fragments. */
function assemble(type: MessageType, seq: number, group: number, entries: readonly TestEntry[]): Buffer {
  return Buffer.concat([
    encodeHeader(type, ORIGIN, seq, group),
    luaArrayHeader(entries.length),
    ...entries.map((e) => encodeEntry(e.key, e.stamp, e.payload)),
  ]);
}

function expectMalformed(decoder: MessageDecoder, bytes: Uint8Array, reason?: RegExp): void {
  let caught: unknown;
  try {
    decoder.decode(bytes);
  } catch (error) {
    caught = error;
  }
  expect(caught, 'the message should have been refused').toBeInstanceOf(MalformedMessageError);
  expect((caught as Error).name).toBe('MalformedMessageError');
  if (reason) expect((caught as Error).message).toMatch(reason);
}

/** A valid message, as the library assembles it, used as the base for the hostile variants. */
const valid = assemble('u', 7, 42, [
  { key: 'alpha', stamp: STAMP_A, payload: encode({ n: 1 }) },
  { key: 'beta', stamp: STAMP_B },
]);

const protoNamesBefore = Object.getOwnPropertyNames(Object.prototype).sort();

afterAll(() => {
  expect(Object.getOwnPropertyNames(Object.prototype).sort()).toEqual(protoNamesBefore);
  expect(({} as Record<string, unknown>)['polluted']).toBeUndefined();
});

describe('message assembly, as done by the apply script', () => {
  const decoder = new MessageDecoder(LIMITS);

  it('decodes an update message with values', () => {
    const payload = encode({ name: 'ключ', list: [1, 2] });
    const bytes = assemble('u', 3, 12_345, [
      { key: 'user/1', stamp: STAMP_A, payload },
      { key: '🔑 {tag} *', stamp: STAMP_B, payload: new Uint8Array(0) },
    ]);
    const message = decoder.decode(bytes);
    expect(message).toMatchObject({ type: 'u', origin: ORIGIN, seq: 3, group: 12_345 });
    expect(message.entries).toHaveLength(2);
    expect(message.entries[0]!.key).toBe('user/1');
    expect(message.entries[0]!.stamp).toBe(STAMP_A);
    expect(Buffer.from(message.entries[0]!.payload!).equals(Buffer.from(payload))).toBe(true);
    expect(message.entries[1]!.key).toBe('🔑 {tag} *');
    expect(message.entries[1]!.payload).toBeInstanceOf(Uint8Array);
    expect(message.entries[1]!.payload).toHaveLength(0);
  });

  it('decodes an update message without values and a delete message', () => {
    const update = decoder.decode(assemble('u', 1, 0, [{ key: 'a', stamp: STAMP_A }]));
    expect(update.entries).toEqual([{ key: 'a', stamp: STAMP_A, payload: undefined }]);
    const del = decoder.decode(assemble('d', 2, 0, [{ key: 'a', stamp: STAMP_B }, { key: 'b', stamp: STAMP_B }]));
    expect(del).toEqual({
      type: 'd',
      origin: ORIGIN,
      seq: 2,
      group: 0,
      entries: [
        { key: 'a', stamp: STAMP_B, payload: undefined },
        { key: 'b', stamp: STAMP_B, payload: undefined },
      ],
      partial: false,
    });
  });

  it('decodes a message with no entries (published to keep sequence numbers contiguous)', () => {
    expect(decoder.decode(assemble('d', 9, 16_383, []))).toEqual({ type: 'd', origin: ORIGIN, seq: 9, group: 16_383, entries: [], partial: false });
  });

  it.each([1, 15, 16, 17, 255, 256, 1000])('uses the right array header for %d entries', (count) => {
    const entries = Array.from({ length: count }, (_, i) => ({ key: `k${i}`, stamp: STAMP_A }));
    const message = decoder.decode(assemble('u', 1, 0, entries));
    expect(message.entries.map((e) => e.key)).toEqual(entries.map((e) => e.key));
  });

  it('uses a 32-bit array header from 65536 entries', () => {
    const count = 70_000;
    const big = new MessageDecoder({ maxMessageBytes: 16 << 20, maxValueBytes: 16, maxEntries: count });
    const bytes = assemble('d', 1, 0, Array.from({ length: count }, (_, i) => ({ key: `k${i}`, stamp: STAMP_A })));
    expect(bytes[encodeHeader('d', ORIGIN, 1, 0).length]).toBe(0xdd);
    const message = big.decode(bytes);
    expect(message.entries).toHaveLength(count);
    expect(message.entries[count - 1]!.key).toBe(`k${count - 1}`);
  });

  it('round-trips any header and entries', () => {
    const entryArb = fc.record(
      {
        key: fc.string({ minLength: 1, maxLength: 40, unit: 'grapheme' }),
        stamp: fc.tuple(fc.integer({ min: 0, max: 2 ** 48 - 1 }), fc.integer({ min: 0, max: 0xffffff })).map(([ms, c]) => formatStamp(ms, c, ORIGIN)),
        payload: fc.uint8Array({ maxLength: 300 }),
      },
      { requiredKeys: ['key', 'stamp'] },
    );
    fc.assert(
      fc.property(
        fc.constantFrom<MessageType>('u', 'd'),
        fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
        fc.integer({ min: 0, max: 16383 }),
        fc.array(entryArb, { maxLength: 40 }),
        (type, seq, group, entries) => {
          const usable: TestEntry[] = type === 'd' ? entries.map(({ key, stamp }) => ({ key, stamp })) : entries;
          const message = decoder.decode(assemble(type, seq, group, usable));
          expect(message).toMatchObject({ type, origin: ORIGIN, seq, group });
          expect(message.entries.map((e) => [e.key, e.stamp])).toEqual(usable.map((e) => [e.key, e.stamp]));
          message.entries.forEach((e, i) => {
            const sent = usable[i]!.payload;
            if (sent === undefined) expect(e.payload).toBeUndefined();
            else expect(Buffer.from(e.payload!).equals(Buffer.from(sent))).toBe(true);
          });
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('MessageDecoder: hostile and malformed input', () => {
  const decoder = new MessageDecoder(LIMITS);
  const header = (fields: unknown[]): unknown[] => [1, 'u', ORIGIN, 1, 0, ...fields];

  it('accepts the base message used by the hostile variants', () => {
    expect(decoder.decode(valid).entries).toHaveLength(2);
  });

  it('refuses random bytes with a MalformedMessageError, never another error', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
        try {
          const message = decoder.decode(bytes);
          // Random bytes almost never form a valid message; if they do, it must be well-formed.
          expect(['u', 'd']).toContain(message.type);
        } catch (error) {
          expect(error).toBeInstanceOf(MalformedMessageError);
        }
      }),
      { numRuns: 3000 },
    );
  });

  it('refuses a valid message with random bytes changed, or decodes it into a well-formed message', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }), (edits) => {
        const bytes = Buffer.from(valid);
        for (const [at, value] of edits) bytes[at % bytes.length] = value;
        try {
          const message = decoder.decode(bytes);
          expect(['u', 'd']).toContain(message.type);
          expect(message.origin).toMatch(/^[0-9a-f]{16}$/);
          for (const e of message.entries) {
            expect(typeof e.key).toBe('string');
            expect(e.stamp).toMatch(/^[0-9a-f]{34}$/);
          }
        } catch (error) {
          expect(error).toBeInstanceOf(MalformedMessageError);
        }
      }),
      { numRuns: 3000 },
    );
  });

  it('refuses every truncation of a valid message', () => {
    for (let length = 0; length < valid.length; length++) {
      expectMalformed(decoder, valid.subarray(0, length));
    }
  });

  it('refuses trailing bytes', () => {
    expectMalformed(decoder, Buffer.concat([valid, Buffer.from([0xc0])]), /MessagePack/);
  });

  it('refuses a message above maxMessageBytes without decoding it', () => {
    const small = new MessageDecoder({ ...LIMITS, maxMessageBytes: valid.length - 1 });
    expectMalformed(small, valid, /above the limit/);
    expect(new MessageDecoder({ ...LIMITS, maxMessageBytes: valid.length }).decode(valid).entries).toHaveLength(2);
    expectMalformed(decoder, new Uint8Array(LIMITS.maxMessageBytes + 1), /above the limit/);
  });

  it('refuses a value above maxValueBytes', () => {
    const big = assemble('u', 1, 0, [{ key: 'k', stamp: STAMP_A, payload: new Uint8Array(LIMITS.maxValueBytes + 1) }]);
    expectMalformed(decoder, big);
    const fits = assemble('u', 1, 0, [{ key: 'k', stamp: STAMP_A, payload: new Uint8Array(LIMITS.maxValueBytes) }]);
    expect(decoder.decode(fits).entries).toHaveLength(1);
  });

  it('refuses more than maxEntries entries', () => {
    const limited = new MessageDecoder({ ...LIMITS, maxEntries: 10 });
    const entries = (n: number): TestEntry[] => Array.from({ length: n }, (_, i) => ({ key: `k${i}`, stamp: STAMP_A }));
    expect(limited.decode(assemble('d', 1, 0, entries(10))).entries).toHaveLength(10);
    expectMalformed(limited, assemble('d', 1, 0, entries(11)));
  });

  it('refuses huge declared lengths without allocating them', () => {
    // str32 / bin32 / array32 headers claiming 4 GiB.
    expectMalformed(decoder, Buffer.from([0x96, 0x01, 0xdb, 0xff, 0xff, 0xff, 0xff]));
    expectMalformed(decoder, Buffer.from([0xdd, 0xff, 0xff, 0xff, 0xff]));
    const entryStart = Buffer.concat([encodeHeader('u', ORIGIN, 1, 0), Buffer.from([0x91, 0x93]), encode('k'), encode(STAMP_A)]);
    expectMalformed(decoder, Buffer.concat([entryStart, Buffer.from([0xc6, 0xff, 0xff, 0xff, 0xff])]));
  });

  it.each([
    ['not an array', 'hello'],
    ['nil', null],
    ['a number', 1],
    ['an array of 5 items', [1, 'u', ORIGIN, 1, 0]],
    ['an array of 7 items', [1, 'u', ORIGIN, 1, 0, [], 'extra']],
    ['version 2', [2, 'u', ORIGIN, 1, 0, []]],
    ['version 0', [0, 'u', ORIGIN, 1, 0, []]],
    ['version as a string', ['1', 'u', ORIGIN, 1, 0, []]],
    ['an unknown type', [1, 'x', ORIGIN, 1, 0, []]],
    ['an upper-case type', [1, 'U', ORIGIN, 1, 0, []]],
    ['a numeric type', [1, 117, ORIGIN, 1, 0, []]],
    ['an upper-case origin', [1, 'u', ORIGIN.toUpperCase(), 1, 0, []]],
    ['a short origin', [1, 'u', 'abc', 1, 0, []]],
    ['a binary origin', [1, 'u', Buffer.from(ORIGIN), 1, 0, []]],
    ['sequence number 0', [1, 'u', ORIGIN, 0, 0, []]],
    ['a negative sequence number', [1, 'u', ORIGIN, -1, 0, []]],
    ['a fractional sequence number', [1, 'u', ORIGIN, 1.5, 0, []]],
    ['a sequence number as a string', [1, 'u', ORIGIN, '1', 0, []]],
    ['a sequence number above 2^53', [1, 'u', ORIGIN, 2 ** 60, 0, []]],
    ['a negative group', [1, 'u', ORIGIN, 1, -1, []]],
    ['group 16384', [1, 'u', ORIGIN, 1, 16384, []]],
    ['a fractional group', [1, 'u', ORIGIN, 1, 0.5, []]],
    ['a nil group', [1, 'u', ORIGIN, 1, null, []]],
    ['entries as a string', [1, 'u', ORIGIN, 1, 0, 'entries']],
    ['entries as nil', [1, 'u', ORIGIN, 1, 0, null]],
    ['an entry that is not an array', header([['k']])],
    ['an entry of one item', header([[['k']]])],
    ['an entry of four items', header([[['k', STAMP_A, new Uint8Array(1), 'x']]])],
    ['an empty key', header([[['', STAMP_A]]])],
    ['a numeric key', header([[[1, STAMP_A]]])],
    ['a binary key', header([[[Buffer.from('k'), STAMP_A]]])],
    ['a short stamp', header([[['k', STAMP_A.slice(1)]]])],
    ['an upper-case stamp', header([[['k', STAMP_A.toUpperCase()]]])],
    ['a numeric stamp', header([[['k', 12345]]])],
    ['a string payload', header([[['k', STAMP_A, 'value']]])],
    ['a numeric payload', header([[['k', STAMP_A, 1]]])],
    ['a nil payload', header([[['k', STAMP_A, null]]])],
    ['a delete entry with a value', [1, 'd', ORIGIN, 1, 0, [['k', STAMP_A, new Uint8Array(1)]]]],
  ])('refuses a message with %s', (_name, value) => {
    expectMalformed(decoder, encode(value));
  });

  it('refuses maps anywhere: as the message, as an entry, as the entries', () => {
    expectMalformed(decoder, encode({ version: 1, type: 'u' }));
    expectMalformed(decoder, encode({}));
    expectMalformed(decoder, encode([1, 'u', ORIGIN, 1, 0, { 0: ['k', STAMP_A] }]));
    expectMalformed(decoder, encode([1, 'u', ORIGIN, 1, 0, [{ key: 'k', stamp: STAMP_A }]]));
    expectMalformed(decoder, encode([1, 'u', ORIGIN, 1, 0, [{}]]));
  });

  it('refuses `__proto__` map keys without polluting Object.prototype', () => {
    const hostile = [
      JSON.parse('{"__proto__": {"polluted": true}}') as unknown,
      [1, 'u', ORIGIN, 1, 0, [JSON.parse('{"__proto__": {"polluted": true}}') as unknown]],
      [1, 'u', ORIGIN, 1, 0, [['k', STAMP_A, JSON.parse('{"__proto__": {"polluted": true}}') as unknown]]],
      JSON.parse('{"constructor": {"prototype": {"polluted": true}}}') as unknown,
    ];
    for (const value of hostile) expectMalformed(decoder, new Encoder().encode(value));
    expect(({} as Record<string, unknown>)['polluted']).toBeUndefined();
    expect(Object.prototype).not.toHaveProperty('polluted');
  });

  it('refuses extension types (timestamps, unknown ext) in place of a payload', () => {
    expectMalformed(decoder, encode([1, 'u', ORIGIN, 1, 0, [['k', STAMP_A, new Date(0)]]]));
    const ext = Buffer.from([0xd4, 0x05, 0x00]); // fixext1, type 5
    const bytes = Buffer.concat([encodeHeader('u', ORIGIN, 1, 0), Buffer.from([0x91, 0x93]), encode('k'), encode(STAMP_A), ext]);
    expectMalformed(decoder, bytes);
  });

  it('keeps working after refusing malformed messages', () => {
    for (const bad of [Buffer.from([0xc1]), valid.subarray(0, 10), Buffer.from([0x96, 0x01])]) expectMalformed(decoder, bad);
    expect(decoder.decode(valid).entries.map((e) => e.key)).toEqual(['alpha', 'beta']);
  });
});

describe('isOwnMessage (the subscriber drops its own messages without decoding them)', () => {
  const decoder = new MessageDecoder(LIMITS);
  const frame = (type: MessageType, origin: string, seq: number, signed: boolean): Buffer =>
    Buffer.concat([encodeHeader(type, origin, seq, 7, signed), luaArrayHeader(1), encodeEntry('k', STAMP_A), ...(signed ? [Buffer.alloc(23)] : [])]);

  it('never claims a message of another origin; recognises every own message below seq 2^32 (above it a uint64, as the probe: decoded, then dropped)', () => {
    fc.assert(
      fc.property(fc.constantFrom<MessageType>('u', 'd'), fc.boolean(), fc.boolean(), fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER - 1 }), (type, signed, mine, seq) => {
        const origin = mine ? ORIGIN : 'fedcba9876543210';
        const bytes = frame(type, origin, seq, signed);
        if (!signed) expect(decoder.decode(bytes)).toMatchObject({ origin, seq });
        expect(isOwnMessage(bytes, ORIGIN)).toBe(mine && seq < 2 ** 32);
      }),
    );
  });

  it('does not take a probe (which must be decoded to be counted) for an own message', () => {
    const probe = encodeProbe(ORIGIN, 7, '\u0000probe:abc@n', 'ns/update{x}', undefined);
    expect(decoder.decode(probe)).toMatchObject({ origin: ORIGIN, seq: PROBE_SEQ, group: 7 });
    expect(isOwnMessage(probe, ORIGIN)).toBe(false);
  });

  it('refuses frames too short to hold a header', () => {
    expect(isOwnMessage(frame('u', ORIGIN, 1, false).subarray(0, 21), ORIGIN)).toBe(false);
  });
});
