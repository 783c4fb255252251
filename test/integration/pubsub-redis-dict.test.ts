/**
 * PubSubRedisDict's messages as a raw subscriber sees them, on a standalone server and on the 3+3
 * cluster: a batch publishes exactly the changes it applied, in order, with their stamps and (when
 * values are published) their payloads.
 */
import type { Cluster, Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { type Message, MessageDecoder } from '../../src/protocol/messages.js';
import { PubSubCacheManager } from '../../src/cache/cache-manager.js';
import { PubSubRedisDict } from '../../src/store/pubsub-redis-dict.js';
import { msgpackCodec } from '../../src/protocol/codec.js';
import { pollUntil, topologies, uniqueNamespace, withClients } from '../helpers/connections.js';

const decoder = new MessageDecoder({ maxMessageBytes: 1 << 24, maxValueBytes: 1 << 20, maxEntries: 100_000 });
const codec = msgpackCodec<string>();

describe.each(topologies())('PubSubRedisDict messages (%s)', (_topology, factory) => {
  const clients = withClients({ closeAfter: 'each' });

  /** Subscribes a raw connection to both channels of `namespace`; collects decoded messages. */
  async function listen(namespace: string): Promise<Message[]> {
    const base = clients.track(factory());
    await base.ping();
    // Classic PUBLISH reaches every node of a cluster: one plain connection to any node is enough.
    const node = (base as Cluster).isCluster === true ? (base as Cluster).nodes('master')[0]! : (base as Redis);
    const sub = clients.track(node.duplicate());
    const received: Message[] = [];
    sub.on('messageBuffer', (_channel: Buffer, bytes: Buffer) => {
      try {
        received.push(decoder.decode(bytes));
      } catch (error) {
        // Fail the test at its next poll, with the reason, rather than throw inside ioredis.
        received.push({ malformed: error } as unknown as Message);
      }
    });
    await sub.subscribe(`${namespace}/update`, `${namespace}/delete`);
    return received;
  }

  it.each([false, true])('a batch publishes only the changes it applied, refused ones left out (publishValues: %s)', async (withValues) => {
    const namespace = uniqueNamespace('messages');
    const received = await listen(namespace);
    const dict = new PubSubRedisDict<string>(clients.track(factory()), namespace, { publishValues: withValues });
    // Every key has the hash tag {t}: one slot, so the whole batch is one script call and one message per kind.
    const old = dict.clock.now();
    await dict.set('kept{t}', 'newer value');
    await dict.set('gone{t}', 'newer value');
    const s1 = dict.clock.now();
    const s2 = dict.clock.now();
    const s3 = dict.clock.now();
    const outcomes = await dict.writeVersioned([
      { key: 'kept{t}', stamp: old, deleted: false, value: 'older, refused' },
      { key: 'fresh{t}', stamp: s1, deleted: false, value: 'first' },
      { key: 'gone{t}', stamp: old, deleted: true },
      { key: 'dropped{t}', stamp: s2, deleted: true },
      { key: 'fresh2{t}', stamp: s3, deleted: false, value: 'second' },
    ]);
    expect(outcomes.map((o) => o.status)).toEqual(['conflict', 'written', 'conflict', 'written', 'written']);
    await pollUntil(() => received.length >= 4, { timeoutMs: 10_000, message: 'the four messages did not arrive' });
    expect(received.filter((m) => 'malformed' in m)).toEqual([]);

    const batch = received.slice(2);
    const update = batch.find((m) => m.type === 'u')!;
    const del = batch.find((m) => m.type === 'd')!;
    expect(update.entries.map((e) => [e.key, e.stamp])).toEqual([
      ['fresh{t}', s1],
      ['fresh2{t}', s3],
    ]);
    expect(update.entries.map((e) => (e.payload === undefined ? undefined : codec.decode(e.payload)))).toEqual(withValues ? ['first', 'second'] : [undefined, undefined]);
    expect(del.entries.map((e) => [e.key, e.stamp, e.payload])).toEqual([['dropped{t}', s2, undefined]]);
    // One sequence number per message, consecutive for the group; the update is numbered first.
    expect(del.seq).toBe(update.seq + 1);
    expect(await dict.get('kept{t}')).toBe('newer value');
    expect(await dict.get('gone{t}')).toBe('newer value');
    expect(await dict.get('fresh2{t}')).toBe('second');
    expect(await dict.has('dropped{t}')).toBe(false);
  });

  it('a batch with guards publishes its applied changes; a message with no applied entry is still published (contiguous sequence numbers)', async () => {
    const namespace = uniqueNamespace('messages');
    const received = await listen(namespace);
    const dict = new PubSubRedisDict<string>(clients.track(factory()), namespace);
    const old = dict.clock.now();
    await dict.set('k{t}', 'newer');
    // A newer stamp guarded by an older one (discard-on-remote-update): refused, since Redis holds a
    // write made after the guard; a delete of a missing key is applied (it leaves a tombstone).
    const outcomes = await dict.writeVersioned([
      { key: 'k{t}', stamp: dict.clock.now(), guard: old, deleted: false, value: 'newer but guarded' },
      { key: 'k2{t}', stamp: dict.clock.now(), deleted: true },
    ]);
    expect(outcomes.map((o) => o.status)).toEqual(['conflict', 'written']);
    await pollUntil(() => received.length >= 3, { timeoutMs: 10_000, message: 'the messages did not arrive' });
    expect(received.filter((m) => 'malformed' in m)).toEqual([]);
    const [first, update, del] = received;
    expect(update!.type).toBe('u');
    expect(update!.entries).toEqual([]);
    expect(update!.seq).toBe(first!.seq + 1);
    expect(del!.entries.map((e) => e.key)).toEqual(['k2{t}']);
    expect(await dict.get('k{t}')).toBe('newer');
  });
  it('a batch of new keys is written whole; a key holding a value or a tombstone among them is compared like any other', async () => {
    const namespace = uniqueNamespace('messages');
    const received = await listen(namespace);
    const dict = new PubSubRedisDict<string>(clients.track(factory()), namespace);
    const fresh = await dict.writeVersioned(['a{t}', 'b{t}', 'c{t}'].map((key) => ({ key, stamp: dict.clock.now(), deleted: false, value: key })));
    expect(fresh).toEqual([
      { status: 'written', existed: false },
      { status: 'written', existed: false },
      { status: 'written', existed: false },
    ]);
    expect(await dict.getMany(['a{t}', 'b{t}', 'c{t}'])).toEqual(['a{t}', 'b{t}', 'c{t}']);

    // A tombstone newer than the batch: the batch's write of that key is refused, the new key written.
    const old = dict.clock.now();
    await dict.delete('gone{t}');
    const tombstoned = await dict.writeVersioned([
      { key: 'gone{t}', stamp: old, deleted: false, value: 'zombie' },
      { key: 'd{t}', stamp: dict.clock.now(), deleted: false, value: 'd' },
    ]);
    expect(tombstoned.map((o) => o.status)).toEqual(['conflict', 'written']);
    expect(await dict.has('gone{t}')).toBe(false);

    // A live value among new keys: overwritten when older, and reported as existing.
    const mixed = await dict.writeVersioned([
      { key: 'e{t}', stamp: dict.clock.now(), deleted: false, value: 'e' },
      { key: 'a{t}', stamp: dict.clock.now(), deleted: false, value: 'a2' },
    ]);
    expect(mixed).toEqual([
      { status: 'written', existed: false },
      { status: 'written', existed: true },
    ]);
    expect(await dict.getMany(['a{t}', 'd{t}', 'e{t}'])).toEqual(['a2', 'd', 'e']);

    // Every batch published the entries it applied, and only those.
    await pollUntil(() => received.length >= 4, { timeoutMs: 10_000, message: 'the messages did not arrive' });
    expect(received.filter((m) => 'malformed' in m)).toEqual([]);
    const updates = received.filter((m) => m.type === 'u').map((m) => m.entries.map((e) => e.key));
    expect(updates).toEqual([['a{t}', 'b{t}', 'c{t}'], ['d{t}'], ['e{t}', 'a{t}']]);
  });

  it('writeVersioned reports each outcome once, as its batch replies, before it resolves; a listener error is rethrown after every outcome', async () => {
    const namespace = uniqueNamespace('outcomes');
    const writer = new PubSubRedisDict<string>(clients.track(factory()), namespace);
    // 1,200 keys over many slots on a cluster (one slot here and there: three script calls on a
    // standalone server), one of them refused (a newer write is stored).
    const keys = Array.from({ length: 1200 }, (_, i) => `o${i}`);
    const newer = writer.clock.now();
    await writer.writeVersioned([{ key: 'o7', stamp: newer, deleted: false, value: 'newer' }]);
    const stamp = '000000000001000000' + writer.clock.nodeId;
    const heard: [number, string][] = [];
    let resolved = false;
    const outcomes = await writer.writeVersioned(
      keys.map((key) => ({ key, stamp: key === 'o7' ? stamp : writer.clock.now(), deleted: false, value: `v-${key}` })),
      (index, outcome) => {
        expect(resolved).toBe(false);
        heard.push([index, outcome.status]);
      },
    );
    resolved = true;
    expect(heard.map(([i]) => i).sort((a, b) => a - b)).toEqual(keys.map((_, i) => i));
    expect(new Map(heard)).toEqual(new Map(outcomes.map((o, i) => [i, o.status])));
    expect(outcomes[7]).toMatchObject({ status: 'conflict', stored: { stamp: newer, value: 'newer' } });
    expect(outcomes.filter((o) => o.status === 'written')).toHaveLength(1199);
    // A listener that throws: every change is still written and heard; the first error is rethrown.
    let calls = 0;
    const failing = writer.writeVersioned(
      keys.map((key) => ({ key, stamp: writer.clock.now(), deleted: false, value: `w-${key}` })),
      () => {
        calls++;
        throw new Error(`listener ${calls}`);
      },
    );
    await expect(failing).rejects.toThrow('listener 1');
    expect(calls).toBe(1200);
    expect(await writer.getMany(['o0', 'o7', 'o1199'])).toEqual(['w-o0', 'w-o7', 'w-o1199']);
  });

  it('a write split into many script calls, raced by other writes of the same writer, keeps sequence numbers contiguous: no gap, no resync', async () => {
    const namespace = uniqueNamespace('messages');
    const received = await listen(namespace);
    const reader = new PubSubCacheManager<string>(new PubSubRedisDict<string>(clients.track(factory()), namespace), { cache: 10_000 });
    const resyncs: unknown[] = [];
    reader.on('resync', (info) => resyncs.push(info));
    try {
      await reader.ready();
      const writer = new PubSubRedisDict<string>(clients.track(factory()), namespace);
      // 1,600 keys of one slot: four script calls (batchSize 500), sent in several chunks; two more
      // writes of the same slot start in the same tick, so their sequence numbers interleave.
      const keys = Array.from({ length: 1600 }, (_, i) => `k${i}{t}`);
      await Promise.all([writer.setMany(keys.map((k) => [k, `v-${k}`])), writer.set('solo{t}', 'one'), writer.delete('k0{t}')]);
      await pollUntil(() => received.length >= 6, { timeoutMs: 10_000, message: 'the six messages did not arrive' });
      expect(received.filter((m) => 'malformed' in m)).toEqual([]);
      const seqs = received.map((m) => m.seq).sort((a, b) => a - b);
      expect(seqs).toEqual(Array.from({ length: 6 }, (_, i) => seqs[0]! + i));
      // Published in the order they were numbered, so the reader never saw a gap.
      expect(received.map((m) => m.seq)).toEqual(seqs);
      expect(received.reduce((n, m) => n + m.entries.length, 0)).toBe(1602);
      await pollUntil(() => reader.stats().eventsReceived >= 1602, { timeoutMs: 10_000, message: 'the reader did not receive every entry' });
      expect(resyncs).toEqual([]);
      expect(reader.stats().resyncs).toBe(0);
    } finally {
      await reader.close();
    }
  });
});
