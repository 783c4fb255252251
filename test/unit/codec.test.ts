import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MAX_DEPTH, assertSerializable, msgpackCodec } from '../../src/protocol/codec.js';
import { RedisDictError, SerializationError } from '../../src/errors.js';

const codec = msgpackCodec<unknown>();

function roundTrip(value: unknown): unknown {
  return codec.decode(codec.encode(value));
}

/** Asserts that encoding `value` throws a SerializationError with code E_SERIALIZE whose message matches `message`. */
function expectRefused(value: unknown, message?: RegExp): void {
  let caught: unknown;
  try {
    codec.encode(value);
  } catch (error) {
    caught = error;
  }
  expect(caught, 'the value should have been refused').toBeInstanceOf(SerializationError);
  expect(caught).toBeInstanceOf(RedisDictError);
  const error = caught as SerializationError;
  expect(error.code).toBe('E_SERIALIZE');
  expect(error.name).toBe('SerializationError');
  if (message) expect(error.message).toMatch(message);
  // assertSerializable is the same check, usable without encoding.
  expect(() => assertSerializable(value)).toThrow(SerializationError);
}

function nestedArrays(levels: number): unknown {
  let value: unknown = 'leaf';
  for (let i = 0; i < levels; i++) value = [value];
  return value;
}

function nestedObjects(levels: number): unknown {
  let value: unknown = 'leaf';
  for (let i = 0; i < levels; i++) value = { a: value };
  return value;
}

class Point {
  constructor(
    readonly x: number,
    readonly y: number,
  ) {}
}

