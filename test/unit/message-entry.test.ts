import { encode } from '@msgpack/msgpack';
import { describe, expect, it } from 'vitest';
import { encodeEntry } from '../../src/messages.js';

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
