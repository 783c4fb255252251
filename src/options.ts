/**
 * Option validation shared by every class: unknown options and out-of-range values are refused
 * with an {@link InvalidArgumentError} before anything is created or written.
 *
 * @module
 */
import { InvalidArgumentError } from './errors.js';

/** Describes a value for an error message: `` `-1` (number) ``. */
export function describe(value: unknown): string {
  let shown: string;
  try {
    shown = typeof value === 'string' ? JSON.stringify(value) : typeof value === 'symbol' ? value.toString() : String(value);
  } catch {
    shown = Object.prototype.toString.call(value);
  }
  if (shown.length > 60) shown = `${shown.slice(0, 57)}...`;
  return `\`${shown}\` (${value === null ? 'null' : typeof value})`;
}

function fail(where: string, name: string, expected: string, value: unknown): never {
  throw new InvalidArgumentError('E_INVALID_OPTION', `${where}: expected \`${name}\` to be ${expected}, got ${describe(value)}`);
}

/** Refuses options objects that are not plain objects or that carry keys outside `allowed`. */
export function checkOptions(where: string, options: unknown, allowed: readonly string[]): Record<string, unknown> {
  if (options === undefined) return {};
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new InvalidArgumentError('E_INVALID_OPTION', `${where}: expected options to be an object, got ${describe(options)}`);
  }
  for (const key of Object.keys(options)) {
    if (!allowed.includes(key)) {
      throw new InvalidArgumentError(
        'E_INVALID_OPTION',
        `${where}: unknown option \`${key}\`; known options are ${allowed.map((k) => `\`${k}\``).join(', ')}`,
      );
    }
  }
  return options as Record<string, unknown>;
}

/** An integer `>= min`, or the default when undefined. */
export function integerOption(where: string, name: string, value: unknown, fallback: number, min = 1): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
    fail(where, name, min === 0 ? 'a non-negative integer' : min === 1 ? 'a positive integer' : `an integer >= ${min}`, value);
  }
  return value;
}

/** One of the listed strings, or the default when undefined. */
export function enumOption<T extends string>(where: string, name: string, value: unknown, choices: readonly T[], fallback: T): T {
  if (value === undefined) return fallback;
  if (typeof value !== 'string' || !(choices as readonly string[]).includes(value)) {
    fail(where, name, `one of ${choices.map((c) => `'${c}'`).join(', ')}`, value);
  }
  return value as T;
}

/** A boolean, or the default when undefined. */
export function booleanOption(where: string, name: string, value: unknown, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') fail(where, name, 'a boolean', value);
  return value;
}

/** A function, or the default when undefined. */
export function functionOption<F>(where: string, name: string, value: unknown, fallback: F): F {
  if (value === undefined) return fallback;
  if (typeof value !== 'function') fail(where, name, 'a function', value);
  return value as F;
}

/** Throws the standard invalid-option error. */
export function invalidOption(where: string, name: string, expected: string, value: unknown): never {
  fail(where, name, expected, value);
}

/** The options of a subclass that its base class takes: those of `keys` that are set. */
export function pickOptions(raw: unknown, keys: readonly string[]): Record<string, unknown> | undefined {
  if (raw === undefined || raw === null || typeof raw !== 'object') return raw as undefined;
  const out: Record<string, unknown> = {};
  for (const key of keys) if (key in raw) out[key] = (raw as Record<string, unknown>)[key];
  return out;
}
