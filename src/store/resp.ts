/**
 * Commands sent as bytes framed here, in one buffer, instead of by ioredis argument by argument.
 *
 * A flush sends script calls of hundreds of keys. ioredis frames each argument on its own (a
 * string built per argument, its UTF-8 length measured twice, a list of pieces copied once more),
 * which showed as a large share of a flush's client time. {@link FramedCommand} is an ioredis
 * `Command` whose wire form is written by the caller with the helpers below; ioredis uses the same
 * extension point (`toWritable`) for its own scripts. The command keeps a short argument list (the
 * script, one key) so that ioredis still routes it to the right Cluster node, and redirects and
 * re-sends it (MOVED, ASK, offline queue) like any other command.
 *
 * @module
 */
import { Command } from 'ioredis';

/** An argument of a framed command: strings are sent as UTF-8, numbers in decimal (as ioredis does). */
export type FrameArg = string | Buffer | number;

/** Bytes of the decimal digits of a non-negative integer. */
function digits(n: number): number {
  let d = 1;
  while (n >= 10) {
    n = Math.floor(n / 10);
    d++;
  }
  return d;
}

/** Writes `n` in decimal at `at`; returns the offset after it. */
function writeDecimal(out: Buffer, at: number, n: number): number {
  const end = at + digits(n);
  let i = end;
  do {
    out[--i] = 0x30 + (n % 10);
    n = Math.floor(n / 10);
  } while (n > 0);
  return end;
}

/** Writes `\r\n` at `at`; returns the offset after it. */
export function writeCrlf(out: Buffer, at: number): number {
  out[at] = 0x0d;
  out[at + 1] = 0x0a;
  return at + 2;
}

/** Bytes of a bulk string of `bytes` bytes: `$<bytes>\r\n<data>\r\n`. */
export function bulkLength(bytes: number): number {
  return 1 + digits(bytes) + 2 + bytes + 2;
}

/** Writes the header `$<bytes>\r\n` of a bulk string; returns the offset of its data. */
export function writeBulkHeader(out: Buffer, at: number, bytes: number): number {
  out[at] = 0x24;
  return writeCrlf(out, writeDecimal(out, at + 1, bytes));
}

/**
 * Writes a key as one bulk string, `$<len>\r\n<prefix><key>\r\n`, where `keyBytes` is the UTF-8
 * length of `key`; returns the offset after it. Its size is `bulkLength(prefix.length + keyBytes)`.
 */
export function writePrefixedKey(out: Buffer, at: number, prefix: Uint8Array, key: string, keyBytes: number): number {
  at = writeBulkHeader(out, at, prefix.length + keyBytes);
  out.set(prefix, at);
  at += prefix.length;
  at += out.write(key, at, keyBytes, 'utf8');
  return writeCrlf(out, at);
}

function argBytes(arg: FrameArg): number {
  return typeof arg === 'string' ? Buffer.byteLength(arg, 'utf8') : typeof arg === 'number' ? String(arg).length : arg.length;
}

/** Bytes of one argument framed by {@link writeArg}. */
export function argLength(arg: FrameArg): number {
  return bulkLength(argBytes(arg));
}

/** Writes one argument as a bulk string; returns the offset after it. */
export function writeArg(out: Buffer, at: number, arg: FrameArg): number {
  const bytes = argBytes(arg);
  at = writeBulkHeader(out, at, bytes);
  if (typeof arg === 'string') out.write(arg, at, bytes === arg.length ? 'latin1' : 'utf8');
  else if (typeof arg === 'number') out.write(String(arg), at, 'latin1');
  else out.set(arg, at);
  return writeCrlf(out, at + bytes);
}

/** Bytes of the start of a command of `count` arguments after its name: `*<count + 1>` and the name. */
export function frameLength(name: string, count: number): number {
  return 1 + digits(count + 1) + 2 + argLength(name);
}

/** Writes the start of a command (array header and name); returns the offset of its first argument. */
export function writeFrameStart(out: Buffer, name: string, count: number): number {
  out[0] = 0x2a;
  const at = writeCrlf(out, writeDecimal(out, 1, count + 1));
  return writeArg(out, at, name);
}

/** The RESP form of a whole command in one buffer: `*<n>\r\n` then `$<len>\r\n<bytes>\r\n` per part. */
export function frameCommand(name: string, args: readonly FrameArg[]): Buffer {
  let size = frameLength(name, args.length);
  for (const arg of args) size += argLength(arg);
  const out = Buffer.allocUnsafe(size);
  let at = writeFrameStart(out, name, args.length);
  for (const arg of args) at = writeArg(out, at, arg);
  return out;
}

/**
 * An ioredis command whose bytes on the wire are `frame`; `route` is the argument list ioredis
 * sees, for routing and logs only: it must name the same command and a key of the same hash slot.
 * Replies are Buffers, as with `callBuffer`.
 */
export class FramedCommand extends Command {
  private readonly frame: Buffer;

  constructor(name: string, route: FrameArg[], frame: Buffer) {
    super(name, route, { replyEncoding: null });
    this.frame = frame;
  }

  override toWritable(): Buffer {
    return this.frame;
  }
}
