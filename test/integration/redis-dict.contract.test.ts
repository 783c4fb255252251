/**
 * The RedisDict contract, run on a standalone server and on the 3+3 cluster.
 *
 * Every test uses its own namespace and checks what Redis really holds with a raw client.
 */
import type { Cluster, Redis } from 'ioredis';
import { describe, expect, it, vi } from 'vitest';
import { CorruptDataError, InvalidArgumentError, RedisDictError, SerializationError } from '../../src/errors.js';
import { RedisDict, type RedisDictOptions } from '../../src/store/redis-dict.js';
import { formatStamp, isStamp, parseStamp } from '../../src/protocol/stamp.js';
import type { RedisClient } from '../../src/store/topology.js';
import { rejection } from '../helpers/assertions.js';
import { topologies, uniqueNamespace, withClients } from '../helpers/connections.js';

/** Keys that would trip a naive prefix, glob, hash-tag or encoding treatment. */
const AWKWARD_KEYS = [
  'plain',
  'a/b',
  'a/b/c/',
  '/leading',
  'star*',
  '*',
  'question?',
  '?',
  '[abc]',
  'br[a-z]cket',
  '{tag}',
  '{tag}suffix',
  'close}',
  'open{',
  '{}',
  ' ',
  'with space',
  ' trailing ',
  'tab\there',
  'new\nline',
  'back\\slash',
  'ключ',
  '鍵',
  'e\u0301',
  '🔑',
  '👩‍👩‍👧‍👦',
  'nul\u0000byte',
  '1',
  '-0.5',
  'ns2/x',
  '__proto__',
  'constructor',
  'hasOwnProperty',
];

