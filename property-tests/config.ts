/**
 * Shared settings of the property tests: seed, number of runs, time limits.
 *
 * - `PROPERTY_SEED=<int>` replays a run: every property of a file uses the file's seed, printed
 *   once per file (`[property] <file> seed=… runs=…`), so a red CI log always says how to replay it.
 * - `PROPERTY_PATH=<path>` (with `PROPERTY_SEED` and `-t <test name>`) replays exactly the shrunk
 *   counterexample that fast-check printed; for model-based runs add
 *   `PROPERTY_REPLAY_PATH=<replayPath>` (printed in the counterexample as a comment).
 * - `PROPERTY_RUNS=<n>` runs every property `n` times instead of its default budget (long
 *   campaigns); the per-test time limit is lifted then.
 *
 * - `NEMESIS_FAULTS`, `NEMESIS_CLUSTER`, `NEMESIS_MAX_SKEW_MS`, `NEMESIS_COMMAND_TIMEOUT_MS`,
 *   `NEMESIS_MAX_COMMANDS`: the fault runs of `nemesis.test.ts` (see {@link nemesisConfig}).
 *
 * The default budgets keep `npx vitest run property-tests` (both topologies) under ~3 minutes on
 * a 2-core machine; see `docs/verification.md` for the figures.
 *
 * @module
 */
import { basename } from 'node:path';
import type fc from 'fast-check';

function intFromEnv(name: string): number | undefined {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === '') return undefined;
  const value = Number(raw);
  if (!Number.isSafeInteger(value)) throw new Error(`${name} must be an integer, got ${JSON.stringify(raw)}`);
  return value;
}

const seedFromEnv = intFromEnv('PROPERTY_SEED');
const runsFromEnv = intFromEnv('PROPERTY_RUNS');
const pathFromEnv = process.env['PROPERTY_PATH'] || undefined;

if (runsFromEnv !== undefined && runsFromEnv < 1) throw new Error('PROPERTY_RUNS must be at least 1');

/** `replayPath` for `fc.commands`, from `PROPERTY_REPLAY_PATH` (model-based counterexamples). */
export const commandsReplayPath: string | undefined = process.env['PROPERTY_REPLAY_PATH'] || undefined;

/** True when `PROPERTY_RUNS` asks for a longer campaign than the default budget. */
export const isCampaign = runsFromEnv !== undefined;

const seeds = new Map<string, number>();

/**
 * The seed of a test file: `PROPERTY_SEED` when set, else a fresh random one. Printed once per file.
 *
 * @param file - `import.meta.url` or a file name.
 */
export function seedOf(file: string): number {
  const name = basename(file);
  let seed = seeds.get(name);
  if (seed === undefined) {
    seed = seedFromEnv ?? (Math.floor(Math.random() * 0x7fffffff) ^ (Date.now() & 0x7fffffff));
    seeds.set(name, seed);
    console.log(
      `[property] ${name} seed=${seed}${runsFromEnv !== undefined ? ` runs=${runsFromEnv}` : ''}` +
        ` — replay: PROPERTY_SEED=${seed} npx vitest run property-tests/${name}`,
    );
  }
  return seed;
}

/** Number of runs of a property: `PROPERTY_RUNS` when set, else `defaultRuns`. */
export function runsOf(defaultRuns: number): number {
  return runsFromEnv ?? defaultRuns;
}

/**
 * Parameters for `fc.assert`: the file's seed, the run budget, and the replay path when given.
 *
 * @param file - `import.meta.url` of the test file.
 * @param defaultRuns - runs when `PROPERTY_RUNS` is not set.
 */
export function params<T>(file: string, defaultRuns: number, extra: fc.Parameters<T> = {}): fc.Parameters<T> {
  const out: fc.Parameters<T> = { ...extra, seed: seedOf(file), numRuns: runsOf(defaultRuns) };
  if (pathFromEnv !== undefined) out.path = pathFromEnv;
  return out;
}

/**
 * Vitest time limit of one property test: `defaultMs`, or effectively none during a campaign
 * (a campaign is bounded by its number of runs, not by a clock).
 */
export function timeoutOf(defaultMs: number): number {
  return isCampaign ? 24 * 3600_000 : defaultMs;
}

/** The fault kinds of the nemesis (`nemesis.test.ts`). */
export const FAULT_KINDS = ['kill', 'restart', 'pause', 'scriptFlush', 'skew', 'failover'] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

/**
 * Fault kinds on by default (the CI run). `failover` (cluster only, about 6 s each) is for
 * campaigns: turn it on with `NEMESIS_FAULTS=all` and `NEMESIS_CLUSTER=1`.
 */
export const DEFAULT_FAULTS: readonly FaultKind[] = ['kill', 'restart', 'pause', 'scriptFlush', 'skew'];

function faultsFromEnv(): ReadonlySet<FaultKind> {
  const raw = process.env['NEMESIS_FAULTS']?.trim();
  if (raw === undefined || raw === '') return new Set(DEFAULT_FAULTS);
  if (raw === 'all') return new Set(FAULT_KINDS);
  const kinds = raw.split(',').map((k) => k.trim()).filter((k) => k !== '');
  for (const k of kinds) if (!(FAULT_KINDS as readonly string[]).includes(k)) throw new Error(`NEMESIS_FAULTS: unknown fault ${JSON.stringify(k)} (known: ${FAULT_KINDS.join(', ')}, or all)`);
  return new Set(kinds as FaultKind[]);
}

/** Settings of the nemesis runs (environment variables, see `docs/verification.md`). */
export const nemesisConfig = {
  /** `NEMESIS_FAULTS=kill,restart,...` or `all` (default {@link DEFAULT_FAULTS}). */
  faults: faultsFromEnv(),
  /** `NEMESIS_CLUSTER=1`: also run on a 3+3 cluster spawned by the file (failover happens only there). */
  cluster: process.env['NEMESIS_CLUSTER'] === '1',
  /** `NEMESIS_MAX_SKEW_MS`: bound of a skewed instance clock, ahead or behind (default 2,000 ms). */
  maxSkewMs: intFromEnv('NEMESIS_MAX_SKEW_MS') ?? 2_000,
  /** `NEMESIS_COMMAND_TIMEOUT_MS`: ioredis `commandTimeout` of the instances' connections (default 300 ms). */
  commandTimeoutMs: intFromEnv('NEMESIS_COMMAND_TIMEOUT_MS') ?? 300,
  /** `NEMESIS_MAX_COMMANDS`: commands per run (default 30). */
  maxCommands: intFromEnv('NEMESIS_MAX_COMMANDS') ?? 30,
};
