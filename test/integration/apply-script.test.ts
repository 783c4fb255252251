/**
 * The apply script's guards, on real Redis (standalone and the 3+3 cluster):
 *
 * - ACL: a user with key rights but no channel rights (or without key rights) gets `E_NOPERM`,
 *   Redis holds nothing new and no peer hears anything: the script checks every permission it
 *   needs before its first write (issue #13 item 4).
 * - Clock skew: a writer whose clock is 48 h ahead is refused with `E_CLOCK_SKEW` (write-through
 *   and write-back), a stored stamp beyond `maxDriftMs` does not win against an honest write, and a
 *   cache that receives an entry stamped beyond the bound drops its entry (issue #13 item 5).
 * - Malformed calls (the documented layout with one part wrong) are refused before anything is
 *   written (issue #16 item 4).
 */
import { randomBytes } from 'node:crypto';
import { Cluster, Redis, ReplyError } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { PubSubCacheManager } from '../../src/cache/cache-manager.js';
import { msgpackCodec } from '../../src/protocol/codec.js';
import { ClockSkewError, FlushError, PermissionError, redisError } from '../../src/errors.js';
import { encodeHeader, encodeEntry } from '../../src/protocol/messages.js';
import { PubSubRedisDict } from '../../src/store/pubsub-redis-dict.js';
import { RedisDict } from '../../src/store/redis-dict.js';
import { APPLY_LUA } from '../../src/store/scripts.js';
import { MAX_DRIFT_MS, formatStamp, parseStamp } from '../../src/protocol/stamp.js';
import type { RedisClient } from '../../src/store/topology.js';
import { CloseFlushError, WriteBackCacheManager } from '../../src/write-back/manager.js';
import { rejection } from '../helpers/assertions.js';
import { pollUntil, standaloneClient, topologies, uniqueNamespace, withClients } from '../helpers/connections.js';

const DAY2 = 48 * 3_600_000;
const codec = msgpackCodec<unknown>();