describe('msgpackCodec: refused values', () => {
  it.each([
    ['a function', () => 1, /function/],
    ['an async function', async () => 1, /function/],
    ['a class (constructor function)', Point, /function/],
    ['a symbol', Symbol('s'), /symbol/],
    ['a bigint', 10n, /bigint/],
    ['undefined', undefined, /undefined/],
  ])('refuses %s at top level', (_name, value, message) => {
    expectRefused(value, message);
  });

  it.each([
    ['a function', () => 1, /function at value\[1\]/],
    ['a symbol', Symbol.iterator, /symbol at value\[1\]/],
    ['a bigint', 2n ** 70n, /bigint at value\[1\]/],
    ['undefined', undefined, /undefined.* at value\[1\]/],
  ])('refuses %s inside an array', (_name, value, message) => {
    expectRefused([0, value, 2], message);
    expectRefused({ list: ['ok', [value]] });
  });

  it.each([
    ['a function', () => 1],
    ['a symbol', Symbol('x')],
    ['a bigint', 1n],
  ])('refuses %s as an object property, naming its path', (_name, value) => {
    expectRefused({ a: { b: [{ c: value }] } }, /value\.a\.b\[0\]\.c/);
  });

  it.each([
    ['a Map', new Map([['a', 1]]), /Map/],
    ['an empty Map', new Map(), /Map/],
    ['a Set', new Set([1]), /Set/],
    ['a class instance', new Point(1, 2), /Point/],
    ['a RegExp', /abc/g, /RegExp/],
    ['an Error', new Error('x'), /Error/],
    ['a Promise', Promise.resolve(1), /Promise/],
    ['a WeakMap', new WeakMap(), /WeakMap/],
    ['a boxed number', new Number(1), /Number/],
    ['a boxed string', new String('x'), /String/],
    ['a Float64Array', new Float64Array(2), /Float64Array/],
    ['an ArrayBuffer', new ArrayBuffer(4), /ArrayBuffer/],
    ['a DataView', new DataView(new ArrayBuffer(4)), /DataView/],
    ['a URL', new URL('https://example.com/'), /URL/],
  ])('refuses %s, at top level and nested', (_name, value, message) => {
    expectRefused(value, message);
    expectRefused({ nested: [value] }, /value\.nested\[0\]/);
  });

  it('refuses symbol-keyed properties', () => {
    expectRefused({ [Symbol('k')]: 1, a: 1 }, /symbol-keyed/);
  });

  it('refuses circular structures', () => {
    const self: Record<string, unknown> = { a: 1 };
    self['self'] = self;
    expectRefused(self, /circular reference at value\.self/);

    const list: unknown[] = [1];
    list.push(list);
    expectRefused(list, /circular reference at value\[1\]/);

    const a: Record<string, unknown> = {};
    const b: Record<string, unknown> = { back: [a] };
    a['b'] = b;
    expectRefused({ root: a }, /circular reference at value\.root\.b\.back\[0\]/);
  });

  it('accepts a shared (non-circular) sub-object referenced twice', () => {
    const shared = { x: 1 };
    expect(roundTrip({ a: shared, b: [shared, shared] })).toEqual({ a: { x: 1 }, b: [{ x: 1 }, { x: 1 }] });
  });

  it(`accepts ${MAX_DEPTH} levels of nesting and refuses ${MAX_DEPTH + 1}`, () => {
    expect(roundTrip(nestedArrays(MAX_DEPTH))).toEqual(nestedArrays(MAX_DEPTH));
    expect(roundTrip(nestedObjects(MAX_DEPTH))).toEqual(nestedObjects(MAX_DEPTH));
    expectRefused(nestedArrays(MAX_DEPTH + 1), /nested deeper than 100/);
    expectRefused(nestedObjects(MAX_DEPTH + 1), /nested deeper than 100/);
    expectRefused(nestedArrays(10_000), /nested deeper than 100/);
  });

  it('refuses an own `__proto__` key (as made by JSON.parse), at top level and nested', () => {
    const top = JSON.parse('{"__proto__": {"polluted": true}, "a": 1}') as unknown;
    expectRefused(top, /__proto__/);
    const nested = JSON.parse('{"a": [{"__proto__": 1}]}') as unknown;
    expectRefused(nested, /__proto__.* at value\.a\[0\]/);
    expect(({} as Record<string, unknown>)['polluted']).toBeUndefined();
  });

  it('accepts an object whose prototype is null and a `constructor` key', () => {
    const bare = Object.create(null) as Record<string, unknown>;
    bare['a'] = 1;
    expect(roundTrip(bare)).toEqual({ a: 1 });
    expect(roundTrip({ constructor: 'x', toString: 1 })).toEqual({ constructor: 'x', toString: 1 });
  });

  it('refuses sparse arrays', () => {
    // eslint-disable-next-line no-sparse-arrays
    expectRefused([1, , 3], /hole in the array at value\[1\]/);
    expectRefused(new Array(3), /hole/);
    const holey = [1, 2, 3];
    delete holey[2];
    expectRefused({ holey }, /value\.holey\[2\]/);
  });

  it('drops undefined object properties, as JSON does', () => {
    const back = roundTrip({ a: 1, b: undefined, c: { d: undefined, e: null } });
    expect(back).toEqual({ a: 1, c: { e: null } });
    expect(Object.keys(back as object)).toEqual(['a', 'c']);
    expect(Object.keys((back as { c: object }).c)).toEqual(['e']);
  });

  it('refuses before encoding anything: errors are typed, never raw msgpack errors', () => {
    for (const bad of [() => 1, Symbol('x'), 1n, undefined, new Map(), nestedArrays(500)]) {
      expect(() => codec.encode(bad)).toThrow(SerializationError);
    }
    // The shared encoder still works after refusals.
    expect(roundTrip({ ok: true })).toEqual({ ok: true });
  });

  // Regression: msgpack encodes strings longer than 50 code units with TextEncoder, which replaces
  // a lone surrogate (for example text cut in the middle of an emoji) by U+FFFD, so the stored
  // value silently differed from the one written.
  it('never changes a string with a lone surrogate silently (refuses it or round-trips it)', () => {
    const cutEmoji = `${'x'.repeat(60)}${'😀'.slice(0, 1)}`;
    for (const value of [cutEmoji, { text: cutEmoji }, { [cutEmoji]: 1 }]) {
      let encoded: Uint8Array;
      try {
        encoded = codec.encode(value);
      } catch (error) {
        expect(error).toBeInstanceOf(SerializationError);
        continue;
      }
      expect(codec.decode(encoded)).toEqual(value);
    }
  });

  // Regression: msgpack encodes an invalid Date (`new Date('garbage')`) as the epoch, so it came
  // back as 1970-01-01T00:00:00.000Z.
  it('never changes an invalid Date silently (refuses it or round-trips it)', () => {
    const invalid = new Date(Number.NaN);
    let encoded: Uint8Array;
    try {
      encoded = codec.encode(invalid);
    } catch (error) {
      expect(error).toBeInstanceOf(SerializationError);
      return;
    }
    expect(Number.isNaN((codec.decode(encoded) as Date).getTime())).toBe(true);
  });
});

