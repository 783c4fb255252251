/**
 * The write coalescer's bound (src/store/write-coalescer.ts): a write waiting behind a call that hangs
 * (a frozen server) does not wait past its own deadline, and is not sent once that has passed.
 * Runs on its own redis-server, which it freezes (SIGSTOP) and thaws, and stops by pid.
 */
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RedisDict } from '../../src/store/redis-dict.js';
import { type RedisServerHandle, startServer } from '../helpers/harness.js';
import { pollUntil, withClients } from '../helpers/connections.js';

describe('write coalescing under a frozen server', () => {
  let server: RedisServerHandle;
  const clients = withClients();
  beforeAll(async () => {
    server = await startServer();
  });
  afterAll(async () => {
    await clients.closeAll();
    await server?.stop();
  });

  it('a write queued behind a hung call fails E_TIMEOUT at its deadline, unsent; the hung one is ambiguous and may apply later', async () => {
    const redis = clients.track(new Redis({ host: server.host, port: server.port, maxRetriesPerRequest: 1 }));
    const dict = new RedisDict<number>(redis, 'coalesce-frozen', { retryTimeoutMs: 400 });
    await dict.set('warm', 0);
    server.pause();
    let sent: Promise<unknown>;
    let queued: Promise<unknown>;
    try {
      // The first is sent at once (its group is idle) and hangs; the second waits behind it.
      sent = dict.set('sent', 1).then(() => 'ok', (error: { code?: string }) => error.code);
      queued = dict.set('queued', 2).then(() => 'ok', (error: { code?: string }) => error.code);
      expect(await sent).toBe('E_TIMEOUT');
      expect(await queued).toBe('E_TIMEOUT');
    } finally {
      server.resume();
    }
    // Once the server runs again, the first call (sent) is applied; the second never was sent.
    const admin = clients.track(new Redis({ host: server.host, port: server.port }));
    await pollUntil(async () => (await admin.exists('coalesce-frozen/sent')) === 1, { message: 'the sent write was not applied after the thaw' });
    expect(await admin.exists('coalesce-frozen/queued')).toBe(0);
  });
});
