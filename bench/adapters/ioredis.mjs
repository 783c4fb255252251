/**
 * Raw ioredis (the baseline): GET/SET of JSON strings, no local cache. Uses ioredis 6 from the
 * ROOT node_modules, the same copy the library uses.
 */
import { Buffer } from 'node:buffer';
import { rootIORedis, packageVersion, rootRequire } from '../lib/root.mjs';

// MessagePack from the root: the same encoder the library uses (one reused Encoder).
const { Encoder } = rootRequire('@msgpack/msgpack');
const encoder = new Encoder();
const encode = (value) => encoder.encode(value);

export const name = 'raw ioredis';
export const version = () => packageVersion(rootRequire, 'ioredis');

const Redis = rootIORedis();

/** A connected ioredis 6 client (`enableAutoPipelining` optional). */
export async function connect(url, { autoPipelining = false } = {}) {
  const redis = new Redis(url, { enableAutoPipelining: autoPipelining, maxRetriesPerRequest: 3, lazyConnect: true });
  await redis.connect();
  return redis;
}

/** Writes the data set as JSON strings under `prefix + key`, by MSET chunks. */
export async function populate(url, prefix, dataset) {
  const redis = await connect(url);
  try {
    const { keys, values } = dataset;
    for (let start = 0; start < keys.length; start += 2000) {
      const args = [];
      for (let i = start; i < Math.min(keys.length, start + 2000); i++) args.push(prefix + keys[i], JSON.stringify(values[i]));
      await redis.mset(args);
    }
  } finally {
    redis.quit();
  }
}

/** The raw-ioredis "cache" adapter (no cache): get parses JSON, set stringifies. */
export async function create(env, { autoPipelining = false } = {}) {
  const redis = await connect(env.url, { autoPipelining });
  const prefix = env.prefix + ':raw:';
  return {
    redis,
    /** GET only (the reply string, not parsed): the baseline row. */
    getRaw: (key) => redis.get(prefix + key),
    get: async (key) => {
      const s = await redis.get(prefix + key);
      return s === null ? undefined : JSON.parse(s);
    },
    set: (key, value) => redis.set(prefix + key, JSON.stringify(value)),
    close: () => redis.quit(),
  };
}

/** Keys/values for the write-back comparison, values pre-encoded with MessagePack. */
export function encodeEntries(keys, values) {
  return keys.map((k, i) => [k, encode(values[i])]);
}

/** One MSET of all entries ([key, Uint8Array][]), as Buffers (no copy). */
export function msetArgs(prefix, entries) {
  const args = new Array(entries.length * 2);
  for (let i = 0; i < entries.length; i++) {
    const [k, bytes] = entries[i];
    args[2 * i] = prefix + k;
    args[2 * i + 1] = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  return args;
}
