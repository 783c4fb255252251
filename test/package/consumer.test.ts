/**
 * The package as users get it: `npm pack` (which builds, see the `prepack` script), then a
 * consumer app in a temporary directory installs the tarball with ioredis 5 and lru-cache 10 (the
 * versions most apps and bentocache have today; ioredis is a peer dependency, so the library runs on
 * the app's ioredis 5), WITHOUT @opentelemetry/api (an optional peer), and:
 *
 * - an ES module in TypeScript (`import`) compiles with `tsc --strict` (library checks on: the
 *   shipped declarations must hold against ioredis 5's and lru-cache 10's own) and runs against
 *   the test Redis: write-back flush, near cache coherence, the user's own LRUCache;
 * - a CommonJS module in TypeScript (`require`) compiles the same way and runs the same checks,
 *   through the CommonJS build (`dist/cjs`), and loads `redis-pubsub-dict/otel` without
 *   @opentelemetry/api installed.
 *
 * Dependencies are installed with `--prefer-offline` at the exact versions of this repository's
 * `ioredis5`, `lru-cache10` and `@types/node`, so that they come from the npm cache that `npm ci`
 * filled (no network when the cache has them).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { uniqueNamespace } from '../helpers/connections.js';

const run = promisify(execFile);
const root = resolve(import.meta.dirname, '../..');
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

async function versionOf(dir: string): Promise<string> {
  return (JSON.parse(await readFile(join(root, 'node_modules', dir, 'package.json'), 'utf8')) as { version: string }).version;
}

/** What both consumer apps print: one JSON line. */
interface AppReport {
  ioredis: string;
  lruCache: string;
  flushed: string[];
  peerValue: unknown;
  ownLruSize: number;
  hits: number;
  evictions: number;
  invalidOption: string;
  otel?: string;
}

/** The app, for both module systems: `IMPORTS` is replaced by the import or require lines. */
const APP = `
IMPORTS

async function main(): Promise<void> {
  const [url, ns] = process.argv.slice(2) as [string, string];
  const a = new Redis(url);
  const b = new Redis(url);
  const lru = new LRUCache<string, object>({ max: 2 });
  const writer = new WriteBackCacheManager<{ n: number }>(new PubSubRedisDict<{ n: number }>(a, ns), { flushIntervalMs: 0 });
  const reader = new PubSubCacheManager<{ n: number }>(new PubSubRedisDict<{ n: number }>(b, ns), { cache: lru });
  try {
    await Promise.all([writer.ready(), reader.ready()]);
    await writer.setMany([['x', { n: 1 }], ['y', { n: 2 }], ['z', { n: 3 }]]);
    const report = await writer.flush();
    await reader.getMany(['x', 'y', 'z']);
    // An event from the writer invalidates the reader's entry.
    const invalidated = new Promise<void>((resolve) => reader.once('invalidate', () => resolve()));
    await writer.set('z', { n: 30 });
    await writer.flush();
    await invalidated;
    const peerValue = await reader.get('z');
    await reader.get('z');
    let invalidOption = 'none';
    try {
      new PubSubCacheManager(new PubSubRedisDict(b, ns), { cache: new Map() as never });
    } catch (error) {
      invalidOption = error instanceof RedisDictError ? error.code : 'not a RedisDictError';
    }
    const stats = reader.stats();
    const out: AppReport = {
      ioredis: IOREDIS_VERSION,
      lruCache: LRU_VERSION,
      flushed: [...report.written].sort(),
      peerValue,
      ownLruSize: lru.size,
      hits: stats.hits,
      evictions: stats.evictions,
      invalidOption,
      OTEL
    };
    console.log(JSON.stringify(out));
  } finally {
    await writer.close();
    await reader.close();
    a.disconnect();
    b.disconnect();
  }
}

interface AppReport {
  ioredis: string;
  lruCache: string;
  flushed: string[];
  peerValue: unknown;
  ownLruSize: number;
  hits: number;
  evictions: number;
  invalidOption: string;
  otel?: string;
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
`;

const ESM_IMPORTS = `
import { readFileSync } from 'node:fs';
import { Redis } from 'ioredis';
import { LRUCache } from 'lru-cache';
import { PubSubCacheManager, PubSubRedisDict, RedisDictError, WriteBackCacheManager } from 'redis-pubsub-dict';
const versionOf = (name: string): string => (JSON.parse(readFileSync(\`node_modules/\${name}/package.json\`, 'utf8')) as { version: string }).version;
const IOREDIS_VERSION = versionOf('ioredis');
const LRU_VERSION = versionOf('lru-cache');
`;

const CJS_IMPORTS = `
import { Redis } from 'ioredis';
import { LRUCache } from 'lru-cache';
import { PubSubCacheManager, PubSubRedisDict, RedisDictError, WriteBackCacheManager } from 'redis-pubsub-dict';
// Untyped on purpose: the app has no @opentelemetry/api, which otel.d.ts names (install it to use this entry point).
const otel = require('redis-pubsub-dict/otel') as { instrument: unknown };
import { readFileSync } from 'node:fs';
const versionOf = (name: string): string => (JSON.parse(readFileSync(\`node_modules/\${name}/package.json\`, 'utf8')) as { version: string }).version;
const IOREDIS_VERSION = versionOf('ioredis');
const LRU_VERSION = versionOf('lru-cache');
`;

