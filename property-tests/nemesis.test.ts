/**
 * Model-based properties under a nemesis: the commands of `model.test.ts` mixed with faults
 * (`nemesis.ts`: subscriber kills, restarts, write pauses with short command timeouts, script
 * flushes, clock skew, cluster failovers) against servers this file spawns itself. After each run
 * the faults heal, the system is quiesced and I1–I4 are checked relative to what survived (see
 * `docs/verification.md`, "Faults").
 *
 * Configuration (`config.ts`): `NEMESIS_FAULTS`, `NEMESIS_CLUSTER=1`, `NEMESIS_MAX_SKEW_MS`,
 * `NEMESIS_COMMAND_TIMEOUT_MS`, `NEMESIS_MAX_COMMANDS`, and the usual `PROPERTY_SEED`/`PROPERTY_RUNS`.
 */
import fc from 'fast-check';
import { Cluster, Redis } from 'ioredis';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { uniqueNamespace } from '../test/helpers/connections.js';
import { startCluster, startServer, type RedisClusterHandle, type RedisServerHandle } from '../test/helpers/harness.js';
import { type Cmd, commandArbs, configArb, mark, printSummary, runFinished } from './commands.js';
import { commandsReplayPath, nemesisConfig, params, seedOf, timeoutOf } from './config.js';
import { APPLIED_LOG_ARGS, Nemesis, faultArb, nemesisStats } from './nemesis.js';
import { type PolicyName, World } from './world.js';

const FILE = import.meta.url;
seedOf(FILE);

afterAll(() => {
  printSummary('nemesis');
  console.log(`[property] nemesis faults=${[...nemesisConfig.faults].join(',')}${nemesisConfig.cluster ? ' +cluster' : ''}: ${JSON.stringify(nemesisStats)}`);
});

const POLICIES: PolicyName[] = ['last-writer-wins', 'discard-on-remote-update', 'custom'];
/** Default budget (CI): a few runs per policy on the standalone server. */
const RUNS = 12;

const topologies: ('standalone' | 'cluster')[] = nemesisConfig.cluster ? ['standalone', 'cluster'] : ['standalone'];

describe.each(topologies)('nemesis: caches against a faulty Redis (%s)', (topology) => {
  let server: RedisServerHandle | undefined;
  let cluster: RedisClusterHandle | undefined;

  beforeAll(async () => {
    if (topology === 'standalone') server = await startServer({ args: APPLIED_LOG_ARGS });
    else cluster = await startCluster();
  }, 120_000);
  afterAll(async () => {
    await server?.stop();
    await cluster?.stop();
  });

  const client = (commandTimeout?: number): Redis | Cluster => {
    const opts = commandTimeout === undefined ? {} : { commandTimeout };
    const redis = server ? new Redis({ host: server.host, port: server.port, ...opts }) : new Cluster(cluster!.seeds, { redisOptions: opts });
    // Connection errors are expected (restarts, failovers); calls report them as rejections.
    redis.on('error', () => undefined);
    return redis;
  };

  it.each(POLICIES)(
    'I1-I4, I6, I7 hold under faults, relative to what survived, under %s',
    async (policy) => {
      const faults = faultArb(nemesisConfig.faults, topology, nemesisConfig.maxSkewMs);
      const arbs: fc.Arbitrary<Cmd>[] = faults === undefined ? commandArbs : [...commandArbs, faults, faults, faults];
      await fc.assert(
        fc.asyncProperty(configArb, fc.commands(arbs, { maxCommands: nemesisConfig.maxCommands, size: 'max', ...(commandsReplayPath ? { replayPath: commandsReplayPath } : {}) }), async (config, cmds) => {
          mark('run:setup');
          const nemesis = new Nemesis(server ? { server } : { cluster: cluster! });
          await nemesis.prepare();
          const world = await World.create(() => client(), uniqueNamespace('nemesis'), policy, config, {
            // A short command timeout makes the pause's ambiguous outcomes; without pauses, none.
            instanceFactory: () => client(nemesisConfig.faults.has('pause') ? nemesisConfig.commandTimeoutMs : undefined),
            nemesis,
            // Near real time: a bound of stamps against the server's TIME sees realistic stamps.
            now: Date.now(),
          });
          let failed = false;
          try {
            await fc.asyncModelRun(() => ({ model: { kinds: config.kinds }, real: world }), cmds);
            mark('run:final-quiesce');
            await world.quiesce();
            mark('run:final-check');
            await world.checkInvariants();
          } catch (error) {
            failed = true;
            // One line per failing run (and shrinking step): a long campaign's log shows it at once.
            console.log(`[nemesis] run failed: ${String(error).split('\n')[0]} — ${cmds.toString().slice(0, 300)}`);
            if (process.env['PROPERTY_VERBOSE']) console.log(`${String(error)}\n${await world.describe().catch((e: unknown) => String(e))}`);
            throw error;
          } finally {
            runFinished();
            mark('run:dispose');
            // After a failure, close() may fail for the same reason: the first error is the one to see.
            await world.dispose().catch((error: unknown) => {
              if (!failed) throw error;
            });
          }
        }),
        params(FILE, RUNS),
      );
    },
    timeoutOf(600_000),
  );
});
