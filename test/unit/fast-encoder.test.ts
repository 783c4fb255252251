/**
 * The fast encoder writes exactly the bytes of the general encoder (`@msgpack/msgpack`, with
 * `ignoreUndefined`) for every value it accepts, and declines every value it does not handle.
 */
import { Encoder } from '@msgpack/msgpack';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MAX_DEPTH, assertSerializable, msgpackCodec } from '../../src/protocol/codec.js';
import { FastEncoder } from '../../src/protocol/fast-encoder.js';

const general = new Encoder({ ignoreUndefined: true, maxDepth: MAX_DEPTH + 1 });
const fast = new FastEncoder(MAX_DEPTH + 1, 16); // a tiny start buffer exercises growing it
const bytesOf = (value: unknown): Buffer => Buffer.from(general.encode(value));
/** Asserts that the fast encoder writes the general encoder's bytes (Buffer#equals: large buffers compare fast). */
const expectSameBytes = (value: unknown, label: string): void => {
  const got = fast.encode(value);
  const want = bytesOf(value);
  expect(got !== undefined && got.equals(want), `${label}: ${got?.subarray(0, 16).toString('hex')}… vs ${want.subarray(0, 16).toString('hex')}…`).toBe(true);
};

/** Numbers at and around every boundary between MessagePack's integer and float formats. */
const boundaries = [0, 1, 0x1f, 0x20, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000, 0xffffffff, 0x100000000, Number.MAX_SAFE_INTEGER]
  .flatMap((n) => [n - 1, n, n + 1, -n - 1, -n, -n + 1])
  .concat([-0x21, -0x20, -0x81, -0x80, -0x8001, -0x8000, -0x80000001, -0x80000000, -0, 0.5, -1.5, Number.MIN_VALUE, Number.MAX_VALUE])
  .concat([Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, 2 ** 53, -(2 ** 53), 1e21, 3.14159]);

/** Strings around the str header boundaries (31/32, 255/256, 65535/65536 bytes), in 1-, 2-, 3- and 4-byte characters. */
const strings = [0, 1, 10, 11, 15, 16, 21, 31, 32, 33, 85, 86, 127, 128, 255, 256, 257, 21845, 21846, 32767, 32768, 65535, 65536, 70000].flatMap((n) => [
  'a'.repeat(n),
  'é'.repeat(n),
  '€'.repeat(n),
  '🔑'.repeat(Math.ceil(n / 2)),
  `${'a'.repeat(n)}€`,
]);

const plainValue = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.constant(null),
    fc.boolean(),
    fc.integer(),
    fc.double(),
    fc.maxSafeInteger(),
    fc.constantFrom(...boundaries),
    fc.string({ unit: 'grapheme', maxLength: 40 }),
    fc.string({ unit: 'binary', maxLength: 300 }).filter((s) => s.isWellFormed()),
    fc.array(tie('value'), { maxLength: 20 }),
    fc.dictionary(fc.string({ unit: 'grapheme', maxLength: 12 }).filter((k) => k !== '__proto__'), fc.oneof(tie('value'), fc.constant(undefined)), {
      maxKeys: 20,
    }),
  ),
})).value;

