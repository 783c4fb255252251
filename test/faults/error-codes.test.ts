/**
 * Failures of the connection reach the caller as coded errors (`E_TIMEOUT`, `E_CONNECTION`) with
 * the client's error as `cause`, not as ioredis's bare `Error`s. On a private server (the test
 * pauses its writes), standalone: on a Cluster the per-node sender already codes them.
 */
import { Redis, type RedisOptions } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RedisDictError } from '../../src/errors.js';
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
