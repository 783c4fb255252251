/**
 * Generators of pub/sub frames for the decoder fuzz: valid frames built with the library's own
 * encoders, mutations of them, random bytes, frames of the wrong schema, and a corpus of known
 * hostile inputs.
 *
 * @module
 */
import { Encoder } from '@msgpack/msgpack';
import fc from 'fast-check';
import { encodeEntry, encodeHeader, type MessageType } from '../src/protocol/messages.js';
import { formatStamp } from '../src/protocol/stamp.js';

/** A frame before encoding. */
export interface FrameSpec {
  readonly type: MessageType;
  readonly origin: string;
  readonly seq: number;
  readonly group: number;
  readonly entries: readonly { readonly key: string; readonly stamp: string; readonly payload: Uint8Array | undefined }[];
}

/** The array header the apply script appends (`arr()` in src/store/scripts.ts). */
export function arrayHeader(count: number): Buffer {
  if (count < 16) return Buffer.from([0x90 + count]);
  if (count < 65536) return Buffer.from([0xdc, count >> 8, count & 0xff]);
  return Buffer.from([0xdd, (count >>> 24) & 0xff, (count >>> 16) & 0xff, (count >>> 8) & 0xff, count & 0xff]);
}

/** Encodes a frame exactly as the writer and the Lua script do: header, array header, fragments. */
export function buildFrame(spec: FrameSpec): Buffer {
  return Buffer.concat([
    encodeHeader(spec.type, spec.origin, spec.seq, spec.group),
    arrayHeader(spec.entries.length),
    ...spec.entries.map((e) => encodeEntry(e.key, e.stamp, spec.type === 'u' ? e.payload : undefined)),
  ]);
}

export const nodeArb = fc.stringMatching(/^[0-9a-f]{16}$/);
export const stampArb = fc
  .tuple(fc.integer({ min: 0, max: 2 ** 48 - 1 }), fc.integer({ min: 0, max: 0xffffff }), nodeArb)
  .map(([ms, counter, node]) => formatStamp(ms, counter, node));
const keyArb = fc.oneof(
  fc.string({ minLength: 1, maxLength: 12 }),
  fc.constantFrom('__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'k/1', '{tag}x', '*', '\u0000probe:x'),
  fc.string({ unit: 'grapheme', minLength: 1, maxLength: 6 }),
);
const payloadEncoder = new Encoder();
const payloadArb = fc.oneof(
  { weight: 10, arbitrary: fc.uint8Array({ maxLength: 40 }) },
  { weight: 10, arbitrary: fc.jsonValue({ maxDepth: 2 }).map((v) => payloadEncoder.encode(v)) },
  // bin16 and bin32 headers
  { weight: 1, arbitrary: fc.integer({ min: 256, max: 70_000 }).map((n) => new Uint8Array(n).fill(n & 0xff)) },
);

export const frameSpecArb: fc.Arbitrary<FrameSpec> = fc.record({
  type: fc.constantFrom<MessageType>('u', 'd'),
  origin: nodeArb,
  seq: fc.oneof(fc.integer({ min: 1, max: 1000 }), fc.constantFrom(2 ** 31, 2 ** 32, 2 ** 53 - 2, Number.MAX_SAFE_INTEGER)),
  group: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 16383 })),
  entries: fc.array(fc.record({ key: keyArb, stamp: stampArb, payload: fc.option(payloadArb, { nil: undefined }) }), { maxLength: 5 }),
});

/** Byte sequences that announce far more data than follows. */
const HUGE_HEADERS: readonly number[][] = [
  [0xdd, 0xff, 0xff, 0xff, 0xff], // array32 of 4 G items
  [0xdc, 0xff, 0xff], // array16 of 65 535 items
  [0xc6, 0xff, 0xff, 0xff, 0xff], // bin32 of 4 GiB
  [0xc6, 0x7f, 0xff, 0xff, 0xff],
  [0xdb, 0xff, 0xff, 0xff, 0xff], // str32 of 4 GiB
  [0xdf, 0xff, 0xff, 0xff, 0xff], // map32 of 4 G pairs
  [0xc9, 0xff, 0xff, 0xff, 0xff, 0x01], // ext32
  [0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // uint64 max
  [0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0], // int64 min
  [0xc1], // never-used byte
  [0xd4, 0xff, 0x00], // fixext1, timestamp type -1, wrong size
  [0xd6, 0xff, 0, 0, 0, 0], // timestamp32 ext
];

type Mutation =
  | { readonly op: 'flip'; readonly at: number; readonly bit: number }
  | { readonly op: 'truncate'; readonly at: number }
  | { readonly op: 'insert'; readonly at: number; readonly bytes: Uint8Array }
  | { readonly op: 'delete'; readonly at: number; readonly count: number }
  | { readonly op: 'set'; readonly at: number; readonly byte: number }
  | { readonly op: 'huge'; readonly at: number; readonly which: number }
  | { readonly op: 'append'; readonly bytes: Uint8Array };

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ op: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ op: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }) }),
  fc.record({ op: fc.constant('delete' as const), at: fc.nat(), count: fc.integer({ min: 1, max: 8 }) }),
  fc.record({ op: fc.constant('set' as const), at: fc.nat(), byte: fc.oneof(fc.integer({ min: 0, max: 255 }), fc.constantFrom(0xc1, 0xc0, 0x80, 0x81, 0xde, 0xdd, 0x96, 0x97, 0xa0, 0xff)) }),
  fc.record({ op: fc.constant('huge' as const), at: fc.nat(), which: fc.nat() }),
  fc.record({ op: fc.constant('append' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }) }),
);

