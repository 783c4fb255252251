/**
 * Type test (compiled by `npm run typecheck`, never run): clients of ANOTHER copy of ioredis than
 * the one the library's types name (here ioredis 5 through the `ioredis5` alias, while the
 * library is typed against ioredis 6) are accepted by the constructors. ioredis classes have
 * private members and differ between majors, so this holds only because the constructors take the
 * structural `RedisClientLike`. The same at run time: test/integration/interop.test.ts.
 */
import { Cluster as Cluster5, Redis as Redis5 } from 'ioredis5';
import { Cluster as Cluster6, Redis as Redis6 } from 'ioredis';
import { LRUCache as LRUCache10 } from 'lru-cache10';
import { PubSubCacheManager, PubSubRedisDict, RedisDict, type RedisClientLike } from '../../src/index.js';

export function accepted(): unknown[] {
  const clients: RedisClientLike[] = [new Redis5({ lazyConnect: true }), new Cluster5([], { lazyConnect: true }), new Redis6({ lazyConnect: true }), new Cluster6([], { lazyConnect: true })];
  const dicts = clients.map((client) => new RedisDict(client, 'ns'));
  const store = new PubSubRedisDict(new Redis5({ lazyConnect: true }), 'ns');
  // A user's LRUCache of lru-cache 10 (this package uses 11).
  const manager = new PubSubCacheManager(store, { cache: new LRUCache10<string, object>({ max: 10 }) });
  return [...dicts, manager];
}
