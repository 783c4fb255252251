/**
 * Which ioredis the suite runs on: `IOREDIS_MAJOR=5` must really load ioredis 5 for the library
 * and the tests (see vitest.config.ts), otherwise the second CI run would test 6 twice.
 */
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import * as ioredis from 'ioredis';

describe('ioredis major under test', () => {
  it('is the one IOREDIS_MAJOR names', async () => {
    const major = process.env['IOREDIS_MAJOR'] ?? '6';
    const require = createRequire(import.meta.url);
    const name = major === '5' ? 'ioredis5' : 'ioredis';
    const version = (require(`${name}/package.json`) as { version: string }).version;
    expect(version.split('.')[0]).toBe(major);
    // The module the tests import is that package's, and so is the library's (same alias).
    expect(ioredis.Redis).toBe((require(name) as typeof ioredis).Redis);
    const resp = await import('../../src/store/resp.js');
    expect(Object.getPrototypeOf(resp.FramedCommand)).toBe((require(name) as typeof ioredis).Command);
  });
});
