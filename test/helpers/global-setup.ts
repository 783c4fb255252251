/**
 * vitest global setup: provides real Redis servers to every test file for the whole run.
 *
 * Starts {@link startRedisEnvironment} with a cluster (unless `REDIS_SKIP_CLUSTER=1`), prints where
 * Redis comes from, provides `inject('redis')` and stops everything it started at teardown.
 *
 * @module
 */
import type { TestProject } from 'vitest/node';
import { startRedisEnvironment, type RedisNode } from './harness.js';
import type { ProvidedRedis } from './provided.js';

const list = (nodes: readonly RedisNode[]): string => nodes.map((n) => `${n.host}:${n.port}`).join(', ');

/** Starts Redis for the run and returns the teardown. */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const wantCluster = process.env['REDIS_SKIP_CLUSTER'] !== '1';
  const started = Date.now();
  const env = await startRedisEnvironment({ cluster: wantCluster });
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  const standalone = `${env.source} standalone ${env.standalone.host}:${env.standalone.port}`;
  let cluster: string;
  if (env.cluster) cluster = `a ${env.clusterSource} 3+3 cluster on ${list(env.cluster)}`;
  else if (!wantCluster) cluster = 'no cluster (REDIS_SKIP_CLUSTER=1: cluster suites are skipped)';
  else cluster = `NO cluster (${env.clusterSource}: cluster suites are skipped)`;
  console.log(`[redis] ${standalone} and ${cluster} (ready in ${seconds} s)`);

  const provided: ProvidedRedis = {
    standalone: { host: env.standalone.host, port: env.standalone.port, url: env.standalone.url },
    cluster: env.cluster ? env.cluster.map(({ host, port }) => ({ host, port })) : null,
    source: env.source,
  };
  project.provide('redis', provided);

  return async () => {
    await env.stop();
  };
}
