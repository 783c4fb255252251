import { defineConfig } from 'vitest/config';

/**
 * `IOREDIS_MAJOR=5` runs the suite on ioredis 5 (the `ioredis5` npm alias): `ioredis` is mapped to
 * it for the library under test AND the tests, so the library really runs on 5. Default: ioredis 6.
 */
const ioredisMajor = process.env['IOREDIS_MAJOR'] ?? '6';
if (ioredisMajor !== '5' && ioredisMajor !== '6') throw new Error(`IOREDIS_MAJOR must be 5 or 6, got ${ioredisMajor}`);

export default defineConfig({
  resolve: {
    alias: ioredisMajor === '5' ? [{ find: /^ioredis$/, replacement: 'ioredis5' }] : [],
  },
  test: {
    include: ['test/**/*.test.ts', 'property-tests/**/*.test.ts'],
    // Real redis-server processes (standalone + 3+3 cluster), see test/helpers/harness.ts.
    globalSetup: ['test/helpers/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Child processes, not worker threads: each test file can spawn, kill and reap its own servers.
    pool: 'forks',
    reporters: ['default'],
    retry: 0,
  },
});
