import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { InvalidArgumentError, RedisDictError } from '../../src/errors.js';
import {
  booleanOption,
  checkOptions,
  describe as describeValue,
  enumOption,
  functionOption,
  integerOption,
  invalidOption,
} from '../../src/options.js';
import { RedisDict } from '../../src/store/redis-dict.js';

function caught(fn: () => unknown): InvalidArgumentError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(error).toBeInstanceOf(RedisDictError);
    return error as InvalidArgumentError;
  }
  throw new Error('expected the call to throw');
}

describe('describe()', () => {
  it.each([
    [-1, '`-1` (number)'],
    [Number.NaN, '`NaN` (number)'],
    ['5', '`"5"` (string)'],
    ['', '`""` (string)'],
    [null, '`null` (null)'],
    [undefined, '`undefined` (undefined)'],
    [true, '`true` (boolean)'],
    [10n, '`10` (bigint)'],
    [Symbol('s'), '`Symbol(s)` (symbol)'],
    [{}, '`[object Object]` (object)'],
    [[1, 2], '`1,2` (object)'],
  ])('describes %s as %s', (value, expected) => {
    expect(describeValue(value)).toBe(expected);
  });

  it('shortens long values', () => {
    const shown = describeValue('x'.repeat(500));
    expect(shown.length).toBeLessThan(80);
    expect(shown).toMatch(/\.\.\.` \(string\)$/);
  });

  it('survives values that cannot be turned into a string', () => {
    expect(describeValue(Object.create(null))).toBe('`[object Object]` (object)');
    const hostile = {
      toString(): string {
        throw new Error('no');
      },
    };
    expect(describeValue(hostile)).toBe('`[object Object]` (object)');
  });
});

describe('checkOptions', () => {
  const allowed = ['batchSize', 'clock'] as const;

  it('accepts undefined and known options', () => {
    expect(checkOptions('Thing', undefined, allowed)).toEqual({});
    expect(checkOptions('Thing', {}, allowed)).toEqual({});
    expect(checkOptions('Thing', { batchSize: 3 }, allowed)).toEqual({ batchSize: 3 });
  });

  it('refuses an unknown option, naming it and the known ones', () => {
    const error = caught(() => checkOptions('Thing', { batchSize: 1, batchsize: 2 }, allowed));
    expect(error.code).toBe('E_INVALID_OPTION');
    expect(error.message).toBe('Thing: unknown option `batchsize`; known options are `batchSize`, `clock`');
  });

  it.each([
    ['null', null],
    ['an array', []],
    ['a string', 'batchSize=1'],
    ['a number', 1],
    ['a function', () => ({})],
  ])('refuses %s as the options object', (_name, options) => {
    const error = caught(() => checkOptions('Thing', options, allowed));
    expect(error.code).toBe('E_INVALID_OPTION');
    expect(error.message).toMatch(/^Thing: expected options to be an object, got /);
  });
});

describe('integerOption', () => {
  it('returns the default when undefined, the value when valid', () => {
    expect(integerOption('W', 'batchSize', undefined, 500)).toBe(500);
    expect(integerOption('W', 'batchSize', 1, 500)).toBe(1);
    expect(integerOption('W', 'batchSize', Number.MAX_SAFE_INTEGER, 500)).toBe(Number.MAX_SAFE_INTEGER);
    expect(integerOption('W', 'delay', 0, 5, 0)).toBe(0);
  });

  it.each([
    [-1, '`-1` (number)'],
    [0, '`0` (number)'],
    [1.5, '`1.5` (number)'],
    [Number.NaN, '`NaN` (number)'],
    [Number.POSITIVE_INFINITY, '`Infinity` (number)'],
    [2 ** 53, '`9007199254740992` (number)'],
    ['5', '`"5"` (string)'],
    [null, '`null` (null)'],
    [true, '`true` (boolean)'],
    [5n, '`5` (bigint)'],
  ])('refuses %s as a positive integer', (value, shown) => {
    const error = caught(() => integerOption('RedisDict', 'batchSize', value, 500));
    expect(error.code).toBe('E_INVALID_OPTION');
    expect(error.message).toBe(`RedisDict: expected \`batchSize\` to be a positive integer, got ${shown}`);
  });

  it('words the expectation after the minimum', () => {
    expect(caught(() => integerOption('W', 'n', -1, 0, 0)).message).toBe('W: expected `n` to be a non-negative integer, got `-1` (number)');
    expect(caught(() => integerOption('W', 'n', 1, 0, 2)).message).toBe('W: expected `n` to be an integer >= 2, got `1` (number)');
  });
});

