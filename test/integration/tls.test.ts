/**
 * TLS, end to end, against a real `redis-server` started with `--tls-port` and certificates made
 * here with `openssl` (see test/helpers/tls.ts). The server also keeps a plaintext port, used only
 * by the test's own admin connection to look at the server's side of the TLS connections
 * (CLIENT LIST's `laddr` says which port each client connected to).
 *
 * Skipped, with the reason printed, when `openssl` or `redis-server` is not installed.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Redis, type RedisOptions } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PubSubCacheManager } from '../../src/cache/cache-manager.js';
import { RedisDictError } from '../../src/errors.js';
import { PubSubRedisDict } from '../../src/store/pubsub-redis-dict.js';
import { RedisDict } from '../../src/store/redis-dict.js';
import { uniqueNamespace } from '../helpers/connections.js';
import { findExecutable, findFreePort, startServer, type RedisServerHandle } from '../helpers/harness.js';
import { findOpenssl, makeTestCertificates, type TestCertificates } from '../helpers/tls.js';

const openssl = findOpenssl();
const redisServer = findExecutable('redis-server');
if (openssl === undefined) console.warn('[tls.test] SKIPPED: `openssl` is not on PATH, so no test certificates can be made');
if (redisServer === undefined) console.warn('[tls.test] SKIPPED: `redis-server` is not on PATH, so no TLS server can be spawned');

/** One CLIENT LIST line as a record. */
function parseClientList(text: string): Record<string, string>[] {
  return text
    .trim()
    .split('\n')
    .map((line) => Object.fromEntries(line.split(' ').map((field) => [field.slice(0, field.indexOf('=')), field.slice(field.indexOf('=') + 1)])));
}

describe.skipIf(openssl === undefined || redisServer === undefined)('TLS (redis-server --tls-port, certificates from openssl)', () => {
  let dir: string;
  let certs: TestCertificates;
  let server: RedisServerHandle;
  let tlsPort: number;
  let admin: Redis;
  const clients: Redis[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'rpd-tls-'));
    certs = await makeTestCertificates(dir);
    tlsPort = await findFreePort();
    server = await startServer({
      args: ['--tls-port', String(tlsPort), '--tls-cert-file', certs.files.cert, '--tls-key-file', certs.files.key, '--tls-ca-cert-file', certs.files.ca, '--tls-auth-clients', 'no'],
    });
    admin = new Redis({ host: server.host, port: server.port });
  });

  afterAll(async () => {
    for (const client of clients) client.disconnect();
    admin?.disconnect();
    await server?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** A client of the TLS port that trusts `ca`. */
  function tlsClient(ca: Buffer, extra: RedisOptions = {}): Redis {
    const client = new Redis({ host: '127.0.0.1', port: tlsPort, tls: { ca, servername: 'localhost' }, ...extra });
    // The test's own clients get what docs/security.md advises for an application's TLS clients:
    // a listener on the socket of a failed handshake, which can err again after ioredis's
    // `once('error')` listeners fired (an uncaught exception otherwise).
    client.on('error', () => (client as unknown as { stream?: NodeJS.EventEmitter }).stream?.on('error', () => {}));
    clients.push(client);
    return client;
  }

  it('a RedisDict and a PubSubCacheManager work over TLS, the subscriber connection included', async () => {
    const ns = uniqueNamespace('tls');
    const dict = new RedisDict<unknown>(tlsClient(certs.ca), ns);
    await dict.set('a', { n: 1 });
    expect(await dict.get('a')).toEqual({ n: 1 });

    const writer = new PubSubRedisDict<unknown>(tlsClient(certs.ca), ns);
    const manager = new PubSubCacheManager(new PubSubRedisDict<unknown>(tlsClient(certs.ca), ns));
    try {
      await manager.ready();
      expect(await manager.get('a')).toEqual({ n: 1 });

      // The server's view: the subscriber (a duplicate() of the TLS client) came in on the TLS port,
      // and no client but the admin one uses the plaintext port.
      const list = parseClientList(String(await admin.call('CLIENT', 'LIST')));
      const subscribers = list.filter((c) => Number(c['sub']) > 0);
      expect(subscribers.length).toBe(1);
      expect(subscribers[0]?.['laddr']).toBe(`127.0.0.1:${tlsPort}`);
      expect(list.filter((c) => c['laddr'] === `127.0.0.1:${server.port}` && c['cmd'] !== 'client|list')).toEqual([]);

      // An invalidation arrives through the TLS subscription.
      const invalidated = new Promise<string>((resolve) => manager.once('invalidate', (key) => resolve(key)));
      await writer.set('a', { n: 2 });
      expect(await invalidated).toBe('a');
      expect(await manager.get('a')).toEqual({ n: 2 });
    } finally {
      await manager.close();
    }
  });

  it("a failed TLS handshake's socket that errs again does not crash the process (ioredis listens with once)", async () => {
    const manager = new PubSubCacheManager(new PubSubRedisDict<unknown>(tlsClient(certs.otherCa), uniqueNamespace('tls-second-error')));
    manager.on('error', () => {});
    try {
      // A test-only look at the subscriber's connection (the library's own duplicate of the client):
      // the socket of its first failed handshake, once ioredis's `once('error')` listeners have fired.
      const conn = (manager as unknown as { subscriber: { conn?: Redis } }).subscriber.conn;
      expect(conn).toBeDefined();
      const failed = await new Promise<NodeJS.EventEmitter>((resolve) => conn!.once('error', () => resolve((conn as unknown as { stream: NodeJS.EventEmitter }).stream)));
      // A TLS peer can send an alert after the refused certificate: a second error on that socket.
      expect(() => failed.emit('error', new Error('second error of the failed handshake'))).not.toThrow();
    } finally {
      await manager.close();
    }
  });

  it('a server certificate from an unknown CA is refused: ready() rejects with E_CONNECTION and the TLS error as cause', async () => {
    const manager = new PubSubCacheManager(new PubSubRedisDict<unknown>(tlsClient(certs.otherCa), uniqueNamespace('tls-wrong-ca')));
    manager.on('error', () => {});
    let timer: NodeJS.Timeout | undefined;
    const pending = new Promise<'pending'>((resolve) => {
      timer = setTimeout(() => resolve('pending'), 10_000);
    });
    try {
      const outcome = await Promise.race([manager.ready().then(() => 'resolved' as const, (error: unknown) => error), pending]);
      expect(outcome).toBeInstanceOf(RedisDictError);
      const error = outcome as RedisDictError;
      expect(error.code).toBe('E_CONNECTION');
      expect(String((error.cause as Error | undefined)?.message)).toMatch(/self[- ]signed|unable to (get|verify)/i);
      // A plain RedisDict has no ready(): its commands reject with E_CONNECTION once the
      // client's own bound (maxRetriesPerRequest) is spent.
      const dict = new RedisDict<unknown>(tlsClient(certs.otherCa, { maxRetriesPerRequest: 1 }), uniqueNamespace('tls-wrong-ca'));
      await expect(dict.get('a')).rejects.toMatchObject({ code: 'E_CONNECTION', cause: expect.objectContaining({ message: expect.stringMatching(/max retries per request/i) }) });
      // Nothing ever reached the server over an unverified connection.
      const list = parseClientList(String(await admin.call('CLIENT', 'LIST')));
      expect(list.filter((c) => Number(c['sub']) > 0)).toEqual([]);
    } finally {
      clearTimeout(timer);
      await manager.close();
    }
  });
});
