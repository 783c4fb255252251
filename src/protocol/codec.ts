/**
 * Value codecs. The default codec is MessagePack with one reused encoder and decoder, and a
 * validation pass that refuses, before anything is written, every value MessagePack would not give
 * back unchanged: functions, symbols, bigints, `undefined` (except as an object property, which is
 * dropped as JSON does), `Map`/`Set` and other class instances, circular structures, structures
 * nested deeper than {@link MAX_DEPTH}, and objects with an own `__proto__` key.
 *
 * @module
 */
import { Decoder, Encoder } from '@msgpack/msgpack';
import { SerializationError } from '../errors.js';
import { FastEncoder } from './fast-encoder.js';

/** Converts values to bytes and back. `encode` must throw for values it cannot represent. */
export interface Codec<V> {
  /** Serializes a value. Throw to refuse it; the library reports it as `E_SERIALIZE`. */
  encode(value: V): Uint8Array;
  /** Deserializes bytes produced by {@link Codec.encode}. Throw for bytes it does not understand. */
  decode(bytes: Uint8Array): V;
}

/** Deepest nesting of arrays and objects the default codec accepts. */
export const MAX_DEPTH = 100;

const objectProto = Object.prototype;

/** Throws a {@link SerializationError} (`E_SERIALIZE`) when msgpack would not round-trip `value`. */
export function assertSerializable(value: unknown): void {
  visit(value, [], 'value');
}

// One recursive walk, no closures: this runs on every write.
function visit(v: unknown, path: unknown[], where: string): void {
  switch (typeof v) {
    case 'string':
      // A lone surrogate would be stored as U+FFFD: refuse instead of changing the value.
      if (!v.isWellFormed()) throw refuse(`a string with a lone surrogate at ${where} cannot be stored`);
      return;
    case 'boolean':
    case 'number':
      return;
    case 'undefined':
      throw refuse(`\`undefined\` at ${where} cannot be stored (use null)`);
    case 'function':
      throw refuse(`a function at ${where} cannot be stored`);
    case 'symbol':
      throw refuse(`a symbol at ${where} cannot be stored`);
    case 'bigint':
      throw refuse(`a bigint at ${where} cannot be stored by the default codec (pass a codec that supports it)`);
    default:
      break;
  }
  if (v === null || v instanceof Uint8Array) return;
  if (v instanceof Date) {
    if (Number.isNaN(v.getTime())) throw refuse(`an invalid Date at ${where} cannot be stored`);
    return;
  }
  if (path.includes(v)) throw refuse(`a circular reference at ${where} cannot be stored`);
  if (path.length >= MAX_DEPTH) throw refuse(`the value is nested deeper than ${MAX_DEPTH} levels at ${where}`);
  path.push(v);
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) {
      if (!(i in v)) throw refuse(`a hole in the array at ${where}[${i}] cannot be stored`);
      const item: unknown = v[i];
      if (typeof item !== 'number' && typeof item !== 'boolean') visit(item, path, `${where}[${i}]`);
    }
  } else {
    const proto: unknown = Object.getPrototypeOf(v);
    if (proto !== objectProto && proto !== null) {
      const name = (v as { constructor?: { name?: string } }).constructor?.name ?? 'object';
      throw refuse(`a ${name} at ${where} cannot be stored by the default codec (only plain objects, arrays, strings, numbers, booleans, null, Date and Uint8Array)`);
    }
    if (Object.getOwnPropertySymbols(v).length > 0) throw refuse(`symbol-keyed properties at ${where} cannot be stored`);
    const record = v as Record<string, unknown>;
    for (const key in record) {
      if (!Object.hasOwn(record, key)) continue;
      if (!key.isWellFormed()) throw refuse(`a property name with a lone surrogate at ${where} cannot be stored`);
      if (key === '__proto__') throw refuse(`an own \`__proto__\` key at ${where} cannot be stored`);
      const item = record[key];
      if (item !== undefined && typeof item !== 'number' && typeof item !== 'boolean') visit(item, path, `${where}.${key}`);
    }
  }
  path.pop();
}

function refuse(message: string): SerializationError {
  return new SerializationError('E_SERIALIZE', message);
}

/**
 * The default codec: MessagePack (`@msgpack/msgpack`), values validated by {@link assertSerializable}.
 * Decoded objects are plain objects; `Date` round-trips through the timestamp extension, binary data
 * comes back as `Uint8Array`.
 */
export function msgpackCodec<V = unknown>(): Codec<V> {
  const encoder = new Encoder({ ignoreUndefined: true, maxDepth: MAX_DEPTH + 1 });
  // Declines at MAX_DEPTH containers above a value, where the validation refuses.
  const fast = new FastEncoder(MAX_DEPTH);
  const decoder = new Decoder();
  return {
    encode(value: V): Uint8Array {
      // Same bytes as the general encoder, several times faster for plain data, and validated in
      // the same pass: it declines every value the validation would refuse (see fast-encoder.ts).
      const quick = fast.encode(value);
      if (quick !== undefined) return quick;
      assertSerializable(value);
      // encodeSharedRef + a copy into Node's pooled slab costs a third of encode()'s fresh ArrayBuffer.
      const shared = encoder.encodeSharedRef(value);
      const out = Buffer.allocUnsafe(shared.length);
      out.set(shared);
      return out;
    },
    decode(bytes: Uint8Array): V {
      // Binary fields are views of the input: decode from a plain Uint8Array so they are not Buffers.
      const plain = Buffer.isBuffer(bytes) ? new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength) : bytes;
      return decoder.decode(plain) as V;
    },
  };
}
