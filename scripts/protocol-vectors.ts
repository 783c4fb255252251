/**
 * Generates `docs/protocol-vectors.json`, the conformance vectors of docs/protocol.md: stamps and
 * the clock, keys, stored records, value payloads, message frames, channel names, and calls of the
 * apply script with the reply and the published messages they must produce.
 *
 *   npx tsx scripts/protocol-vectors.ts           # writes docs/protocol-vectors.json
 *   npx tsx scripts/protocol-vectors.ts --check   # exits 1 when the committed file differs
 *
 * Deterministic: fixed writer ids, wall-clock readings and values; no randomness, no Redis. Inputs
 * are turned into bytes by the library's own code (the vectors record what it does), and the
 * expected outcome of every script call is derived from the protocol's rules here (a write applies
 * when the stored stamp is lower than its guard), so that `test/integration/protocol-vectors.test.ts`
 * checks the Lua script against the specification, not against itself.
 *
 * To add a case, append to one of the lists below and run the generator; the tests pick it up.
 *
 * @module
 */
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { msgpackCodec } from '../src/protocol/codec.js';
import { normalizeKey } from '../src/protocol/keys.js';
import { encodeEntry, encodeHeader, type MessageType } from '../src/protocol/messages.js';
import { EXPIRING_RECORD_TAG, RECORD_TAG, TOMBSTONE_TAG, changeHeaderLength, writeChange } from '../src/protocol/record.js';
import { APPLY_SHA, ApplyUnit } from '../src/store/scripts.js';
import { formatStamp, HybridClock, MAX_DRIFT_MS, type Stamp, ZERO_STAMP } from '../src/protocol/stamp.js';
import { FrameSigner, TAG_BYTES } from '../src/protocol/signing.js';
import { type PreparedChange, type PublishTarget } from '../src/store/types.js';
import { slotTag, channelNames } from '../src/protocol/channels.js';

/** Where the vectors are committed. */
export const VECTORS_PATH = fileURLToPath(new URL('../docs/protocol-vectors.json', import.meta.url));

/** Version of the wire and storage format these vectors describe (the first item of every message). */
export const PROTOCOL_VERSION = 1;

const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex');

// ------------------------------------------------------------------------------------ values

/**
 * A value in the vectors: JSON, with tagged objects for what JSON cannot say:
 * `{"$bin": hex}` (binary), `{"$date": ms}` (a Date), `{"$float64": hex of the 8 IEEE-754 bytes}`.
 */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** The JavaScript value of a vector value (see {@link JsonValue}). */
export function fromJson(value: JsonValue): unknown {
  if (Array.isArray(value)) return value.map(fromJson);
  if (value !== null && typeof value === 'object') {
    const bin = value['$bin'];
    if (typeof bin === 'string') return new Uint8Array(Buffer.from(bin, 'hex'));
    const date = value['$date'];
    if (typeof date === 'number') return new Date(date);
    const f64 = value['$float64'];
    if (typeof f64 === 'string') return Buffer.from(f64, 'hex').readDoubleBE(0);
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, fromJson(v)]));
  }
  return value;
}

const float64 = (n: number): JsonValue => {
  const b = Buffer.alloc(8);
  b.writeDoubleBE(n);
  return { $float64: b.toString('hex') };
};