describe.each(topologies())('apply script guards (%s)', (topology, factory) => {
  const clients = withClients();
  const closers: (() => Promise<unknown>)[] = [];
  const users: string[] = [];
  const admin = (): RedisClient => clients.track(factory());

  afterEach(async () => {
    await Promise.all(closers.splice(0).map((close) => close().catch(() => undefined)));
    const a = admin();
    for (const user of users.splice(0)) await onEveryNode(a, ['ACL', 'DELUSER', user]);
    await clients.closeAll();
  });

  /** Runs a command on the standalone server, or on every node (masters and replicas) of the cluster. */
  async function onEveryNode(client: RedisClient, args: string[]): Promise<void> {
    if (client instanceof Cluster) {
      if (client.status !== 'ready') await new Promise((resolve) => client.once('ready', resolve));
      await Promise.all(client.nodes('all').map((node) => node.call(args[0]!, args.slice(1))));
    } else {
      await client.call(args[0]!, args.slice(1));
    }
  }

  /** A new ACL user with `rules` (on every node) and a client logged in as it. */
  async function userClient(rules: string[]): Promise<RedisClient> {
    const user = `apply-${randomBytes(4).toString('hex')}`;
    users.push(user);
    await onEveryNode(admin(), ['ACL', 'SETUSER', user, 'reset', 'on', '>pw', ...rules]);
    return clients.track(factory({ username: user, password: 'pw', enableReadyCheck: false }));
  }

  /** Names of the keys of `ns` that exist, as the admin sees them (tombstones included). */
  async function storedKeys(a: RedisClient, ns: string, keys: string[]): Promise<string[]> {
    const found: string[] = [];
    for (const key of keys) if ((await a.exists(`${ns}/${key}`)) === 1) found.push(key);
    return found;
  }

  // ------------------------------------------------------------------ A. ACL

  for (const sharded of topology === 'cluster' ? [false, true] : [false]) {
    it(`a user with key rights but no channel rights: E_NOPERM naming the channel, nothing written${sharded ? ' (SPUBLISH)' : ''}`, async () => {
      const ns = uniqueNamespace('acl-chan');
      const a = admin();
      const tenant = new PubSubRedisDict<unknown>(await userClient([`~${ns}/*`, 'resetchannels', '+@all']), ns, { shardedPubSub: sharded });
      const honest = new PubSubRedisDict<unknown>(admin(), ns, { shardedPubSub: sharded });
      await honest.set('old', 'before');

      const error = await rejection(tenant.set('k', 'v'));
      expect(error.code).toBe('E_NOPERM');
      expect(error).toBeInstanceOf(PermissionError);
      expect((error as PermissionError).channel?.startsWith(sharded ? `${ns}/changes{` : `${ns}/update`)).toBe(true);
      expect(error.message).toMatch(/channel/);
      expect(error.cause).toBeInstanceOf(ReplyError);
      expect((error as PermissionError).key).toBe('k');
      // Every path that writes: batch, delete, delete of an existing key.
      expect((await rejection(tenant.setMany([['k2', 1], ['k3', 2]]))).code).toBe('E_NOPERM');
      expect((await rejection(tenant.delete('old'))).code).toBe('E_NOPERM');
      expect((await rejection(tenant.delete('never'))).code).toBe('E_NOPERM');
      // Redis holds nothing new, and the old value is untouched.
      expect(await storedKeys(a, ns, ['k', 'k2', 'k3', 'never'])).toEqual([]);
      expect(await honest.get('old')).toBe('before');
      // Reads are allowed (key rights).
      expect(await tenant.get('old')).toBe('before');
    });
  }

  it('a user without MSETNX (the fast path\'s first write, which the script leaves to Redis to check): E_NOPERM, nothing written', async () => {
    const ns = uniqueNamespace('acl-msetnx');
    const tenant = new PubSubRedisDict<unknown>(await userClient([`~${ns}/*`, `&${ns}/*`, '+@all', '-msetnx']), ns);
    const honest = new PubSubRedisDict<unknown>(admin(), ns);
    await honest.set('old', 'before');
    const error = await rejection(tenant.setMany([['k1', 1], ['k2', 2]]));
    expect(error.code).toBe('E_NOPERM');
    expect(await storedKeys(admin(), ns, ['k1', 'k2'])).toEqual([]);
    // The general path (an existing key) is checked by the script before its first write.
    expect((await rejection(tenant.setMany([['old', 'after'], ['k3', 3]]))).code).toBe('E_NOPERM');
    expect(await storedKeys(admin(), ns, ['k3'])).toEqual([]);
    expect(await honest.get('old')).toBe('before');
  });

  it('a peer hears nothing of a refused write', async () => {
    const ns = uniqueNamespace('acl-peer');
    const tenant = new PubSubRedisDict<unknown>(await userClient([`~${ns}/*`, 'resetchannels', '+@all']), ns);
    const peer = new PubSubCacheManager<unknown>(new PubSubRedisDict<unknown>(admin(), ns));
    closers.push(() => peer.close());
    await peer.ready();
    const honest = new PubSubRedisDict<unknown>(admin(), ns);
    await honest.set('k', 'v0');
    expect(await peer.get('k')).toBe('v0');
    const before = peer.stats().eventsReceived;

    expect((await rejection(tenant.set('k', 'evil'))).code).toBe('E_NOPERM');
    // A later honest write is the barrier: once the peer heard it, it would have heard the refused one before it.
    await honest.set('marker', 1);
    await pollUntil(() => peer.stats().eventsReceived === before + 1, { timeoutMs: 5_000, message: 'the marker write was not heard' });
    expect(peer.stats().eventsReceived).toBe(before + 1);
    expect(await peer.get('k')).toBe('v0');
    expect(await honest.get('k')).toBe('v0');
  });

  it('a user without key rights: E_NOPERM on get, getMany, has, set, delete and on a write-back flush (kept dirty)', async () => {
    const ns = uniqueNamespace('acl-keys');
    const tenantRedis = await userClient(['~elsewhere/*', '&elsewhere/*', `&${ns}/*`, '+@all']);
    const tenant = new PubSubRedisDict<unknown>(tenantRedis, ns);
    // One at a time: a promise created before the previous one is awaited could reject unobserved.
    const attempts = [() => tenant.get('k'), () => tenant.getMany(['k', 'j']), () => tenant.has('k'), () => tenant.set('k', 1), () => tenant.delete('k'), () => tenant.setMany([['a', 1]])];
    for (const attempt of attempts) {
      const error = await rejection(attempt());
      expect(error.code).toBe('E_NOPERM');
      expect(error.cause).toBeInstanceOf(Error);
    }
    const wb = new WriteBackCacheManager<unknown>(new PubSubRedisDict<unknown>(tenantRedis, ns), { flushIntervalMs: 0, retryDelayMs: 60_000 });
    closers.push(() => wb.close());
    await wb.ready();
    await wb.set('x', 1);
    await wb.set('y', 2);
    const error = await rejection(wb.flush());
    expect(error).toBeInstanceOf(FlushError);
    const failed = (error as FlushError).failed;
    expect(failed.map((f) => f.key).sort()).toEqual(['x', 'y']);
    for (const f of failed) expect((f.error as PermissionError).code).toBe('E_NOPERM');
    expect(wb.stats().dirty).toBe(2);
    expect(await storedKeys(admin(), ns, ['x', 'y'])).toEqual([]);
  });

  it('a user without SCAN: keys() and size() reject with E_NOPERM', async () => {
    const ns = uniqueNamespace('acl-scan');
    const tenant = new PubSubRedisDict<unknown>(await userClient([`~${ns}/*`, `&${ns}/*`, '+@all', '-scan']), ns);
    await tenant.set('k', 1);
    expect((await rejection(tenant.size())).code).toBe('E_NOPERM');
    const keys = async (): Promise<string[]> => {
      const out: string[] = [];
      for await (const k of tenant.keys()) out.push(k);
      return out;
    };
    expect((await rejection(keys())).code).toBe('E_NOPERM');
  });

  // ------------------------------------------------------------------ B. clocks far ahead

  it('a writer 48 h ahead is refused with E_CLOCK_SKEW; Redis and a reader keep the previous value', async () => {
    const ns = uniqueNamespace('skew-w');
    const honest = new PubSubRedisDict<unknown>(admin(), ns);
    const future = new PubSubRedisDict<unknown>(admin(), ns, { clock: () => Date.now() + DAY2 });
    const reader = new PubSubCacheManager<unknown>(new PubSubRedisDict<unknown>(admin(), ns));
    closers.push(() => reader.close());
    await reader.ready();
    await honest.set('k', 'v1');
    expect(await reader.get('k')).toBe('v1');

    const error = await rejection(future.set('k', 'from-the-future'));
    expect(error).toBeInstanceOf(ClockSkewError);
    expect(error.code).toBe('E_CLOCK_SKEW');
    expect((error as ClockSkewError).key).toBe('k');
    expect(error.message).toMatch(/maxDriftMs/);
    expect((await rejection(future.delete('k'))).code).toBe('E_CLOCK_SKEW');
    expect((await rejection(future.set('new', 1))).code).toBe('E_CLOCK_SKEW');
    expect(await honest.get('k')).toBe('v1');
    expect(await storedKeys(admin(), ns, ['new'])).toEqual([]);
    // The honest writer's next write lands.
    await honest.set('k', 'v2');
    expect(await honest.get('k')).toBe('v2');
    await pollUntil(async () => (await reader.get('k')) === 'v2', { timeoutMs: 5_000, message: 'the reader kept an old value' });
  });

  it('in a mixed batch only the skewed change is refused', async () => {
    const ns = uniqueNamespace('skew-mix');
    const store = new RedisDict<unknown>(admin(), ns);
    const now = store.clock.now();
    const ahead = formatStamp(parseStamp(now).ms + DAY2, 0, store.clock.nodeId);
    const outcomes = await store.writeVersioned([
      { key: 'ok', stamp: now, deleted: false, value: 1 },
      { key: 'bad', stamp: ahead, deleted: false, value: 2 },
    ]);
    expect(outcomes[0]).toEqual({ status: 'written', existed: false });
    expect(outcomes[1]?.status).toBe('failed');
    expect((outcomes[1] as { error: Error }).error).toBeInstanceOf(ClockSkewError);
    expect(await storedKeys(admin(), ns, ['ok', 'bad'])).toEqual(['ok']);
  });

  it('a stored stamp beyond maxDriftMs does not win against an honest write, and is not cached', async () => {
    const ns = uniqueNamespace('skew-stored');
    const a = admin();
    const honest = new PubSubRedisDict<unknown>(admin(), ns);
    const reader = new PubSubCacheManager<unknown>(new PubSubRedisDict<unknown>(admin(), ns));
    closers.push(() => reader.close());
    await reader.ready();
    // What an older version of the library (or a server whose clock was ahead) left behind.
    const pinned = formatStamp(Date.now() + DAY2, 0, 'f'.repeat(16));
    await a.set(`${ns}/k`, Buffer.concat([Buffer.from(`v${pinned}`, 'latin1'), Buffer.from(codec.encode('pinned'))]));
    await a.hset(`${ns}/t`, 's', pinned);
    expect(await reader.get('k')).toBe('pinned');
    // Served, not cached: its stamp would hide every later write from this cache.
    expect(reader.cache.peek('k')).toBeUndefined();
    expect(parseStamp(honest.clock.now()).ms).toBeLessThanOrEqual(Date.now() + MAX_DRIFT_MS);

    await honest.set('k', 'honest');
    await honest.set('t', 'honest-t');
    expect(await honest.get('k')).toBe('honest');
    expect(await honest.get('t')).toBe('honest-t');
    await pollUntil(async () => (await reader.get('k')) === 'honest', { timeoutMs: 5_000 });
  });

  it('a cache receiving an entry stamped beyond the bound drops its entry and its clock stays within the bound', async () => {
    const ns = uniqueNamespace('skew-msg');
    const writer = new PubSubRedisDict<unknown>(admin(), ns);
    const reader = new PubSubCacheManager<unknown>(new PubSubRedisDict<unknown>(admin(), ns));
    closers.push(() => reader.close());
    await reader.ready();
    await writer.set('k', 'v1');
    expect(await reader.get('k')).toBe('v1');
    expect(reader.cache.peek('k')?.value).toBe('v1');
    const invalidated: string[] = [];
    reader.on('invalidate', (key) => invalidated.push(key));
    // A writer 48 h ahead talking to a server that does not bound stamps: its message alone.
    const origin = randomBytes(8).toString('hex');
    const far = formatStamp(Date.now() + DAY2, 0, origin);
    const channel = writer.channels(0).update;
    const message = Buffer.concat([encodeHeader('u', origin, 1, 0), Buffer.from([0x91]), encodeEntry('k', far)]);
    await admin().publish(channel, message);
    await pollUntil(() => reader.cache.peek('k') === undefined, { timeoutMs: 5_000, message: 'the cache kept its entry' });
    expect(invalidated).toEqual(['k']);
    expect(reader.stats().malformed).toBe(1);
    expect(parseStamp(reader.store.clock.now()).ms).toBeLessThanOrEqual(Date.now() + MAX_DRIFT_MS);
    expect(await reader.get('k')).toBe('v1');
  });

  it('write-back: a change refused for skew is reported once per key with E_CLOCK_SKEW and dropped, not retried forever', async () => {
    const ns = uniqueNamespace('skew-wb');
    const honest = new PubSubRedisDict<unknown>(admin(), ns);
    await honest.set('k', 'v1');
    const wb = new WriteBackCacheManager<unknown>(new PubSubRedisDict<unknown>(admin(), ns, { clock: () => Date.now() + DAY2 }), { flushIntervalMs: 0, retryDelayMs: 10 });
    closers.push(() => wb.close());
    await wb.ready();
    await wb.set('k', 'future');
    await wb.set('n', 'future-new');
    const error = await rejection(wb.flush());
    expect(error).toBeInstanceOf(FlushError);
    const failed = (error as FlushError).failed;
    expect(failed.map((f) => f.key).sort()).toEqual(['k', 'n']);
    for (const f of failed) expect((f.error as ClockSkewError).code).toBe('E_CLOCK_SKEW');
    expect(wb.stats().dirty).toBe(0);
    // Nothing left to write: the next flush resolves, and reads see Redis.
    await wb.flush();
    expect(await wb.get('k')).toBe('v1');
    expect(await wb.get('n')).toBeUndefined();
    expect(await honest.get('k')).toBe('v1');
  });

  it('write-back: close() reports the changes its final flush dropped for skew in CloseFlushError.unwritten', async () => {
    const ns = uniqueNamespace('skew-close');
    const wb = new WriteBackCacheManager<unknown>(new PubSubRedisDict<unknown>(admin(), ns, { clock: () => Date.now() + DAY2 }), { flushIntervalMs: 0 });
    await wb.ready();
    await wb.set('k', 'future');
    const error = await rejection(wb.close());
    expect(error).toBeInstanceOf(CloseFlushError);
    expect((error as CloseFlushError<unknown>).unwritten.map((u) => [u.key, u.value])).toEqual([['k', 'future']]);
    expect(await storedKeys(admin(), ns, ['k'])).toEqual([]);
  });

  it('maxDriftMs is validated like the other options', () => {
    for (const bad of [-1, 1.5, '60000', Number.NaN]) {
      expect(() => new RedisDict<unknown>(admin(), uniqueNamespace('opt'), { maxDriftMs: bad as number })).toThrow(expect.objectContaining({ code: 'E_INVALID_OPTION' }));
    }
    expect(new RedisDict<unknown>(admin(), uniqueNamespace('opt')).maxDriftMs).toBe(MAX_DRIFT_MS);
    expect(new PubSubRedisDict<unknown>(admin(), uniqueNamespace('opt'), { maxDriftMs: 5_000 }).clock.maxDriftMs).toBe(5_000);
  });
});

