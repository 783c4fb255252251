#!/usr/bin/env node
/**
 * `npm run bench` entry point (root package.json: "bench": "node bench/run.mjs").
 *
 * 1. Installs bench/'s own dependencies (bentocache, ioredis 5 for it, node-redis) with
 *    `npm install --no-audit --no-fund` in bench/ when bench/node_modules is missing or outdated.
 *    They are kept out of the root package because bentocache's ioredis 5 peer dependency
 *    conflicts with the library's ioredis 6.
 * 2. Builds the library (`npm run build` at the root → dist/). If the build fails, the library's
 *    rows are reported as skipped and the competitors still run.
 * 3. Runs bench/main.mjs with `node --expose-gc`, passing the arguments through
 *    (e.g. `npm run bench -- --redis-url redis://localhost:6380`, `--quick`, `--only single,mixed`).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { benchDir, rootDir } from './lib/root.mjs';

const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
const args = process.argv.slice(2);
const skipBuild = args.includes('--no-build');
const passThrough = args.filter((a) => a !== '--no-build');

function run(command, commandArgs, cwd) {
  const started = Date.now();
  const result = spawnSync(command, commandArgs, { cwd, stdio: 'inherit', shell: process.platform === 'win32' });
  return { ok: result.status === 0, status: result.status, error: result.error, ms: Date.now() - started };
}

/** True when bench/node_modules lacks a declared dependency or predates bench/package.json. */
function benchDepsOutdated() {
  const modules = join(benchDir, 'node_modules');
  const hiddenLock = join(modules, '.package-lock.json');
  if (!existsSync(modules) || !existsSync(hiddenLock)) return 'bench/node_modules is missing';
  if (statSync(join(benchDir, 'package.json')).mtimeMs > statSync(hiddenLock).mtimeMs) return 'bench/package.json changed since the last install';
  const { dependencies = {} } = JSON.parse(readFileSync(join(benchDir, 'package.json'), 'utf8'));
  const lock = JSON.parse(readFileSync(hiddenLock, 'utf8'));
  for (const name of Object.keys(dependencies)) {
    if (!existsSync(join(modules, name, 'package.json')) || !lock.packages?.[`node_modules/${name}`]) return `${name} is not installed`;
  }
  return undefined;
}

const reason = benchDepsOutdated();
if (reason) {
  console.log(`[bench] ${reason}: npm install --no-audit --no-fund (in bench/)`);
  const install = run(npm, ['install', '--no-audit', '--no-fund'], benchDir);
  if (!install.ok) {
    console.error(`[bench] npm install in bench/ failed (exit ${install.status ?? install.error?.message}); cannot run the competitors.`);
    process.exit(1);
  }
  console.log(`[bench] installed bench dependencies in ${(install.ms / 1000).toFixed(1)} s`);
}

if (!skipBuild) {
  console.log('[bench] npm run build (root)');
  const build = run(npm, ['run', 'build'], rootDir);
  if (!build.ok) {
    console.warn(`[bench] the root build failed (exit ${build.status}); library rows will be skipped unless an older dist/ loads.`);
  } else {
    console.log(`[bench] built the library in ${(build.ms / 1000).toFixed(1)} s`);
  }
}

const bench = run(process.execPath, ['--expose-gc', join(benchDir, 'main.mjs'), ...passThrough], rootDir);
process.exit(bench.status ?? 1);