/** Payload vectors of the default codec: integer widths, floats, strings, binary, dates, maps. */
const CODEC_VALUES: { name: string; value: JsonValue }[] = [
  { name: 'null', value: null },
  { name: 'booleans', value: [true, false] },
  { name: 'positive fixint 0 and 127', value: [0, 127] },
  { name: 'uint8 128 and 255', value: [128, 255] },
  { name: 'uint16 256 and 65535', value: [256, 65535] },
  { name: 'uint32 65536 and 2^32-1', value: [65536, 4294967295] },
  { name: 'uint64 2^32 and 2^53-1', value: [4294967296, 9007199254740991] },
  { name: 'negative fixint -1 and -32', value: [-1, -32] },
  { name: 'int8 -33 and -128', value: [-33, -128] },
  { name: 'int16 -129 and -32768', value: [-129, -32768] },
  { name: 'int32 -32769 and -2^31', value: [-32769, -2147483648] },
  { name: 'int64 -2^31-1 and -(2^53-1)', value: [-2147483649, -9007199254740991] },
  { name: '2^53 is not a safe integer: float 64', value: float64(2 ** 53) },
  { name: '1.5 and 0.1: float 64', value: [1.5, 0.1] },
  { name: '-0 is written as the integer 0', value: float64(-0) },
  { name: 'strings: fixstr, str8, utf-8', value: ['', 'a', 'x'.repeat(32), 'é', '🔑'] },
  { name: 'binary: bin8', value: { $bin: '00ff10' } },
  { name: 'a Date: timestamp extension -1 (timestamp 64 here)', value: { $date: 1_700_000_000_123 } },
  { name: 'a map keeps the key order', value: { b: 1, a: [1, 'two', { c: null }] } },
  { name: 'a map with 16 keys: map16', value: Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`k${i}`, i])) },
  { name: 'an array of 16 items: array16', value: Array.from({ length: 16 }, (_, i) => i) },
];

// ------------------------------------------------------------------------------------ stamps

const NODE_A = '0123456789abcdef';
const NODE_B = 'fedcba9876543210';
const T0 = 1_700_000_000_000;
const stamp = (ms: number, counter: number, node = NODE_A): Stamp => formatStamp(ms, counter, node);

type ClockStep = { wall: number; op: 'now'; expect: Stamp } | { wall: number; op: 'observe'; stamp: Stamp };

/** Clock scenarios: wall-clock readings and operations; `now` steps get the stamp the clock must return. */
const CLOCK_SCENARIOS: { name: string; node: string; steps: ({ wall: number; op: 'now' } | { wall: number; op: 'observe'; stamp: Stamp })[] }[] = [
  {
    name: 'the counter starts at 0 in a new millisecond and counts within one',
    node: NODE_A,
    steps: [
      { wall: T0, op: 'now' },
      { wall: T0, op: 'now' },
      { wall: T0, op: 'now' },
      { wall: T0 + 1, op: 'now' },
    ],
  },
  {
    name: 'a wall clock that goes back does not make stamps go back',
    node: NODE_A,
    steps: [
      { wall: T0, op: 'now' },
      { wall: T0 - 5000, op: 'now' },
      { wall: T0 + 1, op: 'now' },
    ],
  },
  {
    name: 'observing a newer stamp adopts its millisecond and counter',
    node: NODE_A,
    steps: [
      { wall: T0, op: 'now' },
      { wall: T0, op: 'observe', stamp: stamp(T0 + 1000, 7, NODE_B) },
      { wall: T0, op: 'now' },
      { wall: T0 + 1000, op: 'now' },
      { wall: T0 + 1001, op: 'now' },
    ],
  },
  {
    name: 'observing an older stamp changes nothing',
    node: NODE_A,
    steps: [
      { wall: T0, op: 'now' },
      { wall: T0, op: 'observe', stamp: stamp(T0 - 1, 99, NODE_B) },
      { wall: T0, op: 'now' },
    ],
  },
  {
    name: 'counter overflow: past 0xffffff the millisecond moves on by one',
    node: NODE_A,
    steps: [
      { wall: T0, op: 'observe', stamp: stamp(T0, 0xfffffe, NODE_B) },
      { wall: T0, op: 'now' },
      { wall: T0, op: 'now' },
      { wall: T0, op: 'now' },
    ],
  },
  {
    name: 'a stamp more than MAX_DRIFT_MS (one day) ahead is followed only up to wall + one day (clamped, counter 0)',
    node: NODE_A,
    steps: [
      { wall: T0, op: 'observe', stamp: stamp(T0 + 10 * MAX_DRIFT_MS, 5, NODE_B) },
      { wall: T0, op: 'now' },
      { wall: T0, op: 'observe', stamp: stamp(T0 + MAX_DRIFT_MS, 3, NODE_B) },
      { wall: T0, op: 'now' },
    ],
  },
];

