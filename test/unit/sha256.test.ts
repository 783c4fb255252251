import { createHmac } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { HmacSha256 } from '../../src/protocol/sha256.js';

const hex = (s: string): Buffer => Buffer.from(s, 'hex');

/** HMAC of `parts` with a fresh or a reused instance, as the signer calls it. */
function mac(hmac: HmacSha256, parts: readonly Uint8Array[]): string {
  hmac.start();
  for (const part of parts) hmac.update(part);
  const out = Buffer.alloc(40, 0xee);
  hmac.finish(out, 3);
  // Exactly 32 bytes written at the offset, nothing around them.
  expect(out.subarray(0, 3).toString('hex') + out.subarray(35).toString('hex')).toBe('ee'.repeat(8));
  return out.subarray(3, 35).toString('hex');
}

describe('HmacSha256', () => {
  it('RFC 4231 test cases 1, 2, 6 and 7 (a key longer than a block is hashed first)', () => {
    const cases: [Buffer, string, string][] = [
      [Buffer.alloc(20, 0x0b), 'Hi There', 'b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7'],
      [Buffer.from('Jefe'), 'what do ya want for nothing?', '5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843'],
      [Buffer.alloc(131, 0xaa), 'Test Using Larger Than Block-Size Key - Hash Key First', '60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54'],
      [
        Buffer.alloc(131, 0xaa),
        'This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.',
        '9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2',
      ],
    ];
    for (const [key, data, expected] of cases) expect(mac(new HmacSha256(key), [Buffer.from(data, 'latin1')])).toBe(expected);
  });

  it('equals node:crypto for random keys and messages fed in random parts, on a reused instance', () => {
    // Lengths around the block edges (55, 56, 63, 64, 119, 120...) are where padding goes wrong.
    const bytes = (max: number) => fc.uint8Array({ minLength: 0, maxLength: max });
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 200 }), fc.array(bytes(150), { maxLength: 6 }), fc.array(bytes(70), { maxLength: 3 }), (key, parts, second) => {
        const hmac = new HmacSha256(key);
        for (const message of [parts, second, parts]) {
          const want = createHmac('sha256', key);
          for (const part of message) want.update(part);
          expect(mac(hmac, message)).toBe(want.digest('hex'));
        }
      }),
      { numRuns: 400 },
    );
  });

  it('every message length from 0 to 200 bytes, and a range of a larger buffer', () => {
    const key = hex('000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f');
    const hmac = new HmacSha256(key);
    const data = Buffer.from(Array.from({ length: 260 }, (_, i) => (i * 7 + 3) & 0xff));
    for (let n = 0; n <= 200; n++) {
      expect(mac(hmac, [data.subarray(0, n)])).toBe(createHmac('sha256', key).update(data.subarray(0, n)).digest('hex'));
    }
    const out = Buffer.alloc(32);
    hmac.start().update(data, 17, 250).finish(out);
    expect(out.toString('hex')).toBe(createHmac('sha256', key).update(data.subarray(17, 250)).digest('hex'));
  });
});
