/**
 * `redis-pubsub-dict/otel` with the OpenTelemetry SDK (`@opentelemetry/sdk-metrics`, a reader
 * collected on demand) and real Redis (the standalone server of the global setup).
 */
import type { Attributes } from '@opentelemetry/api';
import { DataPointType, MeterProvider, MetricReader, type MetricData } from '@opentelemetry/sdk-metrics';
import { afterEach, describe, expect, it } from 'vitest';
import { PubSubCacheManager } from '../../src/cache/cache-manager.js';
import { InvalidArgumentError } from '../../src/errors.js';
import { instrument, METRICS, NAMESPACE_ATTRIBUTE } from '../../src/otel.js';
import { PubSubRedisDict } from '../../src/store/pubsub-redis-dict.js';
import { WriteBackCacheManager } from '../../src/write-back/manager.js';
import { standaloneClient, uniqueNamespace, withClients } from '../helpers/connections.js';
import { forceResync } from '../helpers/resync.js';
import { type Conflict } from '../../src/cache/types.js';

/** A reader collected by the test itself. */
class TestReader extends MetricReader {
  protected override async onForceFlush(): Promise<void> {}
  protected override async onShutdown(): Promise<void> {}
}

const clients = withClients({ closeAfter: 'each' });
const cleanups: (() => Promise<void> | void)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function setup(): { provider: MeterProvider; reader: TestReader } {
  const reader = new TestReader();
  const provider = new MeterProvider({ readers: [reader] });
  cleanups.push(() => provider.shutdown());
  return { provider, reader };
}

function track<M extends { close(): Promise<void> }>(m: M): M {
  cleanups.push(() => m.close());
  return m;
}

/** Every metric of a collection, by name. */
async function collect(reader: TestReader): Promise<Map<string, MetricData>> {
  const { resourceMetrics, errors } = await reader.collect();
  expect(errors).toEqual([]);
  return new Map(resourceMetrics.scopeMetrics.flatMap((scope) => scope.metrics).map((metric) => [metric.descriptor.name, metric]));
}

/** The value of a sum's point whose attributes include `attributes` (undefined when there is none). */
function sum(metrics: Map<string, MetricData>, name: string, attributes: Attributes): number | undefined {
  const metric = metrics.get(name);
  if (!metric) return undefined;
  expect(metric.dataPointType).toBe(DataPointType.SUM);
  const point = metric.dataPoints.find((p) => Object.entries(attributes).every(([k, v]) => p.attributes[k] === v));
  return point?.value as number | undefined;
}

/** The count of a histogram's points whose attributes include `attributes`. */
function histogramCount(metrics: Map<string, MetricData>, name: string, attributes: Attributes): number {
  const metric = metrics.get(name);
  if (!metric) return 0;
  expect(metric.dataPointType).toBe(DataPointType.HISTOGRAM);
  let count = 0;
  for (const p of metric.dataPoints) {
    if (Object.entries(attributes).every(([k, v]) => p.attributes[k] === v)) count += (p.value as { count: number }).count;
  }
  return count;
}