function clockVectors(): { name: string; node: string; steps: ClockStep[] }[] {
  return CLOCK_SCENARIOS.map(({ name, node, steps }) => {
    let wall = 0;
    const clock = new HybridClock(node, () => wall);
    const out: ClockStep[] = steps.map((step) => {
      wall = step.wall;
      if (step.op === 'observe') {
        clock.observe(step.stamp);
        return step;
      }
      return { wall: step.wall, op: 'now', expect: clock.now() };
    });
    return { name, node, steps: out };
  });
}

// ------------------------------------------------------------------------------------ keys

/** Keys as given by a caller: a string, or a number given by its IEEE-754 bytes (`float64`). */
const KEY_INPUTS: ({ string: string } | { number: number })[] = [
  { string: 'user:42' },
  { string: '1' },
  { string: 'a/b*c?[d]{e} f' },
  { string: 'ключ 🔑' },
  { number: 1 },
  { number: 1.0 },
  { number: -0 },
  { number: 0.1 },
  { number: 1.5e-7 },
  { number: 1e21 },
  { number: 123456789012345680000 },
  { number: 2 ** 53 },
  { number: -42.5 },
];

// ------------------------------------------------------------------------------------ messages

/** The MessagePack array header the script writes before the applied entries. */
export function arrayHeader(count: number): Buffer {
  if (count < 16) return Buffer.from([0x90 + count]);
  if (count < 0x10000) return Buffer.from([0xdc, count >> 8, count & 0xff]);
  const out = Buffer.alloc(5);
  out[0] = 0xdd;
  out.writeUInt32BE(count, 1);
  return out;
}

interface FrameEntry {
  key: string;
  stamp: Stamp;
  payload?: Uint8Array;
  expiresAt?: number;
}

function frameHex(type: MessageType, origin: string, seq: number, group: number, entries: readonly FrameEntry[]): string {
  const parts = [encodeHeader(type, origin, seq, group), arrayHeader(entries.length), ...entries.map((e) => encodeEntry(e.key, e.stamp, e.payload, e.expiresAt))];
  return hex(Buffer.concat(parts));
}

/** A signed frame's parts before its tag: the version-2 header, the array header, the entries. */
function signedParts(type: MessageType, origin: string, seq: number, group: number, entries: readonly FrameEntry[]): Buffer {
  return Buffer.concat([encodeHeader(type, origin, seq, group, true), arrayHeader(entries.length), ...entries.map((e) => encodeEntry(e.key, e.stamp, e.payload))]);
}

/** Signing keys of the vectors: a string key (UTF-8 bytes) and a 32-byte binary one. */
const SIGNING_KEYS = ['vectors: a signing key of at least 32 bytes', Buffer.from('000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f', 'hex')] as const;

function signedFrameVector(name: string, key: string | Buffer, channel: string, type: MessageType, seq: number, entries: readonly FrameEntry[]) {
  const signer = FrameSigner.fromOption('vectors', [key])!;
  const body = signedParts(type, NODE_A, seq, 0, entries);
  const tags = signer.tags(Buffer.from(channel, 'utf8'), [body]);
  return {
    name,
    key: typeof key === 'string' ? { utf8: key } : { hex: hex(key) },
    channel,
    body: hex(body),
    allTag: hex(tags.subarray(0, TAG_BYTES)),
    partialTag: hex(tags.subarray(TAG_BYTES)),
    frameAll: hex(Buffer.concat([body, tags.subarray(0, TAG_BYTES)])),
    framePartial: hex(Buffer.concat([body, tags.subarray(TAG_BYTES)])),
  };
}

const codec = msgpackCodec<unknown>();
const LONG_KEY = 'k'.repeat(40);
const KEY_300 = 'é'.repeat(150);

