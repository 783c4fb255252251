/**
 * Paths, and the module loaders that decide which copy of a package each side gets:
 * - the library and the raw-ioredis baseline use the ROOT node_modules (ioredis 6);
 * - bentocache and node-redis come from bench/node_modules (bentocache brings ioredis 5).
 */
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { dirname, join } from 'node:path';
import { readFileSync } from 'node:fs';

export const benchDir = dirname(dirname(fileURLToPath(import.meta.url)));
export const rootDir = dirname(benchDir);

/** `require` resolving from the repository root (root node_modules). */
export const rootRequire = createRequire(join(rootDir, 'package.json'));
/** `require` resolving from bench/ (bench/node_modules first). */
export const benchRequire = createRequire(join(benchDir, 'package.json'));

/** Version of a package as resolved by `req`, or undefined. */
export function packageVersion(req, name) {
  try {
    const path = req.resolve(`${name}/package.json`);
    return JSON.parse(readFileSync(path, 'utf8')).version;
  } catch {
    try {
      // packages whose exports hide package.json: walk up from the entry point
      let dir = dirname(req.resolve(name));
      for (let i = 0; i < 5; i++) {
        try {
          const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
          if (pkg.name === name) return pkg.version;
        } catch {
          // keep walking
        }
        dir = dirname(dir);
      }
    } catch {
      // not installed
    }
    return undefined;
  }
}

/** ioredis 6 from the root node_modules: the copy the library itself imports. */
export function rootIORedis() {
  const mod = rootRequire('ioredis');
  return mod.Redis ?? mod.default ?? mod;
}

/** Imports a file of the repository root (e.g. dist/index.js) as an ES module. */
export function importFromRoot(relativePath) {
  return import(pathToFileURL(join(rootDir, relativePath)).href);
}
