import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, RedisDictError } from '../../src/errors.js';
import { MAX_KEY_LENGTH, checkNamespace, normalizeKey, normalizeKeys } from '../../src/protocol/keys.js';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(error).toBeInstanceOf(RedisDictError);
    return (error as InvalidArgumentError).code;
  }
  return undefined;
}

describe('normalizeKey', () => {
  it.each([
    ['plain', 'user:1'],
    ['a single space', ' '],
    ['slashes', 'a/b/c'],
    ['glob characters', '*?[]\\'],
    ['hash-tag braces', '{tag}rest'],
    ['unicode', 'ключ 鍵'],
    ['emoji (surrogate pairs)', '🔑👩‍👩‍👧'],
    ['control characters', '\u0000\r\n'],
    [`the longest key (${MAX_KEY_LENGTH} characters)`, 'k'.repeat(MAX_KEY_LENGTH)],
  ])('keeps a string key unchanged: %s', (_name, key) => {
    expect(normalizeKey(key)).toBe(key);
  });

  it.each([
    [1, '1'],
    [0, '0'],
    [-0, '0'],
    [-7, '-7'],
    [1.5, '1.5'],
    [1e21, '1e+21'],
    [Number.MAX_SAFE_INTEGER, '9007199254740991'],
    [5e-324, '5e-324'],
  ])('converts the number %d with String(): %s', (key, expected) => {
    expect(normalizeKey(key)).toBe(expected);
    expect(normalizeKey(key)).toBe(String(key));
  });

  it.each([
    ['an empty string', ''],
    ['a lone high surrogate', '\uD800'],
    ['a lone low surrogate inside text', 'a\uDC00b'],
    ['half an emoji', '😀'.slice(0, 1)],
    ['a key that is too long', 'k'.repeat(MAX_KEY_LENGTH + 1)],
    ['NaN', Number.NaN],
    ['Infinity', Number.POSITIVE_INFINITY],
    ['-Infinity', Number.NEGATIVE_INFINITY],
    ['an object', { toString: () => 'k' }],
    ['an array', ['k']],
    ['null', null],
    ['undefined', undefined],
    ['a boolean', true],
    ['a bigint', 1n],
    ['a symbol', Symbol('k')],
    ['a boxed string', new String('k')],
    ['a Buffer', Buffer.from('k')],
  ])('refuses %s with E_INVALID_KEY', (_name, key) => {
    expect(codeOf(() => normalizeKey(key))).toBe('E_INVALID_KEY');
  });

  it('says what was wrong in the message', () => {
    expect(() => normalizeKey('')).toThrow(/non-empty/);
    expect(() => normalizeKey(Number.NaN)).toThrow(/`NaN` \(number\)/);
    expect(() => normalizeKey(null)).toThrow(/`null` \(null\)/);
    expect(() => normalizeKey('\uD800')).toThrow(/well-formed/);
    expect(() => normalizeKey('k'.repeat(MAX_KEY_LENGTH + 1))).toThrow(new RegExp(`at most ${MAX_KEY_LENGTH}`));
  });
});

describe('normalizeKeys', () => {
  it('converts every key of any iterable, keeping order and duplicates', () => {
    expect(normalizeKeys(['a', 1, 'a'])).toEqual(['a', '1', 'a']);
    expect(normalizeKeys(new Set<string | number>([2, 'b']))).toEqual(['2', 'b']);
    function* gen(): Generator<string | number> {
      yield 'x';
      yield 3;
    }
    expect(normalizeKeys(gen())).toEqual(['x', '3']);
    expect(normalizeKeys([])).toEqual([]);
  });

  it('refuses the whole batch when one key is invalid', () => {
    expect(codeOf(() => normalizeKeys(['a', '', 'b']))).toBe('E_INVALID_KEY');
    expect(codeOf(() => normalizeKeys(['a', Number.NaN]))).toBe('E_INVALID_KEY');
  });

  it.each([
    ['a string (would iterate its characters)', 'abc'],
    ['null', null],
    ['undefined', undefined],
    ['a number', 5],
    ['a plain object', { a: 1 }],
  ])('refuses %s instead of an iterable', (_name, keys) => {
    expect(codeOf(() => normalizeKeys(keys as Iterable<string>))).toBe('E_INVALID_KEY');
  });
});

describe('checkNamespace', () => {
  it.each([['ns'], ['a'], ['A-Z_a.z:0-9'], ['app:users:v2'], ['x'.repeat(128)]])('accepts %s', (namespace) => {
    expect(checkNamespace(namespace)).toBe(namespace);
  });

  it.each([
    ['empty', ''],
    ['with a slash', 'a/b'],
    ['ending with a slash', 'ns/'],
    ['with *', 'ns*'],
    ['with ?', 'ns?'],
    ['with [', 'ns['],
    ['with {', 'ns{a}'],
    ['with a backslash', 'ns\\'],
    ['with a space', 'my ns'],
    ['with a newline', 'ns\n'],
    ['with unicode', 'ключ'],
    ['too long (129 characters)', 'x'.repeat(129)],
    ['a number', 1],
    ['null', null],
    ['undefined', undefined],
    ['an object', { toString: () => 'ns' }],
  ])('refuses a namespace %s with E_INVALID_NAMESPACE', (_name, namespace) => {
    expect(codeOf(() => checkNamespace(namespace))).toBe('E_INVALID_NAMESPACE');
  });

  it('names the namespace it refused', () => {
    expect(() => checkNamespace('a/b')).toThrow(/`"a\/b"` \(string\)/);
    expect(() => checkNamespace('')).toThrow(/1-128 characters/);
  });
});