const FRAMES: { name: string; type: MessageType; origin: string; seq: number; group: number; entries: { key: string; stamp: Stamp; value?: JsonValue; payloadHex?: string; expiresAt?: number }[] }[] = [
  { name: 'update, one entry without value', type: 'u', origin: NODE_A, seq: 1, group: 0, entries: [{ key: 'alpha', stamp: stamp(T0, 0) }] },
  { name: 'delete, two entries', type: 'd', origin: NODE_A, seq: 2, group: 0, entries: [{ key: 'alpha', stamp: stamp(T0, 1) }, { key: 'beta', stamp: stamp(T0, 2) }] },
  { name: 'update with a value (payload: the codec bytes as bin)', type: 'u', origin: NODE_B, seq: 127, group: 0, entries: [{ key: 'alpha', stamp: stamp(T0, 0, NODE_B), value: { n: 1 } }] },
  { name: 'no entry: a refused compare-and-set still uses its sequence number', type: 'u', origin: NODE_A, seq: 128, group: 0, entries: [] },
  { name: 'seq and group need uint16 and uint32', type: 'u', origin: NODE_A, seq: 70_000, group: 16_383, entries: [{ key: LONG_KEY, stamp: stamp(T0, 3) }] },
  { name: 'seq above 2^32 (uint64)', type: 'd', origin: NODE_A, seq: 2 ** 32 + 5, group: 300, entries: [{ key: KEY_300, stamp: stamp(T0, 4) }] },
  { name: 'values with an expiry: [key, stamp, payload, expiresAt], and [key, stamp, nil, expiresAt] without the value', type: 'u', origin: NODE_A, seq: 4, group: 0, entries: [{ key: 'session', stamp: stamp(T0, 6), value: 'v', expiresAt: T0 + 30_000 }, { key: 'token', stamp: stamp(T0, 7), expiresAt: T0 + 60_000 }] },
  { name: 'a payload of 300 bytes (bin16)', type: 'u', origin: NODE_A, seq: 3, group: 0, entries: [{ key: 'big', stamp: stamp(T0, 5), payloadHex: '00'.repeat(300) }] },
  { name: '16 entries (array16 header)', type: 'u', origin: NODE_A, seq: 4, group: 0, entries: Array.from({ length: 16 }, (_, i) => ({ key: `k${i}`, stamp: stamp(T0, 10 + i) })) },
  { name: 'heartbeat probe (sharded pub/sub): seq 2^53-1, key "\\u0000probe:<nonce>@<node>", zero stamp', type: 'u', origin: NODE_A, seq: 2 ** 53 - 1, group: 42, entries: [{ key: '\u0000probe:0a0b0c0d0e0f@127.0.0.1:7000', stamp: ZERO_STAMP }] },
];

function payloadOf(entry: { value?: JsonValue; payloadHex?: string }): Uint8Array | undefined {
  if (entry.payloadHex !== undefined) return Buffer.from(entry.payloadHex, 'hex');
  return entry.value === undefined ? undefined : codec.encode(fromJson(entry.value));
}

// ------------------------------------------------------------------------------------ apply script

/** What a key holds before a script case. */
type Initial = { record: { stamp: Stamp; value: JsonValue } } | { tombstone: Stamp } | { foreignHex: string };

interface ScriptCaseDef {
  name: string;
  /** `false`: a plain RedisDict (no message). */
  publish: boolean;
  withValues?: boolean;
  maxPublishedValueBytes?: number;
  /** Sequence number the writer hands out next. */
  seq: number;
  initial: Record<string, Initial>;
  /** In key order; `value` absent: a delete. */
  changes: { key: string; stamp: Stamp; value?: JsonValue; guard?: Stamp }[];
}

const NS = 'vectors';
const TTL = 86_400_000;
const S = (n: number, node = NODE_A): Stamp => stamp(T0 + n, 0, node);