describe.each(topologies())('RedisDict contract (%s)', (topology, factory) => {
  const clients = withClients({ closeAfter: 'each' });
  /** A new client, closed after the test. */
  const connect = (): RedisClient => clients.track(factory());

  const isClusterTopology = topology === 'cluster';
  const ns = (): string => uniqueNamespace('contract');
  const dictOf = <V = unknown>(namespace: string, options?: RedisDictOptions<V>, client: RedisClient = connect()): RedisDict<V> =>
    new RedisDict<V>(client, namespace, options);

  /** The Redis instances holding data: the masters of the cluster, or the server. */
  async function dataNodes(client: RedisClient): Promise<Redis[]> {
    await client.ping();
    return (client as Cluster).isCluster === true ? (client as Cluster).nodes('master') : [client as Redis];
  }

  /** Every Redis key matching `pattern` (any type), from every master, as raw SCAN sees them. */
  async function rawKeys(client: RedisClient, pattern: string): Promise<string[]> {
    const out: string[] = [];
    for (const node of await dataNodes(client)) {
      let cursor = '0';
      do {
        const [next, found] = await node.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
        cursor = next;
        out.push(...found);
      } while (cursor !== '0');
    }
    return out.sort();
  }

  /** `*`, `?`, `[` and `\` escaped for a SCAN pattern. */
  const glob = (text: string): string => text.replace(/[*?[\]\\]/g, '\\$&');
  const namespaceKeys = (client: RedisClient, namespace: string): Promise<string[]> => rawKeys(client, `${glob(namespace)}/*`);

  async function collect<T>(iterable: AsyncIterable<T>): Promise<T[]> {
    const out: T[] = [];
    for await (const item of iterable) out.push(item);
    return out;
  }

  // ------------------------------------------------------------------ basic Map-like API

  describe('get / set / has / delete', () => {
    it('stores, reads, overwrites and deletes a value', async () => {
      const dict = dictOf<unknown>(ns());
      expect(await dict.get('k')).toBeUndefined();
      expect(await dict.has('k')).toBe(false);

      await dict.set('k', { a: 1 });
      expect(await dict.get('k')).toEqual({ a: 1 });
      expect(await dict.has('k')).toBe(true);

      await dict.set('k', [2, 'two']);
      expect(await dict.get('k')).toEqual([2, 'two']);

      expect(await dict.delete('k')).toBe(true);
      expect(await dict.get('k')).toBeUndefined();
      expect(await dict.has('k')).toBe(false);
      expect(await dict.delete('k')).toBe(false);
      expect(await dict.delete('never-written')).toBe(false);
    });

    it('round-trips every kind of value, and tells null and falsy values from missing', async () => {
      const dict = dictOf<unknown>(ns());
      const values: [string, unknown][] = [
        ['null', null],
        ['zero', 0],
        ['false', false],
        ['empty-string', ''],
        ['empty-array', []],
        ['empty-object', {}],
        ['float', 0.1],
        ['nan', Number.NaN],
        ['big', 2 ** 60],
        ['unicode', 'ключ 🔑 鍵'],
        ['date', new Date(1_700_000_000_123)],
        ['bytes', new Uint8Array([0, 255, 1])],
        ['nested', { a: [{ b: null, c: [true, 'x'] }], 'key with space': 1 }],
      ];
      for (const [key, value] of values) await dict.set(key, value);
      for (const [key, value] of values) {
        expect(await dict.has(key), key).toBe(true);
        expect(await dict.get(key), key).toEqual(value);
      }
    });

    it('stores each key at `<namespace>/<key>` as a record: `v`, the stamp, then the msgpack value', async () => {
      const namespace = ns();
      const raw = connect();
      const dict = dictOf<string>(namespace);
      await dict.set('a/b', 'value');
      const stored = await raw.getBuffer(`${namespace}/a/b`);
      expect(stored).not.toBeNull();
      expect(stored![0]).toBe(0x76);
      expect(isStamp(stored!.toString('latin1', 1, 35))).toBe(true);
      expect(stored!.subarray(35).equals(Buffer.from([0xa5, ...Buffer.from('value')]))).toBe(true);
      expect(await namespaceKeys(raw, namespace)).toEqual([`${namespace}/a/b`]);
    });

    it("adds a client's keyPrefix to every key (as ioredis does), SCAN and hash slots included", async () => {
      const namespace = ns();
      const raw = connect();
      const prefix = `pfx-${namespace}:`;
      const dict = dictOf<string>(namespace, undefined, clients.track(factory({ keyPrefix: prefix })));
      await dict.set('a', 'one');
      await dict.setMany([
        ['b', 'two'],
        ['ключ', 'three'],
      ]);
      expect(await dict.getMany(['a', 'b', 'ключ'])).toEqual(['one', 'two', 'three']);
      expect(await dict.delete('b')).toBe(true);
      expect(await dict.get('b')).toBeUndefined();
      // What Redis holds: the prefixed keys only (b as a tombstone hash).
      expect((await raw.getBuffer(`${prefix}${namespace}/a`))?.subarray(35).toString()).toContain('one');
      expect((await raw.getBuffer(`${prefix}${namespace}/ключ`))?.subarray(35).toString()).toContain('three');
      expect(await raw.type(`${prefix}${namespace}/b`)).toBe('hash');
      for (const key of ['a', 'b', 'ключ']) expect(await raw.exists(`${namespace}/${key}`)).toBe(0);
      // The read's EXISTS (framed by the library) names the prefixed keys: foreign data is found there.
      await raw.sadd(`${prefix}${namespace}/foreign`, 'x');
      await expect(dict.getMany(['a', 'foreign'])).rejects.toMatchObject({ code: 'E_CORRUPT', key: 'foreign' });
      await raw.del(`${prefix}${namespace}/foreign`);
      // SCAN-based calls find the prefixed keys too.
      expect(await dict.size()).toBe(2);
      const seen: string[] = [];
      for await (const [key] of dict.entries()) seen.push(key);
      expect(seen.sort()).toEqual(['a', 'ключ']);
      await dict.clear();
      expect(await dict.size()).toBe(0);
      expect(await dict.get('a')).toBeUndefined();
    });

    it('treats number keys as their String() form', async () => {
      const namespace = ns();
      const raw = connect();
      const dict = dictOf<string>(namespace);
      await dict.set(1, 'one');
      expect(await dict.get('1')).toBe('one');
      expect(await dict.has(1)).toBe(true);
      await dict.set('1', 'uno');
      expect(await dict.get(1)).toBe('uno');
      await dict.set(1.5, 'one and a half');
      await dict.set(-0, 'zero');
      expect(await dict.get('1.5')).toBe('one and a half');
      expect(await dict.get(0)).toBe('zero');
      expect(await dict.getMany([1, '1', 1.5, '0'])).toEqual(['uno', 'uno', 'one and a half', 'zero']);
      expect((await collect(dict.keys())).sort()).toEqual(['0', '1', '1.5']);
      expect(await namespaceKeys(raw, namespace)).toEqual([`${namespace}/0`, `${namespace}/1`, `${namespace}/1.5`]);
      expect(await dict.delete('1')).toBe(true);
      expect(await dict.has(1)).toBe(false);
    });

    it('two instances on the same namespace see each other’s writes', async () => {
      const namespace = ns();
      const a = dictOf<number>(namespace);
      const b = dictOf<number>(namespace);
      await a.set('k', 1);
      expect(await b.get('k')).toBe(1);
      await b.set('k', 2);
      expect(await a.get('k')).toBe(2);
      expect(await a.delete('k')).toBe(true);
      expect(await b.has('k')).toBe(false);
    });
  });

  describe('batch operations', () => {
    it('getMany returns values aligned with the keys, undefined for missing ones', async () => {
      const dict = dictOf<string>(ns());
      await dict.setMany([
        ['a', 'A'],
        ['b', 'B'],
        [3, 'three'],
      ]);
      expect(await dict.getMany(['a', 'missing', 3, 'b', 'a', '3'])).toEqual(['A', undefined, 'three', 'B', 'A', 'three']);
      expect(await dict.getMany([])).toEqual([]);
      expect(await dict.getMany(new Set(['b']))).toEqual(['B']);
    });

    it('setMany accepts any iterable of pairs; the last value of a repeated key wins', async () => {
      const dict = dictOf<number>(ns());
      await dict.setMany(
        new Map<string, number>([
          ['m1', 1],
          ['m2', 2],
        ]),
      );
      function* pairs(): Generator<[string, number]> {
        yield ['g1', 10];
        yield ['dup', 1];
        yield ['dup', 2];
        yield ['dup', 3];
      }
      await dict.setMany(pairs());
      await dict.setMany([]);
      expect(await dict.getMany(['m1', 'm2', 'g1', 'dup'])).toEqual([1, 2, 10, 3]);
      expect(await dict.size()).toBe(4);
    });

    it('deleteMany returns how many keys had a value', async () => {
      const dict = dictOf<number>(ns());
      await dict.setMany([
        ['a', 1],
        ['b', 2],
        ['c', 3],
      ]);
      expect(await dict.deleteMany(['a', 'a', 'missing', 'b'])).toBe(2);
      expect(await dict.deleteMany(['a', 'b'])).toBe(0);
      expect(await dict.deleteMany([])).toBe(0);
      expect(await dict.getMany(['a', 'b', 'c'])).toEqual([undefined, undefined, 3]);
    });

    it('splits large batches by batchSize and keeps every result in place', async () => {
      const dict = dictOf<number>(ns(), { batchSize: 7 });
      const entries = Array.from({ length: 250 }, (_, i): [string, number] => [`key-${i}`, i]);
      await dict.setMany(entries);
      const keys = entries.map(([k]) => k);
      expect(await dict.getMany([...keys, 'missing'])).toEqual([...entries.map(([, v]) => v), undefined]);
      expect(await dict.size()).toBe(250);
      expect(await dict.deleteMany(keys.filter((_, i) => i % 2 === 0))).toBe(125);
      expect(await dict.size()).toBe(125);
    });

    it('writes a batch of large values (2.4 MB, split by bytes into several script calls), and a mix of deletes and large values', async () => {
      const dict = dictOf<string>(ns());
      // Six values of ~400 KB in one slot: past 1 MiB of changes a batch is split (at most two per call).
      const entries = Array.from({ length: 6 }, (_, i): [string, string] => [`{big}:${i}`, String(i).repeat(400_000)]);
      await dict.setMany(entries);
      expect(await dict.getMany(entries.map(([k]) => k))).toEqual(entries.map(([, v]) => v));
      const stamps = await dict.readStamps(['{big}:2', '{big}:3']);
      const outcomes = await dict.writeVersioned([
        { key: '{big}:2', stamp: dict.clock.now(), deleted: true },
        { key: '{big}:3', stamp: dict.clock.now(), deleted: false, value: 'small' },
        { key: '{big}:4', stamp: dict.clock.now(), deleted: false, value: 'y'.repeat(600_000) },
      ]);
      expect(outcomes.map((o) => o.status)).toEqual(['written', 'written', 'written']);
      expect(stamps.every((s) => typeof s === 'string' && s.length === 34)).toBe(true);
      expect(await dict.getMany(['{big}:1', '{big}:2', '{big}:3', '{big}:4'])).toEqual([entries[1]![1], undefined, 'small', 'y'.repeat(600_000)]);
      expect(await dict.size()).toBe(5);
    });

    it('handles batches of keys sharing one hash slot (hash tag) above batchSize', async () => {
      const namespace = ns();
      const raw = connect();
      const dict = dictOf<number>(namespace, { batchSize: 100 });
      const entries = Array.from({ length: 1100 }, (_, i): [string, number] => [`{same}:${i}`, i]);
      await dict.setMany(entries);
      expect(await dict.getMany(entries.map(([k]) => k))).toEqual(entries.map(([, v]) => v));
      expect(await dict.size()).toBe(1100);
      expect(await raw.get(`${namespace}/{same}:0`)).not.toBeNull();
      expect(await dict.deleteMany(entries.map(([k]) => k))).toBe(1100);
      expect(await dict.size()).toBe(0);
    });

    it('runs one round trip per node for getMany, setMany and deleteMany of 200 keys', async () => {
      const client = connect();
      const dict = dictOf<number>(ns(), undefined, client);
      const entries = Array.from({ length: 200 }, (_, i): [string, number] => [`rt-${i}`, i]);
      const keys = entries.map(([k]) => k);
      // ioredis sends a whole pipeline with one socket write (and the library a few commands with
      // the socket corked, flushed as one), so socket writes per node count round trips: counted
      // where the socket hands bytes to the system (`_write`, or `_writev` for corked writes).
      // Warm up first: connect every node and load the script, so that no lazy connection or
      // NOSCRIPT fallback adds writes to the ones counted.
      await dict.setMany(entries);
      await dict.getMany(keys);
      const nodes = await dataNodes(client);
      for (const node of nodes) expect(node.status).toBe('ready');

      const countWrites = async (operation: () => Promise<unknown>): Promise<number[]> => {
        type Flushing = { _write: (...args: unknown[]) => void; _writev: (...args: unknown[]) => void };
        const spies = nodes.map((node) => [vi.spyOn(node.stream as unknown as Flushing, '_write'), vi.spyOn(node.stream as unknown as Flushing, '_writev')] as const);
        try {
          await operation();
          return spies.map(([write, writev]) => write.mock.calls.length + writev.mock.calls.length);
        } finally {
          for (const [write, writev] of spies) {
            write.mockRestore();
            writev.mockRestore();
          }
        }
      };

      for (const [name, operation] of [
        ['getMany', () => dict.getMany(keys)],
        ['setMany', () => dict.setMany(entries)],
        ['deleteMany', () => dict.deleteMany(keys)],
      ] as const) {
        const writes = await countWrites(operation);
        for (const count of writes) expect(count, `${name}: socket writes per node`).toBeLessThanOrEqual(1);
        expect(
          writes.reduce((a, b) => a + b, 0),
          `${name}: total socket writes`,
        ).toBeLessThanOrEqual(nodes.length);
        if (!isClusterTopology) expect(writes, name).toEqual([1]);
      }

      if (!isClusterTopology) {
        // On one server the whole batch is one command, not one per key (a read: MGET and the
        // EXISTS of the same keys, in one pipeline; live keys, so no follow-up).
        const send = vi.spyOn(client as Redis, 'sendCommand');
        try {
          await dict.setMany(entries);
          await dict.getMany(keys);
          await dict.deleteMany(keys);
          expect(send.mock.calls.map(([command]) => command.name.toLowerCase())).toEqual(['evalsha', 'mget', 'exists', 'evalsha']);
        } finally {
          send.mockRestore();
        }
      }
    });
  });

  // ------------------------------------------------------------------ iteration and size

  describe('iteration', () => {
    it('lists keys with /, *, ?, [, {, }, spaces, unicode and emoji exactly once', async () => {
      const namespace = ns();
      const dict = dictOf<string>(namespace);
      // A sibling namespace whose keys look like ours must not show up.
      const sibling = dictOf<string>(`${namespace}2`);
      await sibling.setMany(AWKWARD_KEYS.map((k) => [k, `sibling:${k}`]));
      await dict.setMany(AWKWARD_KEYS.map((k) => [k, `value:${k}`]));

      const keys = await collect(dict.keys());
      expect(keys).toHaveLength(AWKWARD_KEYS.length);
      expect([...keys].sort()).toEqual([...AWKWARD_KEYS].sort());

      const values = await collect(dict.values());
      expect([...values].sort()).toEqual(AWKWARD_KEYS.map((k) => `value:${k}`).sort());

      const entries = await collect(dict.entries());
      expect(entries).toHaveLength(AWKWARD_KEYS.length);
      for (const [key, value] of entries) expect(value).toBe(`value:${key}`);

      const viaForAwait: [string, string][] = [];
      for await (const entry of dict) viaForAwait.push(entry);
      expect(new Map(viaForAwait)).toEqual(new Map(entries));

      expect(await dict.size()).toBe(AWKWARD_KEYS.length);
      for (const key of AWKWARD_KEYS) expect(await dict.get(key), key).toBe(`value:${key}`);
      expect(await dict.getMany(AWKWARD_KEYS)).toEqual(AWKWARD_KEYS.map((k) => `value:${k}`));
    });

    it('iterates more than 2500 keys over several SCAN cursors without duplicates', async () => {
      const namespace = ns();
      const raw = connect();
      const dict = dictOf<number>(namespace);
      const count = 3000;
      const entries = Array.from({ length: count }, (_, i): [string, number] => [`item:${i}`, i]);
      await dict.setMany(entries);

      if (isClusterTopology) {
        // The keys really are spread over every master.
        const perMaster: number[] = [];
        for (const node of await dataNodes(raw)) {
          let cursor = '0';
          let found = 0;
          do {
            const [next, batch] = await node.scan(cursor, 'MATCH', `${namespace}/*`, 'COUNT', 1000);
            cursor = next;
            found += batch.length;
          } while (cursor !== '0');
          perMaster.push(found);
        }
        expect(perMaster.length).toBeGreaterThanOrEqual(3);
        for (const found of perMaster) expect(found).toBeGreaterThan(count / 10);
        expect(perMaster.reduce((a, b) => a + b, 0)).toBe(count);
      }

      const keys = await collect(dict.keys());
      expect(keys).toHaveLength(count);
      expect(new Set(keys).size).toBe(count);
      expect(new Set(keys)).toEqual(new Set(entries.map(([k]) => k)));

      const seen = new Map<string, number>();
      for await (const [key, value] of dict) {
        expect(seen.has(key), `duplicate ${key}`).toBe(false);
        seen.set(key, value);
      }
      expect(seen).toEqual(new Map(entries));
      expect(await dict.size()).toBe(count);

      // Tombstones are skipped by iteration and size.
      expect(await dict.deleteMany(entries.slice(0, 1000).map(([k]) => k))).toBe(1000);
      expect(await dict.size()).toBe(count - 1000);
      const remaining = await collect(dict.keys());
      expect(remaining).toHaveLength(count - 1000);
      expect(remaining.some((k) => seen.get(k)! < 1000)).toBe(false);
    });

    // On a Cluster this fails until fixed in src/store/redis-dict.ts (scanBatches): it reads
    // `cluster.nodes('master')` without waiting for the cluster to be ready, so on a new Cluster
    // client size() is 0, keys() yields nothing and clear() deletes nothing, silently (or a SCAN
    // goes to a seed connection that is then closed: "Connection is closed.").
    it('size(), keys() and clear() work as the first commands of a new client', async () => {
      const namespace = ns();
      const writer = dictOf<number>(namespace);
      await writer.setMany([
        ['a', 1],
        ['b', 2],
        ['c', 3],
      ]);
      expect(await dictOf<number>(namespace).size()).toBe(3);
      expect((await collect(dictOf<number>(namespace).keys())).sort()).toEqual(['a', 'b', 'c']);
      await dictOf<number>(namespace).clear();
      expect(await writer.size()).toBe(0);
    });

    it('is empty for an empty namespace', async () => {
      const client = connect();
      await client.ping();
      const dict = dictOf(ns(), undefined, client);
      expect(await dict.size()).toBe(0);
      expect(await collect(dict.keys())).toEqual([]);
      expect(await collect(dict.entries())).toEqual([]);
    });

    it('iteration skips foreign keys of other Redis types stored in the namespace; get() and has() reject them with E_CORRUPT', async () => {
      const namespace = ns();
      const raw = connect();
      const dict = dictOf<number>(namespace);
      await dict.set('real', 1);
      await raw.rpush(`${namespace}/list`, 'x');
      await raw.sadd(`${namespace}/set`, 'x');
      expect(await collect(dict.keys())).toEqual(['real']);
      expect(await collect(dict.entries())).toEqual([['real', 1]]);
      expect(await dict.size()).toBe(1);
      await expect(dict.get('list')).rejects.toMatchObject({ code: 'E_CORRUPT', key: 'list' });
      await expect(dict.has('set')).rejects.toMatchObject({ code: 'E_CORRUPT', key: 'set' });
    });
  });

  describe('size() and clear()', () => {
    it('counts live entries only', async () => {
      const dict = dictOf<number>(ns());
      expect(await dict.size()).toBe(0);
      await dict.setMany([
        ['a', 1],
        ['b', 2],
        ['c', 3],
      ]);
      expect(await dict.size()).toBe(3);
      await dict.set('a', 10);
      expect(await dict.size()).toBe(3);
      await dict.delete('b');
      expect(await dict.size()).toBe(2);
      await dict.set('b', 20);
      expect(await dict.size()).toBe(3);
    });

    it('clear() empties its namespace and leaves look-alike namespaces untouched', async () => {
      const base = ns();
      const raw = connect();
      const names = [base, `${base}2`, `${base}:x`, `${base}.x`, `${base}-x`, `x${base}`];
      const dicts = names.map((name) => dictOf<string>(name));
      for (const [i, dict] of dicts.entries()) {
        await dict.setMany([...AWKWARD_KEYS.map((k): [string, string] => [k, `${i}:${k}`]), ['only-here', String(i)]]);
      }
      await raw.set(`${base}-unrelated`, 'untouched');

      await dicts[0]!.clear();

      expect(await dicts[0]!.size()).toBe(0);
      expect(await collect(dicts[0]!.keys())).toEqual([]);
      expect(await dicts[0]!.get('only-here')).toBeUndefined();
      for (const [i, dict] of dicts.entries()) {
        if (i === 0) continue;
        expect(await dict.size(), names[i]).toBe(AWKWARD_KEYS.length + 1);
        expect(await dict.getMany(AWKWARD_KEYS), names[i]).toEqual(AWKWARD_KEYS.map((k) => `${i}:${k}`));
      }
      expect(await raw.get(`${base}-unrelated`)).toBe('untouched');
      // What clear() left behind are tombstones only.
      for (const key of await namespaceKeys(raw, base)) {
        expect(await raw.type(key), key).toBe('hash');
      }
    });

    it('clear() on a namespace with thousands of keys', async () => {
      const dict = dictOf<number>(ns(), { batchSize: 100 });
      await dict.setMany(Array.from({ length: 2600 }, (_, i): [string, number] => [`k${i}`, i]));
      await dict.clear();
      expect(await dict.size()).toBe(0);
      expect(await dict.get('k1')).toBeUndefined();
    });
  });

  // ------------------------------------------------------------------ tombstones and stamps

  describe('tombstones', () => {
    it('a delete leaves a hash `{ s: stamp }` with a TTL of about tombstoneTtlMs', async () => {
      const namespace = ns();
      const raw = connect();
      const tombstoneTtlMs = 120_000;
      const dict = dictOf<string>(namespace, { tombstoneTtlMs });
      await dict.set('k', 'v');
      const liveStamp = (await raw.getBuffer(`${namespace}/k`))!.toString('latin1', 1, 35);
      expect(await raw.pttl(`${namespace}/k`)).toBe(-1);

      expect(await dict.delete('k')).toBe(true);
      expect(await raw.type(`${namespace}/k`)).toBe('hash');
      const ttl = await raw.pttl(`${namespace}/k`);
      expect(ttl).toBeGreaterThan(tombstoneTtlMs - 30_000);
      expect(ttl).toBeLessThanOrEqual(tombstoneTtlMs);
      const tomb = await raw.hgetall(`${namespace}/k`);
      expect(Object.keys(tomb)).toEqual(['s']);
      expect(isStamp(tomb['s'])).toBe(true);
      expect(tomb['s']! > liveStamp).toBe(true);

      // Invisible to every read.
      expect(await dict.get('k')).toBeUndefined();
      expect(await dict.has('k')).toBe(false);
      expect(await dict.getMany(['k'])).toEqual([undefined]);
      expect(await collect(dict.keys())).toEqual([]);
      expect(await dict.size()).toBe(0);

      // A later set replaces the tombstone by a record with no TTL.
      await dict.set('k', 'again');
      expect(await raw.type(`${namespace}/k`)).toBe('string');
      expect(await raw.pttl(`${namespace}/k`)).toBe(-1);
      expect(await dict.get('k')).toBe('again');
    });

    it('deleting a missing key leaves a tombstone too, and reports false', async () => {
      const namespace = ns();
      const raw = connect();
      const dict = dictOf<string>(namespace, { tombstoneTtlMs: 60_000 });
      expect(await dict.delete('ghost')).toBe(false);
      expect(await raw.type(`${namespace}/ghost`)).toBe('hash');
      expect(await raw.pttl(`${namespace}/ghost`)).toBeGreaterThan(0);
      expect(await dict.size()).toBe(0);
    });

    it('writeVersioned refuses an older write after a newer delete (no resurrection) and accepts a newer one', async () => {
      const namespace = ns();
      const raw = connect();
      const dict = dictOf<string>(namespace);
      await dict.set('k', 'original');
      const older = dict.clock.now();
      expect(await dict.delete('k')).toBe(true);
      const tombStamp = await raw.hget(`${namespace}/k`, 's');
      expect(tombStamp! > older).toBe(true);

      const refused = await dict.writeVersioned([{ key: 'k', stamp: older, deleted: false, value: 'zombie' }]);
      expect(refused).toEqual([{ status: 'conflict', stored: { stamp: tombStamp, deleted: true } }]);
      expect(await dict.get('k')).toBeUndefined();
      expect(await raw.type(`${namespace}/k`)).toBe('hash');
      expect(await raw.hget(`${namespace}/k`, 's')).toBe(tombStamp);

      const newer = dict.clock.now();
      const written = await dict.writeVersioned([{ key: 'k', stamp: newer, deleted: false, value: 'reborn' }]);
      expect(written).toEqual([{ status: 'written', existed: false }]);
      expect(await dict.get('k')).toBe('reborn');
      expect((await raw.getBuffer(`${namespace}/k`))!.toString('latin1', 1, 35)).toBe(newer);
    });

    it('writeVersioned: an older write or delete loses against a newer value, and reports the stored value', async () => {
      const namespace = ns();
      const dict = dictOf<{ n: number }>(namespace);
      const older = dict.clock.now();
      await dict.set('k', { n: 2 });
      const [storedStamp] = (await dict.readVersioned(['k'])).map((v) => v!.stamp);

      const outcomes = await dict.writeVersioned([
        { key: 'k', stamp: older, deleted: false, value: { n: 1 } },
        { key: 'fresh', stamp: older, deleted: false, value: { n: 9 } },
      ]);
      expect(outcomes).toEqual([
        { status: 'conflict', stored: { stamp: storedStamp, deleted: false, value: { n: 2 } } },
        { status: 'written', existed: false },
      ]);
      expect(await dict.writeVersioned([{ key: 'k', stamp: older, deleted: true }])).toEqual([
        { status: 'conflict', stored: { stamp: storedStamp, deleted: false, value: { n: 2 } } },
      ]);
      expect(await dict.get('k')).toEqual({ n: 2 });

      // A newer stamp with a guard at or below the stored stamp is refused too.
      const newer = dict.clock.now();
      expect((await dict.writeVersioned([{ key: 'k', stamp: newer, guard: storedStamp!, deleted: false, value: { n: 3 } }]))[0]!.status).toBe(
        'conflict',
      );
      expect(await dict.writeVersioned([{ key: 'k', stamp: newer, deleted: false, value: { n: 3 } }])).toEqual([{ status: 'written', existed: true }]);
      expect(await dict.get('k')).toEqual({ n: 3 });
    });

    it('a read moves the clock past the stamp it read, so the next write wins over a clock that runs ahead', async () => {
      const namespace = ns();
      // 30 s ahead: within maxDriftMs (further ahead, its writes are refused: test/integration/apply-script.test.ts).
      const ahead = dictOf<string>(namespace, { clock: () => Date.now() + 30_000 });
      const behind = dictOf<string>(namespace);
      await ahead.set('k', 'from the future');
      expect(await behind.get('k')).toBe('from the future');
      await behind.set('k', 'causally later');
      expect(await ahead.get('k')).toBe('causally later');
      expect(await behind.delete('k')).toBe(true);
      expect(await ahead.has('k')).toBe(false);
    });

    it('stamps writes with the injected clock', async () => {
      const namespace = ns();
      const raw = connect();
      const fixed = 1_700_000_000_000;
      const dict = dictOf<number>(namespace, { clock: () => fixed });
      await dict.set('a', 1);
      await dict.set('b', 2);
      await dict.delete('b');
      const stampA = (await raw.getBuffer(`${namespace}/a`))!.toString('latin1', 1, 35);
      const stampB = (await raw.hget(`${namespace}/b`, 's'))!;
      expect(stampA.slice(0, 12)).toBe(fixed.toString(16).padStart(12, '0'));
      expect(parseStamp(stampA)).toEqual({ ms: fixed, counter: 0, node: dict.clock.nodeId });
      expect(parseStamp(stampB)).toEqual({ ms: fixed, counter: 2, node: dict.clock.nodeId });
      expect(stampA).toBe(formatStamp(fixed, 0, dict.clock.nodeId));
    });
  });

  // ------------------------------------------------------------------ bad input changes nothing

  describe('bad input is refused with a typed error and writes nothing', () => {
    const circular: Record<string, unknown> = {};
    circular['self'] = circular;
    const unserializable: [string, unknown][] = [
      ['a function', () => 1],
      ['a symbol', Symbol('s')],
      ['a bigint', 1n],
      ['undefined', undefined],
      ['a Map', new Map([['a', 1]])],
      ['a Set', new Set([1])],
      ['a class instance', new (class Point {})()],
      ['a circular structure', circular],
      ['an own __proto__ key', JSON.parse('{"__proto__": {"polluted": true}}') as unknown],
      ['a sparse array', [1, , 3]], // eslint-disable-line no-sparse-arrays
      ['undefined in an array', [1, undefined]],
    ];

    it.each(unserializable)('set() refuses %s with E_SERIALIZE naming the key', async (_name, value) => {
      const namespace = ns();
      const raw = connect();
      const dict = dictOf<unknown>(namespace);
      const error = await rejection(dict.set('the/key', value));
      expect(error).toBeInstanceOf(SerializationError);
      expect(error.code).toBe('E_SERIALIZE');
      expect((error as SerializationError).key).toBe('the/key');
      expect(await namespaceKeys(raw, namespace)).toEqual([]);
    });

    it('a refused set() leaves the old value intact', async () => {
      const namespace = ns();
      const raw = connect();
      const dict = dictOf<unknown>(namespace);
      await dict.set('k', { keep: 'me' });
      const before = await raw.getBuffer(`${namespace}/k`);
      for (const [, value] of unserializable) {
        await expect(dict.set('k', value)).rejects.toMatchObject({ code: 'E_SERIALIZE', key: 'k' });
      }
      expect((await raw.getBuffer(`${namespace}/k`))!.equals(before!)).toBe(true);
      expect(await dict.get('k')).toEqual({ keep: 'me' });
    });

    it('refuses a value above maxValueBytes with E_VALUE_TOO_LARGE', async () => {
      const namespace = ns();
      const raw = connect();
      const dict = dictOf<string>(namespace, { maxValueBytes: 100 });
      // A str8 of n bytes encodes to n + 2 bytes.
      await dict.set('fits', 'x'.repeat(98));
      const error = await rejection(dict.set('big', 'x'.repeat(99)));
      expect(error).toBeInstanceOf(SerializationError);
      expect(error.code).toBe('E_VALUE_TOO_LARGE');
      expect((error as SerializationError).key).toBe('big');
      expect(error.message).toMatch(/maxValueBytes/);
      await expect(dict.set('fits', 'y'.repeat(5000))).rejects.toMatchObject({ code: 'E_VALUE_TOO_LARGE' });
      expect(await dict.get('fits')).toBe('x'.repeat(98));
      expect(await namespaceKeys(raw, namespace)).toEqual([`${namespace}/fits`]);
    });

    it('setMany with one bad value among good ones writes none of them', async () => {
      const namespace = ns();
      const raw = connect();
      const dict = dictOf<unknown>(namespace, { maxValueBytes: 1000 });
      const good = Array.from({ length: 50 }, (_, i): [string, unknown] => [`good-${i}`, i]);

      for (const [bad, code] of [
        [['bad', () => 1], 'E_SERIALIZE'],
        [['bad', new Map()], 'E_SERIALIZE'],
        [['bad', 'x'.repeat(2000)], 'E_VALUE_TOO_LARGE'],
        [['', 1], 'E_INVALID_KEY'],
        [[Number.NaN, 1], 'E_INVALID_KEY'],
        [['\uD800', 1], 'E_INVALID_KEY'],
      ] as [[string | number, unknown], string][]) {
        const error = await rejection(dict.setMany([...good.slice(0, 25), bad, ...good.slice(25)]));
        expect(error.code).toBe(code);
      }
      await expect(dict.setMany([['ok', 1], 'not a pair'] as never)).rejects.toBeInstanceOf(RedisDictError);
      await expect(dict.setMany(null as never)).rejects.toBeInstanceOf(RedisDictError);
      expect(await namespaceKeys(raw, namespace)).toEqual([]);
      expect(await dict.size()).toBe(0);
    });

    it('invalid keys are refused with E_INVALID_KEY by every method, and nothing changes', async () => {
      const namespace = ns();
      const raw = connect();
      const dict = dictOf<number>(namespace);
      await dict.set('keep', 1);
      const before = await namespaceKeys(raw, namespace);
      const badKeys: unknown[] = ['', '\uD800', 'a\uDFFFb', Number.NaN, Number.POSITIVE_INFINITY, {}, [], null, undefined, true, 1n, 'k'.repeat(5000)];
      for (const key of badKeys) {
        const k = key as string;
        for (const call of [
          () => dict.get(k),
          () => dict.set(k, 1),
          () => dict.has(k),
          () => dict.delete(k),
          () => dict.getMany(['keep', k]),
          () => dict.deleteMany(['keep', k]),
          () => dict.setMany([['keep', 2], [k, 1]]),
        ]) {
          const error = await rejection(call());
          expect(error).toBeInstanceOf(InvalidArgumentError);
          expect(error.code).toBe('E_INVALID_KEY');
        }
      }
      expect(await namespaceKeys(raw, namespace)).toEqual(before);
      expect(await dict.get('keep')).toBe(1);
    });

    it('unknown options and bad option values are refused by the constructor', () => {
      const client = connect();
      for (const options of [{ bogus: 1 }, { batchSize: -1 }, { maxValueBytes: 0 }, { tombstoneTtlMs: 1.5 }, { clock: 'now' }, { codec: {} }]) {
        let error: unknown;
        try {
          new RedisDict(client, ns(), options as never);
        } catch (e) {
          error = e;
        }
        expect(error, JSON.stringify(options)).toBeInstanceOf(InvalidArgumentError);
        expect((error as InvalidArgumentError).code).toBe('E_INVALID_OPTION');
      }
      expect(() => new RedisDict(client, ns(), { bogus: 1 } as never)).toThrow(/unknown option `bogus`/);
      expect(() => new RedisDict(client, ns(), { batchSize: -1 })).toThrow('expected `batchSize` to be a positive integer, got `-1` (number)');
    });

    it('invalid namespaces are refused by the constructor', () => {
      const client = connect();
      for (const namespace of ['', 'a/b', 'a*', 'a?', 'a[b]', 'a{b}', 'a b', 'ключ', 'x'.repeat(129)]) {
        let error: unknown;
        try {
          new RedisDict(client, namespace);
        } catch (e) {
          error = e;
        }
        expect(error, namespace).toBeInstanceOf(InvalidArgumentError);
        expect((error as InvalidArgumentError).code).toBe('E_INVALID_NAMESPACE');
      }
    });
  });

  // ------------------------------------------------------------------ corrupt and foreign data

  describe('corrupt or foreign data', () => {
    it('get() rejects with a CorruptDataError naming the key; other keys still work', async () => {
      const namespace = ns();
      const raw = connect();
      const dict = dictOf<string>(namespace);
      await dict.set('good', 'fine');
      const validStamp = formatStamp(Date.now(), 0, '00000000000000aa');
      const corrupt: [string, Buffer | string][] = [
        ['garbage', 'garbage'],
        ['empty', ''],
        ['short', 'v0123'],
        ['bad-tag', `x${validStamp}${'\u00a1'}`],
        ['bad-stamp', `v${'Z'.repeat(34)}\u00a1`],
        ['bad-payload', Buffer.concat([Buffer.from(`v${validStamp}`, 'latin1'), Buffer.from([0xc1])])],
        ['truncated-payload', Buffer.concat([Buffer.from(`v${validStamp}`, 'latin1'), Buffer.from([0x92, 0x01])])],
        ['trailing-bytes', Buffer.concat([Buffer.from(`v${validStamp}`, 'latin1'), Buffer.from([0x01, 0x02])])],
        ['a/b {c}', 'garbage'],
      ];
      for (const [key, value] of corrupt) await raw.set(`${namespace}/${key}`, value);

      for (const [key] of corrupt) {
        const error = await rejection(dict.get(key));
        expect(error, key).toBeInstanceOf(CorruptDataError);
        expect(error.code).toBe('E_CORRUPT');
        expect((error as CorruptDataError).key).toBe(key);
        expect(error.message).toContain(key);
        await expect(dict.getMany(['good', key])).rejects.toMatchObject({ code: 'E_CORRUPT', key });
      }
      expect(await dict.get('good')).toBe('fine');
      expect(await dict.getMany(['good', 'missing'])).toEqual(['fine', undefined]);
      await dict.set('another', 'also fine');
      expect(await dict.get('another')).toBe('also fine');
    });

    it('has() reads the record, not the value: an undecodable payload is present, foreign data rejects', async () => {
      const namespace = ns();
      const raw = connect();
      const dict = dictOf<string>(namespace);
      const validStamp = formatStamp(Date.now(), 0, '00000000000000aa');
      await raw.set(`${namespace}/bad-payload`, Buffer.concat([Buffer.from(`v${validStamp}`, 'latin1'), Buffer.from([0xc1])]));
      await raw.set(`${namespace}/garbage`, 'garbage');
      expect(await dict.has('bad-payload')).toBe(true);
      await expect(dict.has('garbage')).rejects.toMatchObject({ code: 'E_CORRUPT', key: 'garbage' });
    });

    it('readStamps() reports data of any other Redis type as foreign, like a foreign string', async () => {
      const namespace = ns();
      const raw = connect();
      const dict = dictOf<string>(namespace);
      await dict.set('live', 'v');
      await dict.set('gone', 'v');
      await dict.delete('gone');
      await raw.set(`${namespace}/string`, 'garbage');
      await raw.hset(`${namespace}/hash`, 'a', '1');
      await raw.hset(`${namespace}/bad-tombstone`, 's', 'not a stamp');
      await raw.rpush(`${namespace}/list`, 'x');
      await raw.sadd(`${namespace}/set`, 'x');
      const stamps = await dict.readStamps(['live', 'gone', 'missing', 'string', 'hash', 'bad-tombstone', 'list', 'set']);
      expect(stamps[0]).toMatch(/^[0-9a-f]{34}$/);
      // A tombstone and nothing both read as '' (no live record); foreign data of any type as undefined.
      expect(stamps.slice(1)).toEqual(['', '', undefined, undefined, undefined, undefined, undefined]);
    });

    // A read is MGET + EXISTS in one round trip; when EXISTS counts keys MGET answered nil for,
    // those are classified (HGET s, TYPE): tombstones read as missing, data of another type rejects.
    it('get() and has() reject a plain hash where a record should be with E_CORRUPT naming the key', async () => {
      const namespace = ns();
      const raw = connect();
      const dict = dictOf<string>(namespace);
      await raw.hset(`${namespace}/hash`, 'a', '1');
      await expect(dict.get('hash')).rejects.toMatchObject({ code: 'E_CORRUPT', key: 'hash' });
      await expect(dict.has('hash')).rejects.toMatchObject({ code: 'E_CORRUPT', key: 'hash' });
      await expect(dict.getMany(['nothing', 'hash'])).rejects.toMatchObject({ code: 'E_CORRUPT', key: 'hash' });
      // A hash whose `s` is not a stamp is not a tombstone either; and nothing was changed.
      await raw.hset(`${namespace}/fake-tombstone`, 's', 'not a stamp');
      await expect(dict.get('fake-tombstone')).rejects.toMatchObject({ code: 'E_CORRUPT', key: 'fake-tombstone' });
      expect(await raw.hgetall(`${namespace}/hash`)).toEqual({ a: '1' });
      expect(await raw.hgetall(`${namespace}/fake-tombstone`)).toEqual({ s: 'not a stamp' });
    });

    it.each([
      ['list', (raw: RedisClient, key: string) => raw.rpush(key, 'a')],
      ['set', (raw: RedisClient, key: string) => raw.sadd(key, 'a')],
      ['zset', (raw: RedisClient, key: string) => raw.zadd(key, 1, 'a')],
      ['stream', (raw: RedisClient, key: string) => raw.xadd(key, '*', 'f', 'v')],
    ] as const)('get(), has() and getMany() reject a %s where a record should be with E_CORRUPT naming the key', async (type, write) => {
      const namespace = ns();
      const raw = connect();
      const dict = dictOf<string>(namespace);
      await write(raw, `${namespace}/foreign`);
      await dict.set('good', 'value');
      await expect(dict.get('foreign')).rejects.toMatchObject({ code: 'E_CORRUPT', key: 'foreign', message: expect.stringContaining(`a ${type}`) });
      await expect(dict.has('foreign')).rejects.toMatchObject({ code: 'E_CORRUPT', key: 'foreign' });
      await expect(dict.getMany(['good', 'foreign'])).rejects.toMatchObject({ code: 'E_CORRUPT', key: 'foreign' });
      expect(await raw.type(`${namespace}/foreign`)).toBe(type);
    });

    it('getMany() over records, tombstones and nothing reads tombstones as missing; one foreign key among them rejects naming it', async () => {
      const namespace = ns();
      const raw = connect();
      const dict = dictOf<string>(namespace);
      // Many keys, so that on the cluster they spread over slots and nodes.
      const records = Array.from({ length: 30 }, (_, i) => `r${i}`);
      const tombstones = Array.from({ length: 30 }, (_, i) => `t${i}`);
      const nothing = Array.from({ length: 30 }, (_, i) => `n${i}`);
      await dict.setMany([...records, ...tombstones].map((k) => [k, `v-${k}`] as const));
      await dict.deleteMany(tombstones);
      expect(await raw.type(`${namespace}/t0`)).toBe('hash');
      const mixed = records.flatMap((r, i) => [r, tombstones[i]!, nothing[i]!]);
      expect(await dict.getMany(mixed)).toEqual(mixed.map((k) => (k.startsWith('r') ? `v-${k}` : undefined)));
      expect(await dict.has('t3')).toBe(false);
      expect(await dict.get('t3')).toBeUndefined();
      await raw.sadd(`${namespace}/foreign`, 'x');
      await expect(dict.getMany([...mixed.slice(0, 45), 'foreign', ...mixed.slice(45)])).rejects.toMatchObject({ code: 'E_CORRUPT', key: 'foreign' });
      await expect(rejection(dict.getMany([...mixed, 'foreign']))).resolves.toBeInstanceOf(CorruptDataError);
      expect(await dict.getMany(records)).toEqual(records.map((k) => `v-${k}`));
    });

    it('reads racing writes and deletes of the same keys (records becoming tombstones and back) never report E_CORRUPT', async () => {
      const namespace = ns();
      const writer = dictOf<number>(namespace);
      const reader = dictOf<number>(namespace);
      const keys = Array.from({ length: 20 }, (_, i) => `k${i}`);
      await writer.setMany(keys.map((k) => [k, 0] as const));
      for (let round = 1; round <= 60; round++) {
        const write = round % 2 === 0 ? writer.setMany(keys.map((k) => [k, round] as const)) : writer.deleteMany(keys);
        const reads = [reader.getMany(keys), reader.get(keys[round % keys.length]!), reader.has(keys[(round * 7) % keys.length]!)];
        await Promise.all([write, ...reads]);
      }
    });

    it('set() and delete() overwrite corrupt data', async () => {
      const namespace = ns();
      const raw = connect();
      const dict = dictOf<string>(namespace);
      await raw.set(`${namespace}/k1`, 'garbage');
      await raw.set(`${namespace}/k2`, 'garbage');
      await dict.set('k1', 'repaired');
      expect(await dict.get('k1')).toBe('repaired');
      await dict.delete('k2');
      expect(await dict.get('k2')).toBeUndefined();
      expect(await raw.type(`${namespace}/k2`)).toBe('hash');
    });

    // Fails until fixed in src/store/scripts.ts: the script takes any 34 bytes after a `v` as a
    // stamp without checking they are hex, so `v` + 34 × `Z` counts as a stamp above every real
    // one: set() and delete() are refused and then reject with E_CORRUPT, forever. Data with no
    // `v` tag is overwritten (test above), so the two kinds of foreign data behave differently.
    it('set() and delete() overwrite a record whose stamp is malformed', async () => {
      const namespace = ns();
      const raw = connect();
      const dict = dictOf<string>(namespace);
      const badStamp = `v${'Z'.repeat(34)}\u0001`;
      await raw.set(`${namespace}/k1`, badStamp);
      await raw.set(`${namespace}/k2`, badStamp);
      await dict.set('k1', 'repaired');
      expect(await dict.get('k1')).toBe('repaired');
      await dict.delete('k2');
      expect(await raw.type(`${namespace}/k2`)).toBe('hash');
    });

    // Fails until fixed in src/store/redis-dict.ts (outcomeOf): when a compare-and-set is refused by a
    // stored record whose value cannot be decoded, writeVersioned() rejects with a
    // CorruptDataError although the other keys of the batch were written, so the caller (a
    // write-back flush) cannot tell which changes reached Redis. Documented contract: one outcome
    // per change, SerializationError only before anything is written.
    it('writeVersioned reports an undecodable stored value as that key’s outcome, not by rejecting the batch', async () => {
      const namespace = ns();
      const raw = connect();
      const dict = dictOf<number>(namespace);
      // Newer than the writes below, within maxDriftMs (a stamp beyond it would simply be overwritten).
      const future = formatStamp(Date.now() + 30_000, 0, 'ffffffffffffffff');
      await raw.set(`${namespace}/bad`, Buffer.concat([Buffer.from(`v${future}`, 'latin1'), Buffer.from([0xc1])]));
      const outcomes = await dict.writeVersioned([
        { key: 'a', stamp: dict.clock.now(), deleted: false, value: 1 },
        { key: 'bad', stamp: dict.clock.now(), deleted: false, value: 2 },
      ]);
      expect(outcomes[0]).toEqual({ status: 'written', existed: false });
      expect(['conflict', 'failed']).toContain(outcomes[1]!.status);
      expect(await dict.get('a')).toBe(1);
    });

    it('a corrupt record does not break the other keys of a batch write', async () => {
      const namespace = ns();
      const raw = connect();
      const dict = dictOf<number>(namespace);
      await raw.set(`${namespace}/bad`, 'garbage');
      await dict.setMany([
        ['a', 1],
        ['bad', 2],
        ['b', 3],
      ]);
      expect(await dict.getMany(['a', 'bad', 'b'])).toEqual([1, 2, 3]);
    });
  });
});
