/**
 * Decoder fuzz (design brief §7, scenario 12): random bytes, mutated valid frames, frames of the
 * wrong schema and a corpus of hostile inputs go through `MessageDecoder.decode`, then a sample of
 * the malformed ones is published raw on a namespace's channels and must leave a real cache
 * untouched.
 */
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { PubSubCacheManager } from '../src/cache/cache-manager.js';
import { MalformedMessageError, type Message, MessageDecoder } from '../src/protocol/messages.js';
import { PubSubRedisDict } from '../src/store/pubsub-redis-dict.js';
import { isStamp } from '../src/protocol/stamp.js';
import { topologies, uniqueNamespace } from '../test/helpers/connections.js';
import { isCampaign, params, runsOf, seedOf, timeoutOf } from './config.js';
import { buildFrame, corpus, frameSpecArb, mutatedFrameArb, randomBytesArb, wrongSchemaArb } from './frames.js';
import { cacheSnapshot, prototypesSnapshot, publisherFor, waitForEvent } from './support.js';

const FILE = import.meta.url;
seedOf(FILE);

/** The limits a PubSubCacheManager gives its subscriber with default options. */
const LIMITS = { maxMessageBytes: 8 << 20, maxValueBytes: 1 << 20, maxEntries: 1000 };

let decoded = 0;
let rejected = 0;
/** Random, mutated, wrong-schema and corpus frames tried in-process (valid round trips not counted). */
let hostile = 0;
let published = 0;

/** Decodes; only a valid message or a MalformedMessageError may come out. */
function decodeChecked(decoder: MessageDecoder, bytes: Uint8Array): Message | MalformedMessageError {
  let result: Message;
  try {
    result = decoder.decode(bytes);
  } catch (error) {
    expect(error).toBeInstanceOf(MalformedMessageError);
    rejected++;
    return error as MalformedMessageError;
  }
  decoded++;
  // Whatever is accepted follows the schema exactly.
  expect(result.type === 'u' || result.type === 'd').toBe(true);
  expect(result.origin).toMatch(/^[0-9a-f]{16}$/);
  expect(Number.isSafeInteger(result.seq) && result.seq >= 1).toBe(true);
  expect(Number.isInteger(result.group) && result.group >= 0 && result.group <= 16383).toBe(true);
  expect(Array.isArray(result.entries)).toBe(true);
  for (const entry of result.entries) {
    expect(Object.getPrototypeOf(entry)).toBe(Object.prototype);
    expect(typeof entry.key === 'string' && entry.key.length > 0).toBe(true);
    expect(isStamp(entry.stamp)).toBe(true);
    expect(entry.payload === undefined || entry.payload instanceof Uint8Array).toBe(true);
    if (result.type === 'd') expect(entry.payload).toBeUndefined();
  }
  return result;
}

const prototypesBefore = prototypesSnapshot();

afterAll(() => {
  console.log(
    `[property] decoder-fuzz: ${hostile} random/mutated/wrong-schema/corpus frames (+ ${decoded + rejected - hostile} valid round trips) decoded in-process:` +
      ` ${rejected} rejected as malformed, ${decoded} accepted as valid; ${published} malformed frames published to real caches`,
  );
});

describe('MessageDecoder.decode', () => {
  // One decoder for every frame, as a subscriber has: a failure must not poison later decodes.
  const decoder = new MessageDecoder(LIMITS);

  it('decodes every frame built by the writer’s encoders back to what was encoded', () => {
    fc.assert(
      fc.property(frameSpecArb, (spec) => {
        const message = decodeChecked(decoder, buildFrame(spec));
        expect(message).not.toBeInstanceOf(MalformedMessageError);
        const m = message as Message;
        expect({ type: m.type, origin: m.origin, seq: m.seq, group: m.group, keys: m.entries.map((e) => [e.key, e.stamp]) }).toEqual({
          type: spec.type,
          origin: spec.origin,
          seq: spec.seq,
          group: spec.group,
          keys: spec.entries.map((e) => [e.key, e.stamp]),
        });
        m.entries.forEach((e, i) => {
          const sent = spec.type === 'u' ? spec.entries[i]!.payload : undefined;
          if (sent === undefined) expect(e.payload).toBeUndefined();
          else expect(e.payload !== undefined && Buffer.compare(Buffer.from(e.payload), Buffer.from(sent)) === 0).toBe(true);
        });
      }),
      params(FILE, 1000),
    );
  });

  it('lets nothing but MalformedMessageError escape for mutated valid frames (bit flips, truncation, insertion, huge length headers)', () => {
    fc.assert(
      fc.property(mutatedFrameArb, ({ valid, mutated }) => {
        hostile++;
        decodeChecked(decoder, mutated);
        // The decoder still works after whatever the mutated frame did to it.
        expect(decodeChecked(decoder, valid)).not.toBeInstanceOf(MalformedMessageError);
      }),
      params(FILE, 5000),
    );
  });

  it('lets nothing but MalformedMessageError escape for random bytes', () => {
    fc.assert(
      fc.property(randomBytesArb, (bytes) => {
        hostile++;
        decodeChecked(decoder, bytes);
      }),
      params(FILE, 2500),
    );
  });

  it('rejects well-formed MessagePack of the wrong schema (wrong types, __proto__ / constructor keys, extra items)', () => {
    fc.assert(
      fc.property(wrongSchemaArb, (bytes) => {
        hostile++;
        decodeChecked(decoder, bytes);
      }),
      params(FILE, 2500),
    );
  });

  it('rejects every input of the hostile corpus, and one above maxMessageBytes', () => {
    hostile += corpus().length + 1;
    for (const bytes of corpus()) expect(decodeChecked(decoder, bytes)).toBeInstanceOf(MalformedMessageError);
    const small = new MessageDecoder({ ...LIMITS, maxMessageBytes: 64 });
    expect(decodeChecked(small, Buffer.alloc(65, 0x90))).toBeInstanceOf(MalformedMessageError);
  });

  it('tried at least 10,000 hostile frames (default budget)', () => {
    if (!isCampaign && !process.env['PROPERTY_PATH']) expect(hostile).toBeGreaterThanOrEqual(10_000);
  });

  it('leaves Object.prototype and Array.prototype untouched', () => {
    expect(prototypesSnapshot()).toEqual(prototypesBefore);
    expect(({} as Record<string, unknown>)['polluted']).toBeUndefined();
  });
});

