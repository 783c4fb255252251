/**
 * A MessagePack encoder for the shapes most values have — plain objects, arrays, strings, numbers,
 * booleans and null — writing the same bytes as `@msgpack/msgpack`'s `Encoder` with
 * `ignoreUndefined` (smallest header for every length, integers as integers, other numbers as
 * float 64, object keys in `Object.keys` order, `undefined` properties left out).
 *
 * It exists for speed: every write encodes its value, and the general encoder spends most of its
 * time encoding UTF-8 in JavaScript, one character at a time; here strings are written by Node's
 * native `Buffer#write`. A value holding anything else (a `Date`, binary data, a class instance) is
 * left to the general encoder: {@link FastEncoder.encode} returns `undefined` for it.
 *
 * It also validates, in the same pass: it declines (returns `undefined`) every value the codec's
 * validation (`assertSerializable`) would refuse — a lone surrogate in a string or a property name,
 * an own `__proto__` key, symbol-keyed properties, an array hole or `undefined` element, nesting
 * beyond its depth limit (which also stops a cycle), anything not a plain value. So a value it
 * encodes never needs the separate validation walk; a declined one gets the general path, which
 * validates (and throws the precise error) before encoding.
 *
 * @module
 */

import { writeUint } from './messages.js';

const objectProto = Object.prototype;
/** Strings up to this many characters are written by a JavaScript loop when they are ASCII. */
const SHORT_STRING = 24;
/**
 * Called as `charCodeAt.call(s, i)`, not `s.charCodeAt(i)`: once any code declares a subclass of
 * `String` (ioredis does, for RESP3 verbatim strings), V8 stops inlining the method form, which
 * then costs 3-4 times as much; the call of the builtin held here is inlined either way.
 */
const charCodeAt = String.prototype.charCodeAt;

/** Encodes common values to MessagePack; see the module documentation. */
export class FastEncoder {
  private buf: Buffer;
  private pos = 0;

  /**
   * @param maxDepth - nesting beyond which the value is left to the general encoder.
   * @param initialBytes - initial size of the reused output buffer (it grows as needed).
   */
  constructor(
    private readonly maxDepth: number,
    initialBytes = 2048,
  ) {
    this.buf = Buffer.allocUnsafe(initialBytes);
  }

  /**
   * The encoded bytes (a fresh Buffer), or `undefined` when the value needs the general encoder
   * (it holds something this encoder does not write, or something the validation would refuse).
   */
  encode(value: unknown): Buffer | undefined {
    this.pos = 0;
    if (!this.write(value, 0)) return undefined;
    const out = Buffer.allocUnsafe(this.pos);
    // TypedArray#set: about 40 ns less than Buffer#copy (its argument checks) for a small value.
    out.set(this.buf.subarray(0, this.pos));
    return out;
  }