const SCRIPT_CASES: ScriptCaseDef[] = [
  {
    name: 'new keys, values only: the MSETNX fast path, single reply 2',
    publish: true,
    seq: 1,
    initial: {},
    changes: [
      { key: 'alpha', stamp: S(10), value: 'a' },
      { key: 'beta', stamp: S(11), value: { n: 1 } },
    ],
  },
  {
    name: 'values published; one larger than maxPublishedValueBytes is announced without it',
    publish: true,
    withValues: true,
    maxPublishedValueBytes: 8,
    seq: 5,
    initial: {},
    changes: [
      { key: 'alpha', stamp: S(10), value: 1 },
      { key: 'beta', stamp: S(11), value: 'more than eight bytes' },
    ],
  },
  {
    name: 'overwrite, delete and insert in one batch: update message then delete message, consecutive numbers',
    publish: true,
    seq: 7,
    initial: { alpha: { record: { stamp: S(1, NODE_B), value: 'old' } }, beta: { record: { stamp: S(2, NODE_B), value: 'old' } } },
    changes: [
      { key: 'alpha', stamp: S(10), value: 'new' },
      { key: 'beta', stamp: S(11) },
      { key: 'gamma', stamp: S(12), value: 3 },
    ],
  },
  {
    name: 'an older write is refused: reply [stored stamp, stored record], and an empty message keeps the numbers contiguous',
    publish: true,
    seq: 3,
    initial: { alpha: { record: { stamp: S(50, NODE_B), value: 'newer' } } },
    changes: [{ key: 'alpha', stamp: S(10), value: 'older' }],
  },
  {
    name: 'partly refused: the script cuts the applied entries out with the entry lengths',
    publish: true,
    seq: 9,
    initial: { alpha: { record: { stamp: S(50, NODE_B), value: 'newer' } }, beta: { tombstone: S(5, NODE_B) } },
    changes: [
      { key: 'alpha', stamp: S(10), value: 'older' },
      { key: 'beta', stamp: S(11), value: 'after the delete' },
      { key: 'gamma', stamp: S(12) },
    ],
  },
  {
    name: 'a delayed write never resurrects a newer delete: reply [tombstone stamp, nil]',
    publish: true,
    seq: 1,
    initial: { alpha: { tombstone: S(50, NODE_B) } },
    changes: [{ key: 'alpha', stamp: S(10), value: 'late' }],
  },
  {
    name: 'guards (discard-on-remote-update): written only when the stored stamp is below the guard',
    publish: true,
    seq: 4,
    initial: { alpha: { record: { stamp: S(5, NODE_B), value: 'remote' } }, beta: { record: { stamp: S(5, NODE_B), value: 'remote' } } },
    changes: [
      { key: 'alpha', stamp: S(10), value: 'mine', guard: S(3) },
      { key: 'beta', stamp: S(10), value: 'mine', guard: S(7) },
    ],
  },
  {
    name: 'a plain RedisDict publishes nothing: publish arguments and entry lengths are empty',
    publish: false,
    seq: 1,
    initial: {},
    changes: [
      { key: 'alpha', stamp: S(10), value: 1 },
      { key: 'beta', stamp: S(11) },
    ],
  },
  {
    name: 'foreign data (a string that is not a record) counts as the lowest stamp and is replaced',
    publish: true,
    seq: 2,
    initial: { alpha: { foreignHex: hex(Buffer.from('hello')) } },
    changes: [{ key: 'alpha', stamp: S(10), value: 'mine' }],
  },
  {
    name: 'keys with unicode, braces and 40 bytes; a 300-byte value published as bin16',
    publish: true,
    withValues: true,
    seq: 1,
    initial: {},
    changes: [
      { key: 'ключ {tag} 🔑', stamp: S(10), value: 'x' },
      { key: LONG_KEY, stamp: S(11), value: { $bin: 'ab'.repeat(300) } },
    ],
  },
];

/** A reply of Redis: `{int}`, `{bulk: hex}`, `null` (nil) or an array. */
export type ReplyJson = { int: number } | { bulk: string } | null | ReplyJson[];

/** What a key holds after a script case. */
export type StateJson = { type: 'none' } | { type: 'string'; hex: string } | { type: 'hash'; s: Stamp; ttlMs: number };

function recordBytes(stampValue: Stamp, payload: Uint8Array | undefined, expiresAt?: number): Buffer {
  const out = Buffer.alloc(changeHeaderLength(payload === undefined ? undefined : expiresAt) + (payload?.length ?? 0));
  writeChange(out, 0, stampValue, payload, expiresAt);
  return out;
}

