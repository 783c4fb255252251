/**
 * Commands framed by the library (resp.ts) are byte for byte what ioredis writes for the same
 * arguments, and ioredis still routes them by the short argument list they carry.
 */
import { Command } from 'ioredis';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FramedCommand, frameCommand } from '../../src/store/resp.js';

const ioredisFrame = (name: string, args: (string | Buffer | number)[]): Buffer => {
  const written = new Command(name, args, { replyEncoding: null }).toWritable(undefined as never);
  return Buffer.isBuffer(written) ? written : Buffer.from(written, 'utf8');
};

describe('frameCommand', () => {
  it('writes the bytes ioredis writes, for strings (ASCII and not), Buffers and numbers', () => {
    const cases: [string, (string | Buffer | number)[]][] = [
      ['evalsha', ['a'.repeat(40), 2, 'ns/k1', 'ns/ключ', Buffer.from([0, 13, 10, 255]), '', Buffer.alloc(0), 86_400_000]],
      ['eval', ['return 1', 0]],
      ['publish', ['ns/update', '🔑 é € \r\n']],
      ['x', Array.from({ length: 12 }, (_, i) => `arg${i}`)],
    ];
    for (const [name, args] of cases) expect(frameCommand(name, args).equals(ioredisFrame(name, args))).toBe(true);
  });

  it('writes the bytes ioredis writes for random arguments', () => {
    const arg = fc.oneof(
      fc.string({ unit: 'grapheme', maxLength: 30 }),
      fc.string({ unit: 'binary', maxLength: 30 }).filter((s) => s.isWellFormed()),
      fc.uint8Array({ maxLength: 300 }).map((bytes) => Buffer.from(bytes)),
      fc.nat(),
    );
    fc.assert(
      fc.property(fc.array(arg, { maxLength: 40 }), (args) => {
        expect(frameCommand('evalsha', args).equals(ioredisFrame('evalsha', args))).toBe(true);
      }),
      { numRuns: 500 },
    );
  });
});

describe('FramedCommand', () => {
  it('is written as its frame, routed by its own arguments, and answers with Buffers', () => {
    const frame = frameCommand('evalsha', ['f'.repeat(40), 3, '{t}a', '{t}b', '{t}c']);
    const command = new FramedCommand('evalsha', ['f'.repeat(40), 1, '{t}a'], frame);
    expect(command.toWritable()).toBe(frame);
    expect(command.getSlot()).toBe(new Command('evalsha', ['f'.repeat(40), 3, '{t}a', '{t}b', '{t}c']).getSlot());
    expect((command as unknown as { replyEncoding: unknown }).replyEncoding).toBeNull();
  });
});
