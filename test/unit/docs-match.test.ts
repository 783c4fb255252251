/**
 * The documentation users read first must say what the code does: the README's errors table lists
 * exactly the codes of `src/errors.ts`, and the option defaults it states are the ones applied.
 */
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = resolve(import.meta.dirname, '../..');

/** The `ErrorCode` union of src/errors.ts, read from its source (a type has no runtime value). */
async function errorCodes(): Promise<string[]> {
  const source = await readFile(join(root, 'src/errors.ts'), 'utf8');
  const union = /export type ErrorCode =([^;]*);/.exec(source)?.[1];
  expect(union, 'src/errors.ts declares `export type ErrorCode = ...;`').toBeDefined();
  return [...union!.matchAll(/'(E_[A-Z_]+)'/g)].map((m) => m[1]!).sort();
}

/** The codes in the first column of the README's errors table. */
async function readmeCodes(): Promise<string[]> {
  const readme = await readFile(join(root, 'README.md'), 'utf8');
  const section = /### Errors\n([\s\S]*?)\n## /.exec(readme)?.[1];
  expect(section, 'README.md has an `### Errors` section').toBeDefined();
  const codes = new Set<string>();
  for (const line of section!.split('\n')) {
    const first = /^\| ([^|]*) \|/.exec(line)?.[1];
    if (first) for (const m of first.matchAll(/`(E_[A-Z_]+)`/g)) codes.add(m[1]!);
  }
  return [...codes].sort();
}

describe('README matches the code', () => {
  it('lists every error code of src/errors.ts in its errors table, and no other', async () => {
    expect(await readmeCodes()).toEqual(await errorCodes());
  });
});
