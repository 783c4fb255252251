/**
 * Making a cache manager resync, and making something happen in the middle of the resync, for
 * tests of what completes while a resync revalidates.
 */
import type { Cluster } from 'ioredis';
import { randomBytes } from 'node:crypto';
import type { PubSubCacheManager } from '../../src/cache/cache-manager.js';
import { encodeEntry, encodeHeader } from '../../src/protocol/messages.js';
import type { PubSubRedisDict } from '../../src/store/pubsub-redis-dict.js';
import { formatStamp } from '../../src/protocol/stamp.js';
import { type RedisClient, slotOf } from '../../src/store/topology.js';
import { pollUntil } from './poll.js';
import { type ResyncInfo } from '../../src/cache/types.js';

/**
 * Runs `action` once, from inside `store.readStamps`, after the stamps of a call that includes
 * `key` were read and before they are returned: the order in which a write replies between a
 * resync's reading of the stamps and its comparing them (on a cluster the stamps come from several
 * nodes, so a write on one node can reply while another node's stamps are still pending).
 * `observe` is called right before `action`; `observed()` gives what it returned, or undefined
 * while `action` has not run.
 */
export function onceAfterStampsRead<T>(store: PubSubRedisDict<unknown>, key: string, observe: () => T, action: () => Promise<unknown>): { observed(): T | undefined } {
  const readStamps = store.readStamps.bind(store);
  let ran = false;
  let seen: T | undefined;
  store.readStamps = async (keys) => {
    const stamps = await readStamps(keys);
    if (!ran && keys.includes(key)) {
      ran = true;
      seen = observe();
      await action();
    }
    return stamps;
  };
  return { observed: () => seen };
}

/**
 * Makes `m` resync and waits until it serves again: two messages from an origin nobody uses, in
 * the group of `key`, with a gap in their sequence numbers (1, then 3; the second is published once
 * the first has arrived, as two PUBLISHes may travel by different nodes of a cluster). They are
 * about another key of the same slot. Resolves with the resync's report.
 */
export async function forceResync(m: PubSubCacheManager<unknown>, publisher: RedisClient, key: string): Promise<ResyncInfo> {
  const store = m.store as PubSubRedisDict<unknown>;
  const group = store.isCluster ? slotOf(store.redisKey(key)) : 0;
  const origin = randomBytes(8).toString('hex');
  const stamp = formatStamp(1, 0, origin);
  const message = (seq: number): Buffer => Buffer.concat([encodeHeader('u', origin, seq, group), Buffer.from([0x91]), encodeEntry(`${key}-other`, stamp)]);
  const publish = async (bytes: Buffer): Promise<void> => {
    const channel = store.channels(group).update;
    if (store.shardedPubSub) await (publisher as Cluster).spublish(channel, bytes);
    else await publisher.publish(channel, bytes);
  };
  const resyncs: ResyncInfo[] = [];
  const listener = (info: ResyncInfo): void => void resyncs.push(info);
  m.on('resync', listener);
  try {
    const { eventsReceived } = m.stats();
    await publish(message(1));
    await pollUntil(() => m.stats().eventsReceived > eventsReceived, { timeoutMs: 5_000, message: 'the first forged message did not arrive' });
    await publish(message(3));
    await pollUntil(() => resyncs.length > 0 && m.isServing, { timeoutMs: 10_000, message: 'the manager did not resync' });
  } finally {
    m.off('resync', listener);
  }
  return resyncs[0]!;
}