describe.each(topologies())('malformed frames published to a real cache (%s)', (_topology, factory) => {
  it(
    'change nothing in the cache, are counted, and a real write still propagates after them',
    async () => {
      const redis = factory();
      const ns = uniqueNamespace('fuzz');
      const writer = new PubSubRedisDict<unknown>(redis, ns, { publishValues: true });
      const managers = [
        new PubSubCacheManager<unknown>(new PubSubRedisDict(redis, ns), { sync: 'invalidate' }),
        new PubSubCacheManager<unknown>(new PubSubRedisDict(redis, ns), { sync: 'update', cache: 'unbounded' }),
      ];
      const publisher = await publisherFor(redis, writer.redisKey('barrier'));
      try {
        await Promise.all(managers.map((m) => m.ready()));
        const keys = Array.from({ length: 20 }, (_, i) => `k${i}`);
        await writer.setMany(keys.slice(0, 15).map((k, i) => [k, { i, tag: k }] as const));
        for (const m of managers) {
          await m.getMany([...keys, '__proto__', 'constructor', 'barrier']); // 5 cached misses too
        }
        const before = managers.map((m) => ({ cache: cacheSnapshot(m, ['barrier']), stats: m.stats() }));
        expect(before[0]!.cache.length).toBe(keys.length + 2);

        // A sample of frames, all of which the subscriber's decoder must refuse.
        const check = new MessageDecoder(LIMITS);
        const isMalformed = (bytes: Uint8Array): boolean => {
          try {
            check.decode(bytes);
            return false;
          } catch {
            return true;
          }
        };
        const seed = seedOf(FILE);
        const total = runsOf(300);
        const frames = [
          ...corpus(),
          ...fc.sample(mutatedFrameArb.map((f) => f.mutated), { seed, numRuns: total * 2 }),
          ...fc.sample(randomBytesArb, { seed: seed + 1, numRuns: total }),
          ...fc.sample(wrongSchemaArb, { seed: seed + 2, numRuns: total }),
        ]
          .filter(isMalformed)
          .slice(0, Math.max(total, corpus().length));
        expect(frames.length).toBeGreaterThanOrEqual(Math.min(total, 300));

        const malformedSeen = managers.map(() => 0);
        managers.forEach((m, i) => m.on('malformed', () => malformedSeen[i]!++));
        published += frames.length;
        for (const [i, bytes] of frames.entries()) {
          await publisher.publish(i % 2 === 0 ? `${ns}/update` : `${ns}/delete`, Buffer.from(bytes));
        }
        // Barrier: a real write published after every frame, through the same server node; each
        // cache holds `barrier` (a cached miss), so its event is visible when it arrives: both sync
        // modes drop a cached miss on an event (update mode never installs a value over a miss,
        // see cache-manager.ts applyRemote), so the event to wait for is `invalidate`.
        const arrived = managers.map((m) => waitForEvent(m, 'invalidate', (key) => key === 'barrier', 10_000));
        await writer.set('barrier', 'after the frames');
        await Promise.all(arrived);

        managers.forEach((m, i) => {
          expect(cacheSnapshot(m, ['barrier'])).toEqual(before[i]!.cache);
          const stats = m.stats();
          expect(stats.malformed - before[i]!.stats.malformed).toBe(frames.length);
          expect(malformedSeen[i]).toBe(frames.length);
          expect(stats.resyncs).toBe(before[i]!.stats.resyncs);
          expect(m.isServing).toBe(true);
        });
        // The real write propagated: both caches serve the new value.
        for (const m of managers) expect(await m.get('barrier')).toBe('after the frames');
        expect(managers[1]!.cache.peek('barrier')?.value).toBe('after the frames');
        expect(prototypesSnapshot()).toEqual(prototypesBefore);
      } finally {
        await Promise.all(managers.map((m) => m.close()));
        publisher.disconnect();
        redis.disconnect();
      }
    },
    timeoutOf(60_000),
  );
});