describe('FastEncoder', () => {
  it('writes the bytes of @msgpack/msgpack for every number and string boundary', () => {
    for (const n of boundaries) expectSameBytes(n, `number ${n}`);
    for (const s of strings) expectSameBytes(s, `string of ${s.length} UTF-16 units`);
  });

  it('writes the bytes of @msgpack/msgpack for arrays and maps around the header boundaries', () => {
    for (const n of [0, 15, 16, 17, 65535, 65536]) {
      const array = Array.from({ length: n }, (_, i) => i);
      expectSameBytes(array, `array of ${n}`);
      expectSameBytes(Object.fromEntries(array.map((i) => [`k${i}`, i])), `map of ${n}`);
    }
    // undefined properties are left out of the count and of the body; null-prototype objects are maps.
    expectSameBytes({ a: 1, b: undefined, c: 'x' }, 'undefined property');
    expectSameBytes(Object.assign(Object.create(null) as object, { z: [1, 'two', null] }), 'null prototype');
  });

  it('writes the bytes of @msgpack/msgpack for random plain values', () => {
    fc.assert(
      fc.property(plainValue, (value) => {
        expectSameBytes(value, 'random value');
      }),
      { numRuns: 3000 },
    );
  });

  it('declines what it does not handle, and the codec still encodes it with the general encoder', () => {
    const codec = msgpackCodec<unknown>();
    for (const value of [new Date(0), new Uint8Array([1, 2]), { at: new Date(1) }, [1, new Uint8Array(3)], { deep: { bin: Buffer.from('x') } }]) {
      expect(fast.encode(value)).toBeUndefined();
      expect(Buffer.from(codec.encode(value)).equals(bytesOf(value))).toBe(true);
    }
    expect(fast.encode(undefined)).toBeUndefined();
    expect(fast.encode(() => 1)).toBeUndefined();
  });

  it('declines every value the validation refuses (it validates in the same pass)', () => {
    const strict = new FastEncoder(MAX_DEPTH);
    const refused = (value: unknown): boolean => {
      try {
        assertSerializable(value);
        return false;
      } catch {
        return true;
      }
    };
    const lone = ['\ud800', 'a\udc00b', `${'x'.repeat(40)}\ud83d`];
    const circular: Record<string, unknown> = { a: 1 };
    circular['self'] = { back: circular };
    const protoKey: unknown = JSON.parse('{"__proto__": {"x": 1}}');
    const handmade = [
      ...lone,
      ...lone.map((s) => ({ [s]: 1 })),
      ...lone.map((s) => ({ ok: [s] })),
      protoKey,
      { nested: [protoKey] },
      { [Symbol('k')]: 1 },
      // eslint-disable-next-line no-sparse-arrays -- a hole is what is tested
      [1, , 3],
      [undefined],
      circular,
      [circular],
      () => 1,
      { f: Symbol('s') },
      { b: 1n },
    ];
    for (const value of handmade) {
      expect(refused(value)).toBe(true);
      expect(strict.encode(value)).toBeUndefined();
    }
    // Random values with refused pieces mixed in: whatever the fast encoder accepts, the validation accepts.
    const hostile = fc.letrec((tie) => ({
      value: fc.oneof(
        { depthSize: 'small' },
        plainValue,
        fc.constantFrom<unknown>(...lone, undefined, Symbol('x'), 2n, () => 1, new Date(0), new Map(), protoKey),
        fc.array(tie('value'), { maxLength: 6 }),
        fc.dictionary(fc.oneof(fc.string({ maxLength: 6 }), fc.constantFrom(...lone, '__proto__')), tie('value'), { maxKeys: 6 }),
      ),
    })).value;
    fc.assert(
      fc.property(hostile, (value) => {
        if (strict.encode(value) !== undefined) expect(refused(value)).toBe(false);
      }),
      { numRuns: 3000 },
    );
    let deep: unknown = 1;
    for (let i = 0; i < MAX_DEPTH; i++) deep = [deep];
    expect(strict.encode(deep)).toBeDefined();
    expect(strict.encode([deep])).toBeUndefined();
    expect(refused([deep])).toBe(true);
  });

  it('declines values nested deeper than its limit', () => {
    let deep: unknown = 1;
    for (let i = 0; i < MAX_DEPTH + 2; i++) deep = [deep];
    expect(fast.encode(deep)).toBeUndefined();
  });

  it('returns a fresh Buffer each time (the output does not alias its working buffer)', () => {
    const first = fast.encode({ a: 'one' })!;
    const copy = Buffer.from(first);
    fast.encode({ a: 'two, and longer than the first' });
    expect(first).toEqual(copy);
  });

  it('reads each property once: a getter that changes its answer still gives well-formed bytes', async () => {
    const { decode } = await import('@msgpack/msgpack');
    let reads = 0;
    // undefined on the first read, a value on the next: counting and writing in two passes would
    // announce fewer entries than it writes.
    const fickle = Object.defineProperty({ a: 1 } as Record<string, unknown>, 'b', { enumerable: true, get: () => (reads++ === 0 ? undefined : 'late') });
    expect(decode(fast.encode(fickle)!)).toEqual({ a: 1 });
    // 16 keys announced, fewer written: the map header shrinks from 3 bytes to 1 and the body moves.
    const wide: Record<string, unknown> = Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`k${i}`, i]));
    wide['k3'] = undefined;
    expectSameBytes(wide, '16 keys, one undefined');
    expect(decode(fast.encode(wide)!)).toEqual(Object.fromEntries(Object.entries(wide).filter(([, v]) => v !== undefined)));
  });
});