describe('msgpackCodec: round trips', () => {
  it.each([
    ['null', null],
    ['true', true],
    ['false', false],
    ['zero', 0],
    ['a negative integer', -42],
    ['the largest safe integer', Number.MAX_SAFE_INTEGER],
    ['the smallest safe integer', Number.MIN_SAFE_INTEGER],
    ['a float', 0.1 + 0.2],
    ['a large float', 1e308],
    ['the smallest denormal', 5e-324],
    ['2^64', 2 ** 64],
    ['Infinity', Number.POSITIVE_INFINITY],
    ['-Infinity', Number.NEGATIVE_INFINITY],
    ['NaN', Number.NaN],
    ['an empty string', ''],
    ['ASCII', 'hello'],
    ['unicode', 'ключ 鍵 clé ﷽ e\u0301'],
    ['emoji', '🔑👩‍👩‍👧‍👦🏳️‍🌈'],
    ['control characters', '\u0000\n\r\t\u001f'],
    ['a long string', 'é'.repeat(70_000)],
    ['an empty array', []],
    ['an empty object', {}],
    ['nested plain data', { a: [1, 'two', { three: [null, true] }], 'key with space': { '🔑': 'v' } }],
  ])('round-trips %s', (_name, value) => {
    expect(roundTrip(value)).toEqual(value);
  });

  it('round-trips Dates to the millisecond, before 1970 and far ahead', () => {
    for (const date of [new Date(0), new Date(1_700_000_000_123), new Date(-123_456_789_012), new Date(8.64e15), new Date(-8.64e15)]) {
      const back = roundTrip(date);
      expect(back).toBeInstanceOf(Date);
      expect((back as Date).getTime()).toBe(date.getTime());
    }
    expect(roundTrip({ when: [new Date(5)] })).toEqual({ when: [new Date(5)] });
  });

  it('round-trips binary data as Uint8Array', () => {
    const bytes = new Uint8Array([0, 1, 2, 254, 255]);
    const back = roundTrip(bytes);
    expect(back).toBeInstanceOf(Uint8Array);
    expect(Buffer.from(back as Uint8Array).equals(Buffer.from(bytes))).toBe(true);
    expect(roundTrip(new Uint8Array(0))).toEqual(new Uint8Array(0));
    // A Buffer is a Uint8Array: accepted, same bytes back.
    const fromBuffer = roundTrip({ b: Buffer.from('abc') }) as { b: Uint8Array };
    expect(Buffer.from(fromBuffer.b).toString()).toBe('abc');
  });

  it('round-trips arbitrary JSON values', () => {
    // -0 is normalized away: msgpack stores it as the integer 0. An own `__proto__` key (which
    // JSON.parse makes) is refused by design (see the refused values above): left out here.
    const json = fc
      .jsonValue()
      .map((v) => JSON.parse(JSON.stringify(v), (_k, x: unknown) => (Object.is(x, -0) ? 0 : x)) as unknown)
      .filter((v) => !JSON.stringify(v).includes('"__proto__":'));
    fc.assert(
      fc.property(json, (value) => {
        expect(roundTrip(value)).toEqual(value);
      }),
      { numRuns: 500 },
    );
  });

  it('returns plain objects on decode', () => {
    const back = roundTrip({ a: { b: 1 } }) as Record<string, unknown>;
    expect(Object.getPrototypeOf(back)).toBe(Object.prototype);
    expect(Object.getPrototypeOf(back['a'])).toBe(Object.prototype);
  });

  it('decode rejects bytes it does not understand', () => {
    expect(() => codec.decode(new Uint8Array([0xc1]))).toThrow();
    expect(() => codec.decode(new Uint8Array([0x92, 0x01]))).toThrow();
    expect(() => codec.decode(new Uint8Array([]))).toThrow();
    // Still usable afterwards.
    expect(roundTrip([1, 2])).toEqual([1, 2]);
  });
});
