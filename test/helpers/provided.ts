/**
 * Type of the value that the global setup provides to test files as `inject('redis')`, and the
 * matching augmentation of vitest's `ProvidedContext`. Values must be JSON-serialisable.
 *
 * @module
 */

/** A Redis endpoint as provided to the tests. */
export interface ProvidedRedisNode {
  host: string;
  port: number;
}

/** What `inject('redis')` returns. */
export interface ProvidedRedis {
  /** The standalone server; `url` may carry credentials/db when it came from `REDIS_URL`. */
  standalone: ProvidedRedisNode & { url: string };
  /** Seed nodes of the 3+3 cluster, or `null` when there is none (e.g. `REDIS_SKIP_CLUSTER=1`). */
  cluster: ProvidedRedisNode[] | null;
  /** Where the standalone server comes from. */
  source: 'env' | 'spawned' | 'testcontainers';
}

declare module 'vitest' {
  export interface ProvidedContext {
    redis: ProvidedRedis;
  }
}
