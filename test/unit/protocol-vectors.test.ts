/**
 * The committed conformance vectors (docs/protocol-vectors.json) against the library: the generator
 * run now must give the committed file byte for byte, and each section is also checked on its
 * own with the library's decoders and helpers (a frame decodes to its fields, a key normalizes to
 * its string, a clock replays its steps...). The apply-script cases are run against a real Redis by
 * test/integration/protocol-vectors.test.ts.
 */
import { createHash, createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import calculateSlot from 'cluster-key-slot';
import { describe, expect, it } from 'vitest';
import { msgpackCodec } from '../../src/protocol/codec.js';
import { normalizeKey } from '../../src/protocol/keys.js';
import { MessageDecoder } from '../../src/protocol/messages.js';
import { splitRecord } from '../../src/protocol/record.js';
import { APPLY_LUA } from '../../src/store/scripts.js';
import { compareStamps, formatStamp, HybridClock, isStamp, MAX_DRIFT_MS, parseStamp } from '../../src/protocol/stamp.js';
import { FrameSigner } from '../../src/protocol/signing.js';
import { fromJson, type JsonValue, renderVectors, VECTORS_PATH } from '../../scripts/protocol-vectors.js';
import { slotTag, channelNames } from '../../src/protocol/channels.js';

interface Vectors {
  protocolVersion: number;
  stamps: {
    format: { ms: number; counter: number; node: string; stamp: string }[];
    order: string[];
    maxDriftMs: number;
    clock: { name: string; node: string; steps: ({ wall: number; op: 'now'; expect: string } | { wall: number; op: 'observe'; stamp: string })[] }[];
  };
  keys: { namespace: string; cases: { input: { string: string } | { float64: string }; key: string; redisKey: string }[] };
  records: ({ kind: 'live'; stamp: string; value: JsonValue; payload: string; record: string } | { kind: string; stamp: string; change: string })[];
  codec: { name: string; value: JsonValue; payload: string }[];
  frames: { name: string; type: 'u' | 'd'; origin: string; seq: number; group: number; entries: { key: string; stamp: string; payload?: string }[]; header: string; frame: string }[];
  signedFrames: {
    construction: string;
    cases: { name: string; key: { utf8?: string; hex?: string }; channel: string; body: string; allTag: string; partialTag: string; frameAll: string; framePartial: string }[];
  };
  channels: {
    classic: { namespace: string; update: string; delete: string }[];
    sharded: { namespace: string; slot: number; tag: string; update: string; delete: string }[];
    scoped: { scope: { namespace: string; keyPrefix?: string; channelPrefix?: string; db?: number }; slot?: number; update: string; delete: string }[];
    slotTags: { sha256OfTagsJoinedByNewline: string; first: string[] };
  };
  applyScript: { sha1: string };
}

const committed = readFileSync(VECTORS_PATH, 'utf8');
const vectors = JSON.parse(committed) as Vectors;
const bytes = (hex: string): Buffer => Buffer.from(hex, 'hex');

describe('protocol vectors (docs/protocol-vectors.json)', () => {
  it('are what the generator makes from the library today (run `npx tsx scripts/protocol-vectors.ts` after a format change)', () => {
    expect(renderVectors()).toBe(committed);
    expect(vectors.protocolVersion).toBe(1);
  });

  it('stamps: fixed-width hex, string order is (ms, counter, writer) order', () => {
    for (const v of vectors.stamps.format) {
      expect(formatStamp(v.ms, v.counter, v.node)).toBe(v.stamp);
      expect(parseStamp(v.stamp)).toEqual({ ms: v.ms, counter: v.counter, node: v.node });
      expect(isStamp(v.stamp)).toBe(true);
    }
    const { order } = vectors.stamps;
    for (let i = 1; i < order.length; i++) expect(compareStamps(order[i - 1]!, order[i]!)).toBe(-1);
    expect(vectors.stamps.maxDriftMs).toBe(MAX_DRIFT_MS);
  });

  it.each(vectors.stamps.clock.map((c) => [c.name, c] as const))('clock: %s', (_name, scenario) => {
    let wall = 0;
    const clock = new HybridClock(scenario.node, () => wall);
    for (const step of scenario.steps) {
      wall = step.wall;
      if (step.op === 'observe') clock.observe(step.stamp);
      else expect(clock.now()).toBe(step.expect);
    }
  });

  it('keys: strings as given, numbers by String(), Redis key <namespace>/<key>', () => {
    for (const v of vectors.keys.cases) {
      const input = 'string' in v.input ? v.input.string : bytes(v.input.float64).readDoubleBE(0);
      expect(normalizeKey(input)).toBe(v.key);
      expect(v.redisKey).toBe(`${vectors.keys.namespace}/${v.key}`);
    }
  });

  it('records: v + stamp + payload; a tombstone change is t + stamp', () => {
    const codec = msgpackCodec<unknown>();
    for (const v of vectors.records) {
      if ((v.kind === 'live' || v.kind === 'live, expiring') && 'record' in v) {
        const { stamp, payload, expiresAt } = splitRecord('k', bytes(v.record));
        expect(stamp).toBe(v.stamp);
        expect(expiresAt).toBe((v as { expiresAt?: number }).expiresAt);
        expect(payload.toString('hex')).toBe(v.payload);
        expect(codec.decode(payload)).toEqual(fromJson(v.value));
      } else if ('change' in v) {
        expect(v.change).toBe(Buffer.from(`t${v.stamp}`, 'latin1').toString('hex'));
      }
    }
  });

  it('codec: the default MessagePack encoding of each value, which decodes back', () => {
    const codec = msgpackCodec<unknown>();
    for (const v of vectors.codec) {
      const value = fromJson(v.value);
      expect(Buffer.from(codec.encode(value)).toString('hex'), v.name).toBe(v.payload);
      // -0 is written as the integer 0 and comes back as 0.
      const back = codec.decode(bytes(v.payload));
      expect(back, v.name).toEqual(Object.is(value, -0) ? 0 : value);
    }
  });

  it('frames: each decodes to its fields, and starts with its canonical header', () => {
    const decoder = new MessageDecoder({ maxMessageBytes: 1 << 20, maxValueBytes: 1 << 20, maxEntries: 1000 });
    for (const v of vectors.frames) {
      expect(v.frame.startsWith(v.header), v.name).toBe(true);
      const message = decoder.decode(bytes(v.frame));
      expect({ ...message, entries: message.entries.map((e) => ({ key: e.key, stamp: e.stamp, payload: e.payload && Buffer.from(e.payload).toString('hex'), expiresAt: e.expiresAt })) }, v.name).toEqual({
        type: v.type,
        origin: v.origin,
        seq: v.seq,
        group: v.group,
        partial: false, // unsigned frames are never partial (only signed ones carry the flag)
        entries: v.entries.map((e) => ({ key: e.key, stamp: e.stamp, payload: e.payload, expiresAt: (e as { expiresAt?: number }).expiresAt })),
      });
    }
  });

  it('signed frames: tags follow the documented HMAC construction, and the library verifies both flags', () => {
    expect(vectors.signedFrames.cases.length).toBeGreaterThan(0);
    for (const v of vectors.signedFrames.cases) {
      const key = v.key.utf8 !== undefined ? Buffer.from(v.key.utf8, 'utf8') : Buffer.from(v.key.hex!, 'hex');
      const channel = Buffer.from(v.channel, 'utf8');
      const body = bytes(v.body);
      // Independently of src/protocol/signing.ts, from the construction in docs/protocol.md.
      const keyId = createHmac('sha256', key).update('redis-pubsub-dict key id', 'latin1').digest().subarray(0, 4);
      const length = Buffer.alloc(4);
      length.writeUInt32BE(channel.length, 0);
      const t = createHmac('sha256', key).update(Buffer.from('redis-pubsub-dict frame v2\0', 'latin1')).update(length).update(channel).update(body).digest();
      const tag = (flag: string, mac: Buffer): string => Buffer.concat([Buffer.from([0xc4, 0x15]), Buffer.from(flag, 'latin1'), keyId, mac]).toString('hex');
      expect(v.allTag, v.name).toBe(tag('a', t.subarray(0, 16)));
      expect(v.partialTag, v.name).toBe(tag('p', t.subarray(16)));
      expect(v.frameAll).toBe(v.body + v.allTag);
      expect(v.framePartial).toBe(v.body + v.partialTag);
      const signer = FrameSigner.fromOption('vectors', [key])!;
      expect(signer.verify(channel, bytes(v.frameAll)), v.name).toEqual({ partial: false });
      expect(signer.verify(channel, bytes(v.framePartial)), v.name).toEqual({ partial: true });
      // Bound to its channel: the same bytes on another channel do not verify.
      expect(signer.verify(Buffer.from(`${v.channel}x`, 'utf8'), bytes(v.frameAll))).toHaveProperty('refused');
    }
  });

  it('channels: classic names, sharded names with a hash tag of the slot, and the whole tag table', () => {
    for (const v of vectors.channels.classic) expect(channelNames({ namespace: v.namespace })).toEqual({ update: v.update, delete: v.delete });
    for (const v of vectors.channels.sharded) {
      expect(calculateSlot(v.tag)).toBe(v.slot);
      expect(calculateSlot(v.update)).toBe(v.slot);
      expect(slotTag(v.slot)).toBe(v.tag);
      expect(channelNames({ namespace: v.namespace }, v.slot)).toEqual({ update: v.update, delete: v.delete });
    }
    // Scoped names: everything that scopes a key (client keyPrefix, channelPrefix, database) is in the name.
    for (const v of vectors.channels.scoped) expect(channelNames(v.scope, v.slot)).toEqual({ update: v.update, delete: v.delete });
    // The rule, applied independently: the first base-36 number landing in each slot.
    const tags: (string | undefined)[] = new Array(16384);
    let found = 0;
    for (let i = 0; found < 16384; i++) {
      const tag = i.toString(36);
      const slot = calculateSlot(tag);
      if (tags[slot] === undefined) {
        tags[slot] = tag;
        found++;
      }
    }
    expect(createHash('sha256').update(tags.join('\n')).digest('hex')).toBe(vectors.channels.slotTags.sha256OfTagsJoinedByNewline);
    expect(tags.slice(0, 32)).toEqual(vectors.channels.slotTags.first);
  });

  it('the apply script is the one the vectors were made for', () => {
    expect(createHash('sha1').update(APPLY_LUA).digest('hex')).toBe(vectors.applyScript.sha1);
  });
});