describe('the packed package in a consumer app (ioredis 5, lru-cache 10, no @opentelemetry/api)', () => {
  let work: string;
  let app: string;

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'rpd-consumer-'));
    // `npm pack` builds (prepack). Generous bounds: two tsc runs on a loaded 2-core machine take minutes.
    await run(npm, ['pack', '--pack-destination', work, '--silent'], { cwd: root, timeout: 400_000, maxBuffer: 16 << 20 });
    const tarball = (await readdir(work)).find((f) => f.endsWith('.tgz'));
    if (!tarball) throw new Error(`npm pack wrote no tarball in ${work}`);
    app = join(work, 'app');
    await run('mkdir', [app]);
    await writeFile(join(app, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'commonjs' }, null, 2));
    const deps = [
      join(work, tarball),
      `ioredis@${await versionOf('ioredis5')}`,
      `lru-cache@${await versionOf('lru-cache10')}`,
      `@types/node@${await versionOf('@types/node')}`,
    ];
    await run(npm, ['install', '--prefer-offline', '--no-audit', '--no-fund', '--ignore-scripts', '--loglevel=error', ...deps], {
      cwd: app,
      timeout: 300_000,
      maxBuffer: 16 << 20,
    });
    await writeFile(join(app, 'esm.mts'), APP.replace('IMPORTS', ESM_IMPORTS).replace('OTEL', ''));
    await writeFile(join(app, 'cjs.cts'), APP.replace('IMPORTS', CJS_IMPORTS).replace('OTEL', 'otel: typeof otel.instrument,'));
  }, 900_000);

  afterAll(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('installs the library with ioredis 5 as its peer and without @opentelemetry/api', async () => {
    const installed = JSON.parse(await readFile(join(app, 'node_modules', 'ioredis', 'package.json'), 'utf8')) as { version: string };
    expect(installed.version.split('.')[0]).toBe('5');
    // Peer dependency: no copy of ioredis of the library's own.
    await expect(readdir(join(app, 'node_modules', 'redis-pubsub-dict', 'node_modules', 'ioredis'))).rejects.toThrow();
    await expect(readdir(join(app, 'node_modules', '@opentelemetry'))).rejects.toThrow();
  });

  it('compiles an ES module and a CommonJS module with tsc --strict, library checks included', async () => {
    const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
    const args = ['--strict', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', '--types', 'node', '--skipLibCheck', 'false'];
    const output = await run(process.execPath, [tsc, ...args, 'esm.mts', 'cjs.cts'], { cwd: app, timeout: 300_000 }).then(
      (result) => result.stdout,
      (error: { stdout?: string; code?: unknown }) => {
        if (typeof error.stdout !== 'string' || typeof error.code !== 'number') throw error;
        return error.stdout;
      },
    );
    const errors = output.split('\n').filter((line) => /^\S+\(\d+,\d+\): error /.test(line));
    // lru-cache 10's own declarations do not check under TypeScript 6 (its Map subclass's iterators,
    // TS2416); that is lru-cache's, not ours. Everything else, our declarations included, must check.
    const ours = errors.filter((line) => !/^node_modules\/lru-cache\/\S+\(\d+,\d+\): error TS2416:/.test(line));
    expect(ours, output).toEqual([]);
  }, 320_000);

  const expected = (report: AppReport): void => {
    expect(report.ioredis.split('.')[0]).toBe('5');
    expect(report.lruCache.split('.')[0]).toBe('10');
    expect(report.flushed).toEqual(['x', 'y', 'z']);
    expect(report.peerValue).toEqual({ n: 30 });
    expect(report.ownLruSize).toBe(2);
    expect(report.hits).toBe(1);
    expect(report.evictions).toBe(0); // the user's own LRUCache: not counted (documented)
    expect(report.invalidOption).toBe('E_INVALID_OPTION');
  };

  it('runs the ES module (import) against Redis', async () => {
    const ns = uniqueNamespace('consumer-esm');
    const { stdout } = await run(process.execPath, ['esm.mjs', inject('redis').standalone.url, ns], { cwd: app, timeout: 30_000 });
    expected(JSON.parse(stdout) as AppReport);
  });

  it('runs the CommonJS module (require, dist/cjs) against Redis, and requires redis-pubsub-dict/otel without @opentelemetry/api', async () => {
    const ns = uniqueNamespace('consumer-cjs');
    const { stdout } = await run(process.execPath, ['cjs.cjs', inject('redis').standalone.url, ns], { cwd: app, timeout: 30_000 });
    const report = JSON.parse(stdout) as AppReport;
    expected(report);
    expect(report.otel).toBe('function');
    // The require() really went to the CommonJS build.
    const { stdout: resolved } = await run(process.execPath, ['-p', "require.resolve('redis-pubsub-dict')"], { cwd: app });
    expect(resolved.trim()).toBe(join(app, 'node_modules', 'redis-pubsub-dict', 'dist', 'cjs', 'index.js'));
  });
});
