/**
 * Failures of the connection reach the caller as coded errors (`E_TIMEOUT`, `E_CONNECTION`) with
 * the client's error as `cause`, not as ioredis's bare `Error`s. On a private server (the test
 * pauses its writes), standalone: on a Cluster the per-node sender already codes them.
 *
 * Writes refused by the server (a read-only replica, OOM under `noeviction`) are coded too
 * (`E_READONLY`, `E_OOM`, the key and the Redis error as `cause`), for a plain store and inside a
 * write-back flush (`E_FLUSH`, per key).
 */
import { Redis, type RedisOptions } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FlushError, RedisDictError, WriteRefusedError } from '../../src/errors.js';
import { WriteBackCacheManager } from '../../src/write-back/manager.js';
import { PubSubRedisDict } from '../../src/store/pubsub-redis-dict.js';
import { RedisDict } from '../../src/store/redis-dict.js';
import { uniqueNamespace } from '../helpers/connections.js';
import { startServer, type RedisServerHandle } from '../helpers/harness.js';
import { rejection } from '../helpers/assertions.js';

describe('connection failures are coded errors (standalone)', () => {
  let server: RedisServerHandle;
  const clients: Redis[] = [];
  const client = (opts: RedisOptions): Redis => {
    const c = new Redis({ host: server.host, port: server.port, ...opts });
    c.on('error', () => {});
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    server = await startServer();
  });

  afterAll(async () => {
    for (const c of clients) c.disconnect();
    await server?.stop();
  });

  it("a write and a read cut by the client's commandTimeout reject with E_TIMEOUT", async () => {
    const ns = uniqueNamespace('codes-timeout');
    const dict = new PubSubRedisDict<number>(client({ commandTimeout: 100 }), ns);
    await dict.set('a', 1);
    const admin = client({});
    await admin.call('CLIENT', 'PAUSE', '400', 'ALL');
    const write = await rejection(dict.set('a', 2));
    expect(write).toBeInstanceOf(RedisDictError);
    expect(write.code).toBe('E_TIMEOUT');
    expect(String((write.cause as Error).message)).toMatch(/Command timed out/);
    const read = await rejection(dict.get('a'));
    expect(read.code).toBe('E_TIMEOUT');
  });

  it('a client without a connection (offline queue off) rejects reads and writes with E_CONNECTION', async () => {
    const offline = client({ lazyConnect: true, enableOfflineQueue: false });
    const dict = new RedisDict<number>(offline, uniqueNamespace('codes-offline'));
    for (const failure of [await rejection(dict.get('a')), await rejection(dict.set('a', 1)), await rejection(dict.getMany(['a', 'b']))]) {
      expect(failure).toBeInstanceOf(RedisDictError);
      expect(failure.code).toBe('E_CONNECTION');
      expect(String((failure.cause as Error).message)).toMatch(/Stream isn't writeable/);
    }
  });
});

describe('writes refused by the server are coded errors (standalone)', () => {
  let master: RedisServerHandle;
  const clients: Redis[] = [];
  const client = (server: RedisServerHandle): Redis => {
    const c = new Redis({ host: server.host, port: server.port });
    c.on('error', () => {});
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    master = await startServer();
  });

  afterAll(async () => {
    for (const c of clients) c.disconnect();
    await master?.stop();
  });

  /**
   * set, setMany (and delete, unless `deletes` is false) on a plain RedisDict and a PubSubRedisDict
   * reject with `code`, naming the key; nothing is written.
   */
  async function expectRefused(redis: Redis, code: 'E_READONLY' | 'E_OOM', reason: RegExp, deletes = true): Promise<void> {
    const ns = uniqueNamespace('codes-refused');
    for (const dict of [new RedisDict<number>(redis, ns), new PubSubRedisDict<number>(redis, ns)]) {
      const calls: [string, () => Promise<unknown>][] = [
        ['set', () => dict.set('k', 1)],
        ['setMany', () => dict.setMany([['k', 1]])],
      ];
      if (deletes) calls.push(['delete', () => dict.delete('k')]);
      for (const [what, call] of calls) {
        const error = await rejection(call());
        expect(error, what).toBeInstanceOf(WriteRefusedError);
        expect(error.code, what).toBe(code);
        expect((error as WriteRefusedError).key, what).toBe('k');
        expect(String((error.cause as Error).message), what).toMatch(reason);
      }
    }
    // Reads still work: nothing was written.
    expect(await new RedisDict<number>(redis, ns).get('k')).toBeUndefined();
  }

  it('on a read-only replica, set/setMany/delete reject with E_READONLY naming the key (cause: the READONLY reply)', async () => {
    const replica = await startServer({ args: ['--replicaof', master.host, String(master.port)] });
    try {
      await expectRefused(client(replica), 'E_READONLY', /^READONLY/);
    } finally {
      await replica.stop();
    }
  });

  it('under OOM (maxmemory 1, noeviction), set/setMany reject with E_OOM naming the key (cause: the OOM reply)', async () => {
    const full = await startServer({ args: ['--maxmemory-policy', 'noeviction'] });
    try {
      const redis = client(full);
      await client(full).call('CONFIG', 'SET', 'maxmemory', '1');
      // A delete is not refused: the apply script's first write (DEL) frees memory, and Redis
      // then lets a script that has written go on (its tombstone is written).
      await expectRefused(redis, 'E_OOM', /^OOM/, false);
    } finally {
      await full.stop();
    }
  });

  it('a write-back flush against a read-only replica reports E_FLUSH, with E_READONLY per key (the change stays dirty)', async () => {
    const replica = await startServer({ args: ['--replicaof', master.host, String(master.port)] });
    const m = new WriteBackCacheManager<number>(new PubSubRedisDict<number>(client(replica), uniqueNamespace('codes-refused-wb')), { flushIntervalMs: 0 });
    m.on('error', () => {});
    try {
      await m.set('k', 1);
      const error = await rejection(m.flush());
      expect(error).toBeInstanceOf(FlushError);
      expect(error.code).toBe('E_FLUSH');
      const failed = (error as FlushError).failed;
      expect(failed.map((f) => f.key)).toEqual(['k']);
      expect((failed[0]!.error as RedisDictError).code).toBe('E_READONLY');
      expect(String(((failed[0]!.error as Error).cause as Error).message)).toMatch(/^READONLY/);
      expect(error.cause).toBe(failed[0]!.error);
      expect(m.isDirty('k')).toBe(true);
    } finally {
      await m.close().catch(() => undefined);
      await replica.stop();
    }
  });
});