describe('instrument() on a PubSubCacheManager', () => {
  it('reports hits, misses, evictions, size, events, resyncs (with durations) under the namespace', async () => {
    const { provider, reader } = setup();
    const ns = uniqueNamespace('otel-cm');
    const a = track(new PubSubCacheManager<number>(new PubSubRedisDict<number>(clients.track(standaloneClient()), ns)));
    const b = track(new PubSubCacheManager<number>(new PubSubRedisDict<number>(clients.track(standaloneClient()), ns), { cache: 2 }));
    await Promise.all([a.ready(), b.ready()]);
    const stop = instrument(b, { meter: provider.getMeter('test'), attributes: { instance: 'b' } });
    cleanups.push(stop);
    const at = { [NAMESPACE_ATTRIBUTE]: ns, instance: 'b' };

    await a.setMany([['k1', 1], ['k2', 2], ['k3', 3]]);
    expect(await b.getMany(['k1', 'k2', 'k3'])).toEqual([1, 2, 3]); // 3 misses; k1 evicted
    expect(await b.get('k3')).toBe(3); // 1 hit
    const invalidated = new Promise<void>((resolve) => b.once('invalidate', () => resolve()));
    await a.set('k3', 30); // cached by b: applied
    await invalidated;
    const info = await forceResync(b as PubSubCacheManager<unknown>, clients.track(standaloneClient()), 'k2');

    const metrics = await collect(reader);
    const stats = b.stats();
    expect(sum(metrics, METRICS.hits, at)).toBe(stats.hits);
    expect(stats.hits).toBeGreaterThanOrEqual(1);
    expect(sum(metrics, METRICS.misses, at)).toBe(stats.misses);
    expect(sum(metrics, METRICS.evictions, at)).toBe(stats.evictions);
    expect(stats.evictions).toBeGreaterThanOrEqual(1);
    expect(sum(metrics, METRICS.size, at)).toBe(stats.size);
    expect(sum(metrics, METRICS.events, { ...at, outcome: 'applied' })).toBe(stats.eventsApplied);
    expect(stats.eventsApplied).toBeGreaterThanOrEqual(1);
    expect(sum(metrics, METRICS.events, { ...at, outcome: 'ignored' })).toBe(stats.eventsIgnored);
    expect(sum(metrics, METRICS.malformed, at)).toBe(0);
    expect(sum(metrics, METRICS.resyncs, at)).toBe(stats.resyncs);
    expect(histogramCount(metrics, METRICS.resyncDuration, { ...at, reason: info.reason, mode: 'revalidate' })).toBe(1);
    expect(metrics.get(METRICS.resyncDuration)?.descriptor.unit).toBe('s');
    // No write-back instruments for a write-through manager.
    expect(sum(metrics, METRICS.dirtyKeys, at)).toBeUndefined();
  });

  it('stops reporting and removes its listeners when disposed (idempotent)', async () => {
    const { provider, reader } = setup();
    const ns = uniqueNamespace('otel-stop');
    const m = track(new PubSubCacheManager<number>(new PubSubRedisDict<number>(clients.track(standaloneClient()), ns)));
    await m.ready();
    const listeners = m.listenerCount('resync');
    const stop = instrument(m, { meter: provider.getMeter('test') });
    expect(m.listenerCount('resync')).toBe(listeners + 1);
    await m.set('k', 1);
    expect(await m.get('k')).toBe(1);
    expect(sum(await collect(reader), METRICS.hits, { [NAMESPACE_ATTRIBUTE]: ns })).toBe(1);
    stop();
    stop();
    expect(m.listenerCount('resync')).toBe(listeners);
    expect(await m.get('k')).toBe(1);
    expect(m.stats().hits).toBe(2);
    // The second hit is not reported: the SDK shows the last observed value, or nothing.
    const after = sum(await collect(reader), METRICS.hits, { [NAMESPACE_ATTRIBUTE]: ns });
    expect([undefined, 1]).toContain(after);
  });

  it('refuses what is not a manager or not a meter with E_INVALID_OPTION', async () => {
    const { provider } = setup();
    const m = track(new PubSubCacheManager<number>(new PubSubRedisDict<number>(clients.track(standaloneClient()), uniqueNamespace('otel-bad'))));
    const meter = provider.getMeter('test');
    const attempts: (() => unknown)[] = [
      () => instrument({} as never, { meter }),
      () => instrument(null as never, { meter }),
      () => instrument({ stats: () => m.stats(), on: () => {} } as never, { meter }),
      () => instrument(m, {} as never),
      () => instrument(m, undefined as never),
      () => instrument(m, { meter: {} as never }),
      () => instrument(m, { meter, attributes: 'x' as never }),
    ];
    for (const attempt of attempts) {
      expect(attempt).toThrow(InvalidArgumentError);
      try {
        attempt();
      } catch (error) {
        expect((error as InvalidArgumentError).code).toBe('E_INVALID_OPTION');
      }
    }
    expect(m.listenerCount('resync')).toBe(0);
  });
});

describe('instrument() on a WriteBackCacheManager', () => {
  it('reports dirty keys, flushes, flushed keys, flush durations and conflicts by outcome', async () => {
    const { provider, reader } = setup();
    const ns = uniqueNamespace('otel-wb');
    const w = track(
      new WriteBackCacheManager<number>(new PubSubRedisDict<number>(clients.track(standaloneClient()), ns), {
        conflictPolicy: 'discard-on-remote-update',
        flushIntervalMs: 0,
      }),
    );
    // Its clock reads 2 s ahead: its writes are newer than w's local changes, so they conflict.
    const other = track(new PubSubCacheManager<number>(new PubSubRedisDict<number>(clients.track(standaloneClient()), ns, { clock: () => Date.now() + 2000 })));
    await Promise.all([w.ready(), other.ready()]);
    cleanups.push(instrument(w, { meter: provider.getMeter('test') }));
    const at = { [NAMESPACE_ATTRIBUTE]: ns };

    await w.set('a', 1);
    await w.set('b', 2);
    let metrics = await collect(reader);
    expect(sum(metrics, METRICS.dirtyKeys, at)).toBe(2);
    expect(sum(metrics, METRICS.flushes, { ...at, outcome: 'ok' })).toBe(0);

    const report = await w.flush();
    expect(report.written.sort()).toEqual(['a', 'b']);
    // A remote write while `a` is dirty: the local change is discarded (outcome 'remote').
    await w.set('a', 10);
    const conflict = new Promise<Conflict<number>>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no conflict event within 10 s')), 10_000);
      w.once('conflict', (c) => {
        clearTimeout(timer);
        resolve(c);
      });
    });
    await other.set('a', 100);
    expect((await conflict).outcome).toBe('remote');

    metrics = await collect(reader);
    expect(sum(metrics, METRICS.dirtyKeys, at)).toBe(0);
    expect(sum(metrics, METRICS.flushes, { ...at, outcome: 'ok' })).toBe(1);
    expect(sum(metrics, METRICS.flushes, { ...at, outcome: 'error' })).toBe(0);
    expect(sum(metrics, METRICS.flushedKeys, at)).toBe(2);
    expect(histogramCount(metrics, METRICS.flushDuration, at)).toBe(1);
    expect(sum(metrics, METRICS.conflicts, { ...at, outcome: 'remote', detected_by: 'message', policy: 'discard-on-remote-update' })).toBe(1);
  });
});