  private ensure(bytes: number): void {
    if (this.pos + bytes <= this.buf.length) return;
    const bigger = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + bytes));
    this.buf.copy(bigger, 0, 0, this.pos);
    this.buf = bigger;
  }

  private write(v: unknown, depth: number): boolean {
    switch (typeof v) {
      case 'string':
        return this.string(v);
      case 'number':
        this.number(v);
        return true;
      case 'boolean':
        this.ensure(1);
        this.buf[this.pos++] = v ? 0xc3 : 0xc2;
        return true;
      case 'object':
        break;
      default:
        return false;
    }
    if (v === null) {
      this.ensure(1);
      this.buf[this.pos++] = 0xc0;
      return true;
    }
    if (depth >= this.maxDepth) return false;
    if (Array.isArray(v)) {
      this.header(v.length, 0x90, 0xdc);
      for (let i = 0; i < v.length; i++) if (!this.write(v[i], depth + 1)) return false;
      return true;
    }
    const proto: unknown = Object.getPrototypeOf(v);
    if (proto !== objectProto && proto !== null) return false;
    // Symbol-keyed properties would be lost: the validation refuses them.
    if (Object.getOwnPropertySymbols(v).length > 0) return false;
    // Each property is read once (a getter could answer differently the second time): the body is
    // written after a header sized for every key, and moved when fewer are written.
    const record = v as Record<string, unknown>;
    const keys = Object.keys(record);
    const start = this.pos;
    const reserved = mapHeaderBytes(keys.length);
    this.ensure(reserved);
    this.pos += reserved;
    let size = 0;
    for (let i = 0; i < keys.length; i++) {
      const key = keys[i]!;
      const item = record[key];
      // An own `__proto__` key (as JSON.parse makes) would come back as the prototype: refused,
      // like a name with a lone surrogate, even when its value is undefined (left out).
      if (key === '__proto__') return false;
      if (item === undefined) {
        if (!key.isWellFormed()) return false;
        continue;
      }
      if (!this.string(key)) return false;
      if (!this.write(item, depth + 1)) return false;
      size++;
    }
    const need = mapHeaderBytes(size);
    if (need !== reserved) {
      this.buf.copy(this.buf, start + need, start + reserved, this.pos);
      this.pos -= reserved - need;
    }
    putHeader(this.buf, start, size, 0x80, 0xde);
    return true;
  }

  /** Array header at the end of the output. */
  private header(size: number, fix: number, wide: number): void {
    this.ensure(5);
    this.pos = putHeader(this.buf, this.pos, size, fix, wide);
  }

  /** Writes a string; false (nothing written) for one with a lone surrogate, which the validation refuses. */
  private string(s: string): boolean {
    // Reserve the header for the smallest possible byte length (the character count), write the
    // UTF-8 bytes after it, and move them if the real length needs a longer header.
    const chars = s.length;
    this.ensure(5 + 3 * chars);
    const guess = headerBytes(chars);
    const start = this.pos + guess;
    const bytes = chars <= SHORT_STRING ? this.writeShort(s, start) : s.isWellFormed() ? this.buf.write(s, start, 'utf8') : -1;
    if (bytes < 0) return false;
    const need = headerBytes(bytes);
    if (need !== guess) this.buf.copy(this.buf, this.pos + need, start, start + bytes);
    const { buf, pos } = this;
    if (need === 1) {
      buf[pos] = 0xa0 + bytes;
    } else if (need === 2) {
      buf[pos] = 0xd9;
      buf[pos + 1] = bytes;
    } else if (need === 3) {
      buf[pos] = 0xda;
      buf.writeUInt16BE(bytes, pos + 1);
    } else {
      buf[pos] = 0xdb;
      buf.writeUInt32BE(bytes, pos + 1);
    }
    this.pos += need + bytes;
    return true;
  }

  /**
   * Writes a short string in JavaScript (a native call costs more); returns its UTF-8 length, or
   * -1 for a string with a lone surrogate (an ASCII string never has one).
   */
  private writeShort(s: string, at: number): number {
    const { buf } = this;
    for (let i = 0; i < s.length; i++) {
      const c = charCodeAt.call(s, i);
      // Not ASCII: let Node encode the whole string.
      if (c >= 0x80) return s.isWellFormed() ? buf.write(s, at, 'utf8') : -1;
      buf[at + i] = c;
    }
    return s.length;
  }

  private number(n: number): void {
    this.ensure(9);
    const { buf, pos } = this;
    if (!Number.isSafeInteger(n)) {
      buf[pos] = 0xcb;
      buf.writeDoubleBE(n, pos + 1);
      this.pos += 9;
    } else if (n >= 0) {
      this.pos = writeUint(buf, pos, n);
    } else if (n >= -0x20) {
      buf[pos] = 0xe0 | (n + 0x20);
      this.pos += 1;
    } else if (n >= -0x80) {
      buf[pos] = 0xd0;
      buf.writeInt8(n, pos + 1);
      this.pos += 2;
    } else if (n >= -0x8000) {
      buf[pos] = 0xd1;
      buf.writeInt16BE(n, pos + 1);
      this.pos += 3;
    } else if (n >= -0x80000000) {
      buf[pos] = 0xd2;
      buf.writeInt32BE(n, pos + 1);
      this.pos += 5;
    } else {
      buf[pos] = 0xd3;
      buf.writeBigInt64BE(BigInt(n), pos + 1);
      this.pos += 9;
    }
  }
}

/**
 * Writes an array (`fix` = 0x90, `wide` = 0xdc) or map (0x80, 0xde) header of `size` entries at
 * `pos` (room must exist); returns the position after it.
 */
function putHeader(buf: Buffer, pos: number, size: number, fix: number, wide: number): number {
  if (size < 16) {
    buf[pos] = fix + size;
    return pos + 1;
  }
  if (size < 0x10000) {
    buf[pos] = wide;
    buf.writeUInt16BE(size, pos + 1);
    return pos + 3;
  }
  buf[pos] = wide + 1;
  buf.writeUInt32BE(size, pos + 1);
  return pos + 5;
}

/** Bytes of a MessagePack map header for `size` entries. */
function mapHeaderBytes(size: number): number {
  return size < 16 ? 1 : size < 0x10000 ? 3 : 5;
}

/** Bytes of a MessagePack str header for a string of `bytes` UTF-8 bytes. */
function headerBytes(bytes: number): number {
  return bytes < 32 ? 1 : bytes < 0x100 ? 2 : bytes < 0x10000 ? 3 : 5;
}