// ------------------------------------------------------------------ C. malformed calls

describe('apply script: a malformed call writes nothing (standalone)', () => {
  const clients = withClients({ closeAfter: 'each' });

  const stampAt = (ms: number): string => formatStamp(ms, 0, 'a'.repeat(16));

  /** A well-formed publishing call for keys a (value) and b (tombstone), as docs/protocol.md lays it out. */
  function layout(ns: string, overrides: Record<number, string> = {}): { keys: string[]; argv: (string | Buffer)[] } {
    const s = stampAt(Date.now());
    const ea = encodeEntry('a', s);
    const eb = encodeEntry('b', s);
    const lens = Buffer.alloc(8);
    lens.writeUInt32BE(ea.length, 0);
    lens.writeUInt32BE(eb.length, 4);
    const argv: (string | Buffer)[] = [
      '60000', 'PUBLISH', `${ns}/update`, `${ns}/delete`,
      encodeHeader('u', 'a'.repeat(16), 1, 0), encodeHeader('d', 'a'.repeat(16), 2, 0),
      ea, eb, lens, '', '', String(MAX_DRIFT_MS),
      `v${s}x`, `t${s}`,
    ];
    for (const [i, v] of Object.entries(overrides)) argv[Number(i) - 1] = v;
    return { keys: [`${ns}/a`, `${ns}/b`], argv };
  }

  async function call(redis: Redis, keys: string[], argv: (string | Buffer)[]): Promise<unknown> {
    return redis.eval(APPLY_LUA, keys.length, ...keys, ...argv);
  }

  it('the well-formed layout is accepted (the baseline of the cases below)', async () => {
    const redis = clients.track(standaloneClient());
    const ns = uniqueNamespace('badargs-ok');
    const { keys, argv } = layout(ns);
    expect(await call(redis, keys, argv)).toEqual([2, 2]);
    expect(await redis.exists(...keys)).toBe(2);
  });

  const cases: [string, (ns: string) => { keys: string[]; argv: (string | Buffer)[] }][] = [
    ['empty entry lengths while publishing', (ns) => layout(ns, { 9: '' })],
    ['entry lengths that do not add up', (ns) => {
      const l = layout(ns);
      const lens = Buffer.from(l.argv[8] as Buffer);
      lens.writeUInt32BE(lens.readUInt32BE(0) + 1, 0);
      l.argv[8] = lens;
      return l;
    }],
    ['a missing update header', (ns) => layout(ns, { 5: '' })],
    ['a header without entries of its kind', (ns) => ({ ...layout(ns), argv: layout(ns).argv.map((a, i) => (i === 13 ? `v${stampAt(Date.now())}y` : a)) })],
    ['a malformed stamp', (ns) => layout(ns, { 13: `v${'z'.repeat(34)}x` })],
    ['a truncated tombstone', (ns) => layout(ns, { 14: 't0123' })],
    ['a record without its prefix', (ns) => layout(ns, { 13: `x${stampAt(Date.now())}x` })],
    ['one argument too few', (ns) => ({ ...layout(ns), argv: layout(ns).argv.slice(0, -1) })],
    ['guards flagged but absent', (ns) => layout(ns, { 10: '1' })],
    ['a malformed guard', (ns) => {
      const l = layout(ns, { 10: '1' });
      l.argv.push('', 'not-a-stamp');
      return l;
    }],
    ['a tombstone in a values-only batch', (ns) => layout(ns, { 11: '1' })],
    ['a tombstone TTL that is not a number', (ns) => layout(ns, { 1: 'soon' })],
    ['an unknown publish command', (ns) => layout(ns, { 2: 'EVAL' })],
    ['a missing max drift', (ns) => layout(ns, { 12: '' })],
  ];

  it.each(cases)('refused before any write: %s', async (_name, make) => {
    const redis = clients.track(standaloneClient());
    const ns = uniqueNamespace('badargs');
    const sub = clients.track(standaloneClient());
    const heard: string[] = [];
    sub.on('message', (channel: string) => heard.push(channel));
    await sub.subscribe(`${ns}/update`, `${ns}/delete`);
    const { keys, argv } = make(ns);
    const error = await call(redis, keys, argv).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(error?.message).toMatch(/^BADARGS/);
    expect(redisError(error!, 'a', 'the write')).toMatchObject({ code: 'E_INVALID_ARGUMENT' });
    expect(await redis.exists(...keys)).toBe(0);
    // Nothing was published: a message published after the call arrives first.
    await redis.publish(`${ns}/update`, 'barrier');
    await pollUntil(() => heard.length > 0, { timeoutMs: 5_000 });
    expect(heard).toEqual([`${ns}/update`]);
  });

  it('a partly refused batch with empty entry lengths (the reported case) writes nothing', async () => {
    const redis = clients.track(standaloneClient());
    const ns = uniqueNamespace('badargs-partial');
    // a holds a newer record, so a's change is refused and the script would cut the entries.
    await redis.set(`${ns}/a`, `v${stampAt(Date.now() + 1_000)}old`);
    const { keys, argv } = layout(ns, { 9: '' });
    await expect(call(redis, keys, argv)).rejects.toThrow(/^BADARGS/);
    expect(await redis.exists(`${ns}/b`)).toBe(0);
    expect(await redis.get(`${ns}/a`)).toMatch(/old$/);
  });

  it('writeVersioned refuses a malformed stamp before sending anything', async () => {
    const ns = uniqueNamespace('badargs-ts');
    const store = new RedisDict<unknown>(clients.track(standaloneClient()), ns);
    expect((await rejection(store.writeVersioned([{ key: 'k', stamp: 'nope', deleted: true }]))).code).toBe('E_INVALID_ARGUMENT');
    expect((await rejection(store.writeVersioned([{ key: 'k', stamp: store.clock.now(), guard: 'x', deleted: true }]))).code).toBe('E_INVALID_ARGUMENT');
  });
});
