/**
 * The apply-script cases of docs/protocol-vectors.json against a real Redis (the harness's
 * standalone server): each case sets up the stored state it names, calls the script with exactly
 * the vector's KEYS and ARGV, and checks the reply, the messages published (bytes and order,
 * nothing more) and what Redis holds afterwards. An implementation in another language that builds
 * the same arguments gets the same behaviour.
 */
import { readFileSync } from 'node:fs';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { APPLY_LUA } from '../../src/store/scripts.js';
import { type ReplyJson, type StateJson, VECTORS_PATH } from '../../scripts/protocol-vectors.js';
import { pollUntil, redisEndpoints } from '../helpers/connections.js';
import { channelNames } from '../../src/protocol/channels.js';

interface ScriptCase {
  name: string;
  initial: Record<string, StateJson>;
  keys: string[];
  argv: string[];
  reply: ReplyJson;
  published: { channel: string; hex: string }[];
  after: Record<string, StateJson>;
}

const vectors = JSON.parse(readFileSync(VECTORS_PATH, 'utf8')) as { applyScript: { sha1: string; namespace: string; cases: ScriptCase[] } };
const { namespace, cases } = vectors.applyScript;

/** A reply as the vectors write it. */
function toJson(reply: unknown): ReplyJson {
  if (reply === null) return null;
  if (typeof reply === 'number') return { int: reply };
  if (Buffer.isBuffer(reply)) return { bulk: reply.toString('hex') };
  if (Array.isArray(reply)) return reply.map(toJson);
  throw new Error(`unexpected reply ${String(reply)}`);
}

describe('protocol vectors: the apply script against Redis', () => {
  let admin: Redis;
  let subscriber: Redis;
  const received: { channel: string; hex: string }[] = [];
  const channels = channelNames({ namespace });

  beforeAll(async () => {
    admin = new Redis(redisEndpoints().standalone.url);
    subscriber = new Redis(redisEndpoints().standalone.url);
    subscriber.on('messageBuffer', (channel: Buffer, message: Buffer) => received.push({ channel: channel.toString(), hex: message.toString('hex') }));
    await subscriber.subscribe(channels.update, channels.delete);
  });

  afterAll(async () => {
    subscriber?.disconnect();
    admin?.disconnect();
  });

  it.each(cases.map((c) => [c.name, c] as const))('%s', async (_name, vector) => {
    const touched = [...new Set([...vector.keys, ...Object.keys(vector.initial), ...Object.keys(vector.after)])];
    await admin.del(...touched);
    for (const [key, state] of Object.entries(vector.initial)) {
      if (state.type === 'string') await admin.set(key, Buffer.from(state.hex, 'hex'));
      else if (state.type === 'hash') await admin.multi().hset(key, 's', state.s).pexpire(key, state.ttlMs).exec();
    }
    received.length = 0;

    const reply: unknown = await admin.callBuffer('EVAL', APPLY_LUA, vector.keys.length, ...vector.keys, ...vector.argv.map((a) => Buffer.from(a, 'hex')));
    expect(toJson(reply)).toEqual(vector.reply);

    // Everything published by the call arrives before a sentinel published after it.
    const sentinel = `sentinel-${vector.name.length}-${Date.now()}`;
    await admin.publish(channels.update, sentinel);
    const sentinelHex = Buffer.from(sentinel).toString('hex');
    await pollUntil(() => received.some((m) => m.hex === sentinelHex), { timeoutMs: 5_000, message: 'the sentinel message did not arrive' });
    expect(received.filter((m) => m.hex !== sentinelHex)).toEqual(vector.published);

    for (const [key, state] of Object.entries(vector.after)) {
      const type = await admin.type(key);
      if (state.type === 'none') expect(type, key).toBe('none');
      else if (state.type === 'string') expect((await admin.getBuffer(key))?.toString('hex'), key).toBe(state.hex);
      else {
        expect(type, key).toBe('hash');
        expect(await admin.hgetall(key), key).toEqual({ s: state.s });
        const ttl = await admin.pttl(key);
        expect(ttl, key).toBeGreaterThan(0);
        expect(ttl, key).toBeLessThanOrEqual(state.ttlMs);
      }
    }
    await admin.del(...touched);
  });
});