function mutate(bytes: Buffer, mutations: readonly Mutation[]): Buffer {
  let out = Buffer.from(bytes);
  for (const m of mutations) {
    const at = out.length === 0 ? 0 : ('at' in m ? m.at % (out.length + 1) : 0);
    switch (m.op) {
      case 'flip':
        if (out.length > 0) out[at % out.length]! ^= 1 << m.bit;
        break;
      case 'truncate':
        out = out.subarray(0, at);
        break;
      case 'insert':
        out = Buffer.concat([out.subarray(0, at), m.bytes, out.subarray(at)]);
        break;
      case 'delete':
        out = Buffer.concat([out.subarray(0, at), out.subarray(at + m.count)]);
        break;
      case 'set':
        if (out.length > 0) out[at % out.length] = m.byte;
        break;
      case 'huge':
        out = Buffer.concat([out.subarray(0, at), Buffer.from(HUGE_HEADERS[m.which % HUGE_HEADERS.length]!), out.subarray(at)]);
        break;
      case 'append':
        out = Buffer.concat([out, m.bytes]);
        break;
    }
  }
  return out;
}

/** A valid frame, and the same frame after 1-4 mutations. */
export const mutatedFrameArb = fc
  .tuple(frameSpecArb, fc.array(mutationArb, { minLength: 1, maxLength: 4 }))
  .map(([spec, mutations]) => ({ spec, valid: buildFrame(spec), mutated: mutate(buildFrame(spec), mutations) }));

/** Random bytes, sometimes starting like a frame. */
export const randomBytesArb = fc.oneof(
  fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b)),
  fc.tuple(fc.constantFrom(0x96, 0x95, 0x97, 0xdc, 0xdd), fc.uint8Array({ maxLength: 200 })).map(([h, b]) => Buffer.concat([Buffer.from([h]), b])),
);

const anyValueArb = fc.oneof(
  fc.jsonValue({ maxDepth: 3 }),
  fc.uint8Array({ maxLength: 20 }),
  fc.constantFrom(null, true, false, -1, 0, 1.5, 2 ** 53, -(2 ** 63), '', 'u', 'd', 'x', NaN, Infinity),
  fc.date({ noInvalidDate: true }),
  fc.constantFrom('{"__proto__":{"polluted":"yes"}}', '{"constructor":{"prototype":{"polluted":"yes"}}}', '{"__proto__":[],"a":1}').map((json) => JSON.parse(json) as unknown),
);

const schemaEncoder = new Encoder({ ignoreUndefined: false });

/**
 * Well-formed MessagePack of the wrong shape: a 6-item array with some items replaced by arbitrary
 * values (including maps with `__proto__` / `constructor` keys), entries of the wrong arity, or a
 * map instead of the array.
 */
export const wrongSchemaArb = fc
  .tuple(frameSpecArb, fc.array(fc.tuple(fc.integer({ min: 0, max: 7 }), anyValueArb), { minLength: 1, maxLength: 3 }), fc.boolean())
  .map(([spec, replacements, asObject]) => {
    const items: unknown[] = [1, spec.type, spec.origin, spec.seq, spec.group, spec.entries.map((e) => (e.payload === undefined ? [e.key, e.stamp] : [e.key, e.stamp, e.payload]))];
    for (const [index, value] of replacements) {
      if (index < 6) items[index] = value;
      else if (index === 6 && Array.isArray(items[5])) (items[5] as unknown[]).push(value);
      else items.push(value);
    }
    const shaped = asObject ? Object.fromEntries(items.map((v, i) => [i === 0 ? '__proto__' : i === 1 ? 'constructor' : String(i), v])) : items;
    return Buffer.from(schemaEncoder.encode(shaped));
  });

