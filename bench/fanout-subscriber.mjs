/**
 * A subscribing instance of the fan-out case (bench/fanout.mjs), run as a child process: a
 * PubSubCacheManager per namespace it is given, each with `keys` cached. It answers the parent's
 * `stats` message with how many message entries each manager has received, and closes on `stop`.
 */
import { importFromRoot, rootIORedis } from './lib/root.mjs';

const { url, namespaces, keys } = JSON.parse(process.env.FANOUT_CHILD);
const { PubSubRedisDict, PubSubCacheManager } = await importFromRoot('dist/index.js');
const Redis = rootIORedis();
const redis = new Redis(url, { maxRetriesPerRequest: 3 });
const managers = [];
for (const ns of namespaces) {
  const m = new PubSubCacheManager(new PubSubRedisDict(redis, ns), { cache: 100_000 });
  m.on('error', (error) => process.send?.({ type: 'error', message: error.message }));
  await m.ready();
  await m.getMany(keys);
  managers.push(m);
}
process.on('message', async (message) => {
  if (message.type === 'stats') {
    process.send({ type: 'stats', id: message.id, received: Object.fromEntries(namespaces.map((ns, i) => [ns, managers[i].stats().eventsReceived])) });
  } else if (message.type === 'stop') {
    for (const m of managers) await m.close();
    redis.disconnect();
    process.exit(0);
  }
});
process.send({ type: 'ready' });
