import { defineConfig } from 'vitest/config';

export default defineConfig({
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