/** Parses a RESP array of bulk strings (a command as sent). */
function parseCommand(frame: Buffer): Buffer[] {
  const args: Buffer[] = [];
  let at = frame.indexOf('\r\n');
  const count = Number(frame.toString('latin1', 1, at));
  at += 2;
  for (let i = 0; i < count; i++) {
    const end = frame.indexOf('\r\n', at);
    const length = Number(frame.toString('latin1', at + 1, end));
    args.push(frame.subarray(end + 2, end + 2 + length));
    at = end + 2 + length + 2;
  }
  if (at !== frame.length) throw new Error('parseCommand: trailing bytes');
  return args;
}

function scriptCase(def: ScriptCaseDef): Record<string, unknown> {
  let seq = def.seq;
  const channels = channelNames({ namespace: NS });
  const target: PublishTarget | undefined = def.publish
    ? {
        command: 'PUBLISH',
        updateChannel: channels.update,
        deleteChannel: channels.delete,
        withValues: def.withValues ?? false,
        maxPublishedValueBytes: def.maxPublishedValueBytes ?? 65_536,
        nextSeq: () => seq++,
      }
    : undefined;
  const part: PreparedChange<unknown>[] = def.changes.map((c, index) => ({
    index,
    redisKey: `${NS}/${c.key}`,
    payload: c.value === undefined ? undefined : codec.encode(fromJson(c.value)),
    change: { key: c.key, stamp: c.stamp, guard: c.guard, deleted: c.value === undefined, value: c.value === undefined ? undefined : fromJson(c.value) },
  }));
  const unit = new ApplyUnit(0, part, target, TTL, MAX_DRIFT_MS, NODE_A, '', Buffer.from(`${NS}/`));
  const [name, sha, n, ...rest] = parseCommand(unit.command('evalsha', APPLY_SHA).toWritable());
  if (name?.toString() !== 'evalsha' || sha?.toString() !== APPLY_SHA || Number(n?.toString()) !== part.length) throw new Error('unexpected apply command');
  const keys = rest.slice(0, part.length).map((k) => k.toString('utf8'));
  const argv = rest.slice(part.length).map(hex);

  // The expected outcome, from the protocol's rules.
  const storedStamp = (init: Initial | undefined): Stamp | undefined =>
    init === undefined || 'foreignHex' in init ? undefined : 'record' in init ? init.record.stamp : init.tombstone;
  const initialState = (init: Initial | undefined): StateJson => {
    if (init === undefined) return { type: 'none' };
    if ('foreignHex' in init) return { type: 'string', hex: init.foreignHex };
    if ('record' in init) return { type: 'string', hex: hex(recordBytes(init.record.stamp, codec.encode(fromJson(init.record.value)))) };
    return { type: 'hash', s: init.tombstone, ttlMs: TTL };
  };
  const valuesOnly = def.changes.every((c) => c.value !== undefined);
  const allAbsent = def.changes.every((c) => def.initial[c.key] === undefined);
  const replies: ReplyJson[] = [];
  const after: Record<string, StateJson> = {};
  const applied: { u: FrameEntry[]; d: FrameEntry[] } = { u: [], d: [] };
  part.forEach((p, i) => {
    const c = def.changes[i]!;
    const init = def.initial[c.key];
    const stored = storedStamp(init);
    const guard = c.guard ?? c.stamp;
    if (stored !== undefined && !(stored < guard)) {
      const state = initialState(init);
      replies.push([{ bulk: hex(Buffer.from(stored, 'latin1')) }, state.type === 'string' ? { bulk: state.hex } : null]);
      after[c.key] = state;
      return;
    }
    const liveBefore = init !== undefined && !('tombstone' in init);
    replies.push({ int: liveBefore ? 1 : 2 });
    after[c.key] = p.payload === undefined ? { type: 'hash', s: c.stamp, ttlMs: TTL } : { type: 'string', hex: hex(recordBytes(c.stamp, p.payload)) };
    const published = target?.withValues && p.payload !== undefined && p.payload.length <= target.maxPublishedValueBytes ? p.payload : undefined;
    (p.payload === undefined ? applied.d : applied.u).push({ key: c.key, stamp: c.stamp, payload: published });
  });
  const reply: ReplyJson = valuesOnly && allAbsent ? { int: 2 } : replies;
  const messages: { channel: string; hex: string }[] = [];
  if (target) {
    let next = def.seq;
    if (def.changes.some((c) => c.value !== undefined)) messages.push({ channel: channels.update, hex: frameHex('u', NODE_A, next++, 0, applied.u) });
    if (def.changes.some((c) => c.value === undefined)) messages.push({ channel: channels.delete, hex: frameHex('d', NODE_A, next++, 0, applied.d) });
  }
  return {
    name: def.name,
    initial: Object.fromEntries(Object.entries(def.initial).map(([k, init]) => [`${NS}/${k}`, initialState(init)])),
    keys,
    argv,
    reply,
    published: messages,
    after: Object.fromEntries(Object.entries(after).map(([k, state]) => [`${NS}/${k}`, state])),
  };
}

