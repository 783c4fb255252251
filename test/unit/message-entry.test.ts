import { encode } from '@msgpack/msgpack';
import { describe, expect, it } from 'vitest';
import { encodeEntry, encodeHeader } from '../../src/protocol/messages.js';

// encodeEntry writes MessagePack by hand for speed; it must produce exactly the generic encoder's bytes.
describe('encodeEntry', () => {
  const stamp = '0123456789abcdef0123456789abcdef01';
  const keys = ['a', 'x'.repeat(31), 'y'.repeat(32), 'é'.repeat(200), '🔑/{*}', 'z'.repeat(70_000)];
  const payloads = [undefined, new Uint8Array(0), new Uint8Array(3).fill(7), new Uint8Array(300).fill(1), new Uint8Array(70_000).fill(2)];
  for (const key of keys) {
    for (const payload of payloads) {
      it(`matches @msgpack/msgpack for a ${key.length}-char key and a ${payload?.length ?? 'no'}-byte payload`, () => {
        const expected = Buffer.from(encode(payload === undefined ? [key, stamp] : [key, stamp, payload]));
        expect(encodeEntry(key, stamp, payload).equals(expected)).toBe(true);
      });
    }
  }
});

// encodeHeader is hand-written too: the header plus an empty entries array must equal the generic encoding.
describe('encodeHeader', () => {
  const origin = '0123456789abcdef';
  for (const seq of [1, 127, 128, 255, 256, 65_535, 65_536, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1]) {
    for (const group of [0, 127, 128, 255, 256, 16_383]) {
      it(`matches @msgpack/msgpack for seq ${seq} and group ${group}`, () => {
        for (const type of ['u', 'd'] as const) {
          const expected = Buffer.from(encode([1, type, origin, seq, group, []]));
          const actual = Buffer.concat([encodeHeader(type, origin, seq, group), Buffer.from([0x90])]);
          expect(actual.equals(expected)).toBe(true);
        }
      });
    }
  }
});
