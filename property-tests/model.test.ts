/**
 * Model-based properties (fc.commands + fc.asyncModelRun) against 2-4 real cache managers on a
 * real Redis, standalone and cluster, for each conflict policy. After each run (and at random
 * points during it) the system is quiesced and I1 (convergence), I2 (last-writer-wins), I3 (no
 * silent loss), I4 (no regression) are checked; I6 (eviction of dirty entries) and I7 (a key
 * changed while its flush is in flight) are checked by the commands that provoke them.
 *
 * The "model" of these runs is the record of every write (key, value, stamp) and of every
 * reported conflict: outcomes depend on timing, so the invariants are relations between that
 * record, the caches and what Redis holds, not a replay of one expected state.
 */
import fc from 'fast-check';
import type { Cluster, Redis } from 'ioredis';
import { afterAll, describe, it } from 'vitest';
import { topologies, uniqueNamespace } from '../test/helpers/connections.js';
import { commandArbs, configArb, printSummary, runFinished } from './commands.js';
import { commandsReplayPath, params, seedOf, timeoutOf } from './config.js';
import { type PolicyName, World } from './world.js';

const FILE = import.meta.url;
seedOf(FILE);

afterAll(() => printSummary('model'));

const POLICIES: PolicyName[] = ['last-writer-wins', 'discard-on-remote-update', 'custom'];
const RUNS = 50;
const MAX_COMMANDS = 40;

describe.each(topologies())('model-based: caches against a real Redis (%s)', (_topology, factory) => {
  it.each(POLICIES)(
    'I1-I4, I6, I7 hold for any sequence of commands under %s',
    async (policy) => {
      await fc.assert(
        fc.asyncProperty(configArb, fc.commands(commandArbs, { maxCommands: MAX_COMMANDS, size: 'max', ...(commandsReplayPath ? { replayPath: commandsReplayPath } : {}) }), async (config, cmds) => {
          const world = await World.create(() => factory() as Redis | Cluster, uniqueNamespace('model'), policy, config);
          try {
            await fc.asyncModelRun(() => ({ model: { kinds: config.kinds }, real: world }), cmds);
            await world.quiesce();
            await world.checkInvariants();
          } catch (error) {
            if (process.env['PROPERTY_VERBOSE']) console.log(`${String(error)}\n${await world.describe().catch((e: unknown) => String(e))}`);
            throw error;
          } finally {
            runFinished();
            await world.dispose();
          }
        }),
        params(FILE, RUNS),
      );
    },
    // Green runs take ~10 s per test; the rest is room for shrinking a counterexample (each
    // shrink step is a real run), which a tighter limit would cut short.
    timeoutOf(600_000),
  );
});