// ------------------------------------------------------------------------------------ assembly

/** Builds every vector (pure, deterministic). */
export function buildVectors(): Record<string, unknown> {
  const sharedSlots = [0, 1, 42, 5474, 12182, 16383];
  const tags = Array.from({ length: 16384 }, (_, slot) => slotTag(slot));
  return {
    description:
      'Conformance vectors of docs/protocol.md. Bytes are lowercase hex. Generated by scripts/protocol-vectors.ts (npx tsx scripts/protocol-vectors.ts); do not edit by hand.',
    protocolVersion: PROTOCOL_VERSION,
    stamps: {
      format: [
        { ms: 0, counter: 0, node: '0000000000000000', stamp: ZERO_STAMP },
        { ms: T0, counter: 0, node: NODE_A, stamp: stamp(T0, 0) },
        { ms: T0, counter: 0xffffff, node: NODE_B, stamp: stamp(T0, 0xffffff, NODE_B) },
        { ms: 2 ** 48 - 1, counter: 1, node: NODE_A, stamp: stamp(2 ** 48 - 1, 1) },
      ],
      order: [stamp(T0, 0, NODE_B), stamp(T0, 1, NODE_A), stamp(T0 + 1, 0, NODE_A), stamp(T0 + 1, 0, NODE_B), stamp(2 ** 41, 0, NODE_A)],
      maxDriftMs: MAX_DRIFT_MS,
      clock: clockVectors(),
    },
    keys: {
      namespace: 'ns',
      cases: KEY_INPUTS.map((input) => {
        const key = normalizeKey('string' in input ? input.string : input.number);
        return { input: 'string' in input ? input : { float64: (float64(input.number) as { $float64: string }).$float64 }, key, redisKey: `ns/${key}`, redisKeyWithPrefix: { keyPrefix: 'app:', redisKey: `app:ns/${key}` } };
      }),
    },
    records: [
      ...[
        { stamp: stamp(T0, 0), value: 'hello' as JsonValue },
        { stamp: stamp(T0, 1, NODE_B), value: { n: 1, tags: ['a', 'b'] } as JsonValue },
      ].map(({ stamp: s, value }) => {
        const payload = codec.encode(fromJson(value));
        return { kind: 'live', stamp: s, value, payload: hex(payload), record: hex(recordBytes(s, payload)) };
      }),
      ((): { kind: string; stamp: Stamp; value: JsonValue; expiresAt: number; payload: string; record: string } => {
        const payload = codec.encode('hello');
        const expiresAt = T0 + 30_000;
        return { kind: 'live, expiring', stamp: stamp(T0, 3), value: 'hello', expiresAt, payload: hex(payload), record: hex(recordBytes(stamp(T0, 3), payload, expiresAt)) };
      })(),
      { kind: 'tombstone change (apply script argument)', stamp: stamp(T0, 2), change: hex(recordBytes(stamp(T0, 2), undefined)), stored: { type: 'hash', fields: { s: stamp(T0, 2) } } },
    ],
    recordTags: { live: RECORD_TAG, liveExpiring: EXPIRING_RECORD_TAG, tombstoneChange: TOMBSTONE_TAG },
    codec: CODEC_VALUES.map(({ name, value }) => ({ name, value, payload: hex(codec.encode(fromJson(value))) })),
    frames: FRAMES.map((f) => {
      const entries = f.entries.map((e) => ({ key: e.key, stamp: e.stamp, payload: payloadOf(e), expiresAt: e.expiresAt }));
      return {
        name: f.name,
        type: f.type,
        origin: f.origin,
        seq: f.seq,
        group: f.group,
        entries: entries.map((e) => ({
          key: e.key,
          stamp: e.stamp,
          ...(e.payload === undefined ? {} : { payload: hex(e.payload) }),
          ...(e.expiresAt === undefined ? {} : { expiresAt: e.expiresAt }),
        })),
        header: hex(encodeHeader(f.type, f.origin, f.seq, f.group)),
        frame: frameHex(f.type, f.origin, f.seq, f.group, entries),
      };
    }),
    signedFrames: {
      construction:
        'tag = 0xc4 0x15 | flag | keyId | mac; keyId = HMAC-SHA-256(key, "redis-pubsub-dict key id")[0..4]; T = HMAC-SHA-256(key, "redis-pubsub-dict frame v2\\0" | u32be(len(channel)) | channel | body); mac = T[0..16] for flag "a" (all applied), T[16..32] for flag "p" (partly refused)',
      cases: [
        signedFrameVector('update, one entry, string key', SIGNING_KEYS[0], 'ns/update', 'u', 1, [{ key: 'alpha', stamp: stamp(T0, 0) }]),
        signedFrameVector('delete, two entries, binary key', SIGNING_KEYS[1], 'tA:ns/delete@1', 'd', 2, [{ key: 'alpha', stamp: stamp(T0, 1) }, { key: 'beta', stamp: stamp(T0, 2) }]),
        signedFrameVector('update with a value, sharded channel', SIGNING_KEYS[0], `ns/changes{${slotTag(5)}}`, 'u', 3, [{ key: 'k', stamp: stamp(T0, 3), payload: codec.encode({ a: 1 }) }]),
      ],
    },
    channels: {
      classic: ['ns', 'app.orders:v2'].map((namespace) => ({ namespace, ...channelNames({ namespace }) })),
      sharded: sharedSlots.map((slot) => ({ namespace: 'ns', slot, tag: slotTag(slot), ...channelNames({ namespace: 'ns' }, slot) })),
      scoped: [
        { namespace: 'users', db: 1 },
        { namespace: 'users', keyPrefix: 'tA:' },
        { namespace: 'users', keyPrefix: 'tA:', channelPrefix: 'svc.', db: 3 },
        { namespace: 'users', channelPrefix: 'svc.' },
        { namespace: 'users', keyPrefix: '{tenant}:', slot: 42 },
      ].map(({ slot, ...scope }) => ({ scope, ...(slot === undefined ? {} : { slot }), ...channelNames(scope, slot) })),
      slotTags: {
        rule: 'tag(slot) = the first of i.toString(36) for i = 0, 1, 2, ... whose CRC16 hash slot is slot',
        sha256OfTagsJoinedByNewline: createHash('sha256').update(tags.join('\n')).digest('hex'),
        first: tags.slice(0, 32),
      },
    },
    applyScript: {
      sha1: APPLY_SHA,
      namespace: NS,
      cases: SCRIPT_CASES.map(scriptCase),
    },
  };
}

/** The vectors as committed: pretty JSON with a final newline. */
export function renderVectors(): string {
  return `${JSON.stringify(buildVectors(), null, 1)}\n`;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const text = renderVectors();
  if (process.argv.includes('--check')) {
    const committed = readFileSync(VECTORS_PATH, 'utf8');
    if (committed !== text) {
      console.error(`${VECTORS_PATH} is out of date: run npx tsx scripts/protocol-vectors.ts`);
      process.exit(1);
    }
    console.log(`${VECTORS_PATH} is up to date`);
  } else {
    writeFileSync(VECTORS_PATH, text);
    console.log(`wrote ${VECTORS_PATH} (${text.length} bytes)`);
  }
}
