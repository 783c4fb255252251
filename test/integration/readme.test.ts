/**
 * Runs every TypeScript example of README.md against the test Redis, so that the examples cannot
 * rot. Each example is written to a temporary file inside the repository (so that `ioredis`
 * resolves), with `'redis-pubsub-dict'` pointed at `src/index.ts`, and run with tsx in a child
 * process; it must exit 0 and print what its comments promise.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';

const run = promisify(execFile);
const root = resolve(import.meta.dirname, '../..');

async function examples(): Promise<string[]> {
  const readme = await readFile(join(root, 'README.md'), 'utf8');
  return [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!);
}

describe('README examples', async () => {
  const blocks = await examples();
  let dir: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(root, 'test', '.readme-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('has the quick-start examples', () => {
    expect(blocks.length).toBeGreaterThanOrEqual(4);
  });

  const expectations: RegExp[][] = [
    [/\{ name: 'Alice', age: 31 \}/, /true 3/],
    [/^published true$/m],
    [/^1$/m, /^2$/m],
    [/^10$/m, /^10 0$/m],
    [/^Alice 1$/m, /^1$/m],
  ];

  blocks.forEach((block, index) => {
    const runnable = block.includes("from 'redis-pubsub-dict'") && block.includes('process.env.REDIS_URL');
    it.runIf(runnable)(`example ${index + 1} runs and prints what it promises`, async () => {
      const url = inject('redis').standalone.url;
      const source = block.replaceAll("from 'redis-pubsub-dict'", `from ${JSON.stringify(join(root, 'src/index.ts'))}`);
      const file = join(dir, `example-${index + 1}.ts`);
      await writeFile(file, source);
      const { stdout } = await run(process.execPath, ['--import', 'tsx', file], {
        cwd: root,
        env: { ...process.env, REDIS_URL: url },
        timeout: 30_000,
      });
      for (const pattern of expectations[index] ?? []) expect(stdout).toMatch(pattern);
    });
  });
});