/** Known hostile inputs, each tried once. */
export function corpus(): Buffer[] {
  const origin = '0123456789abcdef';
  const stamp = formatStamp(1_700_000_000_000, 0, origin);
  const header = encodeHeader('u', origin, 1, 0);
  const deep = 200_000;
  const items: Buffer[] = [
    Buffer.alloc(0),
    Buffer.from([0xc1]),
    Buffer.from([0xc0]),
    Buffer.concat([header]), // header only, entries missing
    Buffer.concat([buildFrame({ type: 'u', origin, seq: 1, group: 0, entries: [{ key: 'k', stamp, payload: undefined }] }), Buffer.from([0x00])]), // trailing byte
    Buffer.concat([header, Buffer.from([0xdd, 0xff, 0xff, 0xff, 0xff])]), // 4 G entries announced
    Buffer.concat([header, Buffer.from([0x91, 0x93, 0xa1, 0x6b, 0xd9, 34]), Buffer.from(stamp), Buffer.from([0xc6, 0xff, 0xff, 0xff, 0xff])]), // 4 GiB payload announced
    Buffer.concat([header, Buffer.from([0x91, 0x92, 0xdb, 0xff, 0xff, 0xff, 0xff])]), // 4 GiB key announced
    Buffer.concat([Buffer.alloc(deep, 0x91), Buffer.from([0xc0])]), // 200k-deep nesting
    Buffer.concat([header.subarray(0, header.length), Buffer.alloc(deep, 0x91), Buffer.from([0xc0])]),
    Buffer.concat([header, Buffer.from([0x91, 0x81, 0xa9]), Buffer.from('__proto__'), Buffer.from([0x81, 0xa8]), Buffer.from('polluted'), Buffer.from([0xc3])]),
    Buffer.concat([header, Buffer.from([0x91, 0x81, 0xab]), Buffer.from('constructor'), Buffer.from([0x81, 0xa9]), Buffer.from('prototype'), Buffer.from([0xc3])]),
    Buffer.concat([Buffer.from([0x81, 0xa9]), Buffer.from('__proto__'), Buffer.from([0x81, 0xa8]), Buffer.from('polluted'), Buffer.from([0xc3])]),
    Buffer.concat([header, Buffer.from([0x91, 0x92, 0xa1, 0x6b, 0xd6, 0xff, 0, 0, 0, 1])]), // timestamp ext as stamp
    Buffer.concat([header, Buffer.from([0x91, 0x92, 0xa1, 0x6b, 0xd4, 0x05, 0x00])]), // unknown ext as stamp
    Buffer.from(schemaEncoder.encode([1, 'u', origin, 0, 0, []])), // seq 0 (the probe range)
    Buffer.from(schemaEncoder.encode([1, 'u', origin, -1, 0, []])),
    Buffer.from(schemaEncoder.encode([1, 'u', origin, 1, 16384, []])),
    Buffer.from(schemaEncoder.encode([1, 'u', origin, 1.5, 0, []])),
    Buffer.from(schemaEncoder.encode([2, 'u', origin, 1, 0, []])),
    Buffer.from(schemaEncoder.encode([1, 'd', origin, 1, 0, [['k', stamp, new Uint8Array([1])]]])), // delete with a value
    Buffer.from(schemaEncoder.encode([1, 'u', origin.toUpperCase(), 1, 0, []])),
    Buffer.from(schemaEncoder.encode([1, 'u', origin, 1, 0, [['', stamp]]])),
    Buffer.from(schemaEncoder.encode([1, 'u', origin, 1, 0, [['k', stamp.toUpperCase()]]])),
    Buffer.from(schemaEncoder.encode([1, 'u', origin, 1, 0, [['k', stamp, 'not bytes']]])),
    Buffer.from(schemaEncoder.encode([1, 'u', origin, 1, 0, [['k', stamp, new Uint8Array(1), 4, 5]]])), // five items (the fourth, an expiry time, is valid)
    Buffer.from(schemaEncoder.encode([1, 'u', origin, 1, 0, [['k', stamp, new Uint8Array(1), -4]]])), // negative expiry time
    Buffer.from(schemaEncoder.encode([1, 'u', origin, 1, 0, [['k', stamp, new Uint8Array(1), 4.5]]])), // fractional expiry time
    Buffer.from(schemaEncoder.encode([1, 'u', origin, 1, 0, {}])),
    Buffer.from(schemaEncoder.encode(JSON.parse('[1,"u","0123456789abcdef",1,0,[{"__proto__":{"polluted":"yes"}}]]'))),
  ];
  return items;
}
