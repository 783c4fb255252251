import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { arrayHeader, encodeEntry, encodeHeader, MessageDecoder } from '../../src/protocol/messages.js';
import { FrameSigner, TAG_BYTES } from '../../src/protocol/signing.js';

const ORIGIN = '0123456789abcdef';
const STAMP = `${'0'.repeat(12)}000000${ORIGIN}`;
const KEY_A = 'a'.repeat(32);
const KEY_B = Buffer.alloc(40, 0xb);
const signer = (...keys: (string | Uint8Array)[]): FrameSigner => FrameSigner.fromOption('test', keys)!;
const decoder = new MessageDecoder({ maxMessageBytes: 1 << 20, maxValueBytes: 1 << 16, maxEntries: 1000 });

/** A signed message as the apply script publishes it: header, array header, entries, then the chosen tag. */
function signed(s: FrameSigner, channel: string, partial = false): Buffer {
  const parts = [encodeHeader('u', ORIGIN, 7, 0, true), arrayHeader(2), encodeEntry('x', STAMP), encodeEntry('y', STAMP, new Uint8Array([1, 2]))];
  const tags = s.tags(Buffer.from(channel), parts);
  return Buffer.concat([...parts, partial ? tags.subarray(TAG_BYTES) : tags.subarray(0, TAG_BYTES)]);
}

describe('FrameSigner', () => {
  const channel = Buffer.from('ns/update');

  it('verifies what it signed, with the flag', () => {
    const s = signer(KEY_A);
    expect(s.verify(channel, signed(s, 'ns/update'))).toEqual({ partial: false });
    expect(s.verify(channel, signed(s, 'ns/update', true))).toEqual({ partial: true });
    const message = decoder.decode(signed(s, 'ns/update', true));
    expect(message.partial).toBe(true);
    expect(message.entries.map((e) => e.key)).toEqual(['x', 'y']);
  });

  it('refuses another channel, a flipped bit anywhere, a swapped flag, and unsigned messages', () => {
    const s = signer(KEY_A);
    const bytes = signed(s, 'ns/update');
    expect(s.verify(Buffer.from('ns/update@1'), bytes)).toEqual({ refused: 'signature does not verify' });
    for (let i = 0; i < bytes.length; i++) {
      const copy = Buffer.from(bytes);
      copy[i]! ^= 0x01;
      expect('refused' in s.verify(channel, copy)).toBe(true);
    }
    const swapped = Buffer.from(bytes);
    swapped[swapped.length - TAG_BYTES + 2] = 0x70;
    expect(s.verify(channel, swapped)).toEqual({ refused: 'signature does not verify' });
    const unsigned = Buffer.concat([encodeHeader('u', ORIGIN, 7, 0), arrayHeader(0)]);
    expect(s.verify(channel, unsigned)).toEqual({ refused: 'unsigned message (signing keys are configured)' });
    expect(s.verify(channel, Buffer.alloc(3))).toEqual({ refused: 'not a signed message' });
  });

  it('rotation: [new, old] verifies both, signs with new; [new] refuses old', () => {
    const oldOnly = signer(KEY_A);
    const both = signer(KEY_B, KEY_A);
    const newOnly = signer(KEY_B);
    expect(both.verify(channel, signed(oldOnly, 'ns/update'))).toEqual({ partial: false });
    expect(both.verify(channel, signed(newOnly, 'ns/update'))).toEqual({ partial: false });
    expect(newOnly.verify(channel, signed(both, 'ns/update'))).toEqual({ partial: false });
    expect(newOnly.verify(channel, signed(oldOnly, 'ns/update'))).toEqual({ refused: 'signed with an unknown key' });
  });

  it('a receiver without keys decodes signed messages; a bad tag item is malformed', () => {
    const bytes = signed(signer(KEY_A), 'ns/update');
    expect(decoder.decode(bytes).partial).toBe(false);
    const bad = Buffer.from(bytes);
    bad[bad.length - TAG_BYTES + 2] = 0x7a;
    expect(() => decoder.decode(bad)).toThrow(/signature tag/);
    // Version 2 with 6 items, version 1 with 7: refused.
    const v1With7 = Buffer.from(bytes);
    v1With7[1] = 0x01;
    expect(() => decoder.decode(v1With7)).toThrow(/format version/);
  });

  it('tags follow the documented construction for frames of every size (hashed in TypeScript up to 512 bytes, by node:crypto above)', () => {
    const s = signer(KEY_B);
    const keyId = createHmac('sha256', KEY_B).update('redis-pubsub-dict key id', 'latin1').digest().subarray(0, 4);
    const length = Buffer.alloc(4);
    length.writeUInt32BE(channel.length, 0);
    for (let size = 0; size <= 1200; size += 7) {
      const parts = [encodeHeader('u', ORIGIN, 7, 0, true), arrayHeader(1), encodeEntry('k', STAMP, Buffer.alloc(size, size & 0xff))];
      const body = Buffer.concat(parts);
      const t = createHmac('sha256', KEY_B).update(Buffer.from('redis-pubsub-dict frame v2\0', 'latin1')).update(length).update(channel).update(body).digest();
      const tags = s.tags(channel, parts);
      expect(tags.toString('hex'), `payload of ${size} bytes`).toBe(
        Buffer.concat([Buffer.from([0xc4, 0x15, 0x61]), keyId, t.subarray(0, 16), Buffer.from([0xc4, 0x15, 0x70]), keyId, t.subarray(16)]).toString('hex'),
      );
      expect(s.verify(channel, Buffer.concat([body, tags.subarray(0, TAG_BYTES)]))).toEqual({ partial: false });
      expect(s.verify(channel, Buffer.concat([body, tags.subarray(TAG_BYTES)]))).toEqual({ partial: true });
      const flipped = Buffer.concat([body, tags.subarray(0, TAG_BYTES)]);
      flipped[body.length - 1]! ^= 0x80;
      expect(s.verify(channel, flipped)).toEqual({ refused: 'signature does not verify' });
    }
  });
});