describe('enumOption, booleanOption, functionOption, invalidOption', () => {
  it('enumOption accepts listed strings and refuses others', () => {
    const choices = ['last-writer-wins', 'discard-on-remote-update'] as const;
    expect(enumOption('W', 'policy', undefined, choices, 'last-writer-wins')).toBe('last-writer-wins');
    expect(enumOption('W', 'policy', 'discard-on-remote-update', choices, 'last-writer-wins')).toBe('discard-on-remote-update');
    const error = caught(() => enumOption('W', 'policy', 'LWW', choices, 'last-writer-wins'));
    expect(error.code).toBe('E_INVALID_OPTION');
    expect(error.message).toBe("W: expected `policy` to be one of 'last-writer-wins', 'discard-on-remote-update', got `\"LWW\"` (string)");
    expect(caught(() => enumOption('W', 'policy', 1, choices, 'last-writer-wins')).code).toBe('E_INVALID_OPTION');
  });

  it('booleanOption accepts booleans only', () => {
    expect(booleanOption('W', 'flag', undefined, true)).toBe(true);
    expect(booleanOption('W', 'flag', false, true)).toBe(false);
    expect(caught(() => booleanOption('W', 'flag', 'false', true)).message).toBe('W: expected `flag` to be a boolean, got `"false"` (string)');
    expect(caught(() => booleanOption('W', 'flag', 0, true)).code).toBe('E_INVALID_OPTION');
  });

  it('functionOption accepts functions only', () => {
    const fallback = (): number => 1;
    const given = (): number => 2;
    expect(functionOption('W', 'clock', undefined, fallback)).toBe(fallback);
    expect(functionOption('W', 'clock', given, fallback)).toBe(given);
    expect(caught(() => functionOption('W', 'clock', 123, fallback)).message).toBe('W: expected `clock` to be a function, got `123` (number)');
  });

  it('invalidOption throws the standard error', () => {
    const error = caught(() => invalidOption('W', 'redis', 'an ioredis Redis or Cluster', null));
    expect(error.code).toBe('E_INVALID_OPTION');
    expect(error.message).toBe('W: expected `redis` to be an ioredis Redis or Cluster, got `null` (null)');
  });
});

describe('RedisDict constructor options (no connection is made)', () => {
  // lazyConnect: the client never connects, since these constructors fail or do no I/O.
  const client = new Redis({ lazyConnect: true, enableOfflineQueue: false });
  afterAll(() => client.disconnect());

  it('applies the documented defaults', () => {
    const dict = new RedisDict(client, 'ns');
    expect(dict.namespace).toBe('ns');
    expect(dict.maxValueBytes).toBe(1 << 20);
    expect(dict.tombstoneTtlMs).toBe(86_400_000);
    expect(dict.batchSize).toBe(500);
    expect(dict.isCluster).toBe(false);
    expect(dict.redisKey('a/b')).toBe('ns/a/b');
    expect(client.status).toBe('wait');
  });

  it('keeps valid options', () => {
    const clock = (): number => 42;
    const dict = new RedisDict(client, 'ns', { maxValueBytes: 10, tombstoneTtlMs: 1000, batchSize: 7, clock });
    expect([dict.maxValueBytes, dict.tombstoneTtlMs, dict.batchSize]).toEqual([10, 1000, 7]);
    expect(dict.clock.now().slice(0, 12)).toBe((42).toString(16).padStart(12, '0'));
  });

  it('refuses an unknown option, naming it', () => {
    const error = caught(() => new RedisDict(client, 'ns', { batchsize: 5 } as never));
    expect(error.code).toBe('E_INVALID_OPTION');
    expect(error.message).toMatch(/^RedisDict: unknown option `batchsize`; known options are /);
    expect(error.message).toContain('`batchSize`');
  });

  it.each([
    ['batchSize', -1, 'RedisDict: expected `batchSize` to be a positive integer, got `-1` (number)'],
    ['batchSize', 0, 'RedisDict: expected `batchSize` to be a positive integer, got `0` (number)'],
    ['maxValueBytes', 1.5, 'RedisDict: expected `maxValueBytes` to be a positive integer, got `1.5` (number)'],
    ['tombstoneTtlMs', '1000', 'RedisDict: expected `tombstoneTtlMs` to be a positive integer, got `"1000"` (string)'],
    ['tombstoneTtlMs', Number.NaN, 'RedisDict: expected `tombstoneTtlMs` to be a positive integer, got `NaN` (number)'],
    ['clock', 1000, 'RedisDict: expected `clock` to be a function, got `1000` (number)'],
  ])('refuses %s = %s', (name, value, message) => {
    const error = caught(() => new RedisDict(client, 'ns', { [name]: value } as never));
    expect(error.code).toBe('E_INVALID_OPTION');
    expect(error.message).toBe(message);
  });

  it.each([
    ['null', null],
    ['an object without methods', {}],
    ['an object without decode', { encode: () => new Uint8Array() }],
    ['a function', () => undefined],
  ])('refuses %s as codec', (_name, codec) => {
    const error = caught(() => new RedisDict(client, 'ns', { codec } as never));
    expect(error.code).toBe('E_INVALID_OPTION');
    expect(error.message).toMatch(/`codec`/);
  });

  it('refuses options that are not an object', () => {
    expect(caught(() => new RedisDict(client, 'ns', null as never)).code).toBe('E_INVALID_OPTION');
    expect(caught(() => new RedisDict(client, 'ns', 'fast' as never)).code).toBe('E_INVALID_OPTION');
  });

  it('refuses something that is not an ioredis client', () => {
    for (const redis of [null, undefined, {}, 'redis://localhost']) {
      const error = caught(() => new RedisDict(redis as never, 'ns'));
      expect(error.code).toBe('E_INVALID_OPTION');
      expect(error.message).toMatch(/`redis`/);
    }
  });

  it('refuses an invalid namespace with E_INVALID_NAMESPACE', () => {
    for (const namespace of ['', 'a/b', 'a*', 'a{b}', 'a b', 'x'.repeat(129)]) {
      expect(caught(() => new RedisDict(client, namespace)).code).toBe('E_INVALID_NAMESPACE');
    }
  });
});
