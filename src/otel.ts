/**
 * OpenTelemetry metrics for a {@link PubSubCacheManager} or a {@link WriteBackCacheManager}:
 * the entry point `redis-pubsub-dict/otel`.
 *
 * Nothing here is on a hot path. Counters and gauges are observable instruments that read
 * `manager.stats()` once per collection (one batch callback per instrumented manager); the
 * histograms and the conflict counter are fed by the manager's `resync`, `flush` and `conflict`
 * events. `@opentelemetry/api` is an optional peer dependency: this module only imports its types
 * (you pass your `Meter`), and the main entry point never loads this module.
 *
 * ```ts
 * import { metrics } from '@opentelemetry/api';
 * import { instrument } from 'redis-pubsub-dict/otel';
 *
 * const stop = instrument(manager, { meter: metrics.getMeter('redis-pubsub-dict') });
 * // ... later, before or after manager.close():
 * stop();
 * ```
 *
 * See `docs/metrics.md` for every instrument and a Prometheus set-up.
 *
 * @module
 */
import type { Attributes, BatchObservableCallback, Histogram, Meter, Observable } from '@opentelemetry/api';
import type { PubSubCacheManager } from './cache/cache-manager.js';
import type { CacheStats, Conflict, FlushReport, ResyncInfo } from './cache/types.js';
import { InvalidArgumentError } from './errors.js';
import { describe } from './options.js';
import type { WriteBackCacheManager, WriteBackStats } from './write-back/manager.js';

/** Options of {@link instrument}. */
export interface InstrumentOptions {
  /** The meter that creates the instruments, e.g. `metrics.getMeter('redis-pubsub-dict')`. */
  readonly meter: Meter;
  /**
   * Attributes added to every measurement, next to `redis_pubsub_dict.namespace`: tells apart two
   * managers of the same namespace in one process (e.g. `{ 'redis_pubsub_dict.instance': 'api' }`).
   * @defaultValue none
   */
  readonly attributes?: Attributes;
}

/** Names of the instruments {@link instrument} creates (OpenTelemetry naming: dot-separated, lower case). */
export const METRICS = {
  /** Observable counter, `{read}`: reads served from the cache. */
  hits: 'redis_pubsub_dict.cache.hits',
  /** Observable counter, `{read}`: reads that went to Redis. */
  misses: 'redis_pubsub_dict.cache.misses',
  /** Observable counter, `{entry}`: entries the LRU evicted (see `CacheStats.evictions`). */
  evictions: 'redis_pubsub_dict.cache.evictions',
  /** Observable up-down counter, `{entry}`: entries cached now. */
  size: 'redis_pubsub_dict.cache.size',
  /** Observable counter, `{entry}`: entries of other instances' messages, by `outcome` (`applied` or `ignored`). */
  events: 'redis_pubsub_dict.cache.events',
  /** Observable counter, `{message}`: malformed messages ignored. */
  malformed: 'redis_pubsub_dict.cache.malformed_messages',
  /** Observable counter, `{resync}`: resynchronisations started after a gap. */
  resyncs: 'redis_pubsub_dict.cache.resyncs',
  /** Histogram, `s`: duration of completed resyncs, by `reason` and `mode`. */
  resyncDuration: 'redis_pubsub_dict.cache.resync.duration',
  /** Observable up-down counter, `{key}` (write-back only): keys dirty now. */
  dirtyKeys: 'redis_pubsub_dict.write_back.dirty_keys',
  /** Observable counter, `{flush}` (write-back only): flushes, by `outcome` (`ok` or `error`). */
  flushes: 'redis_pubsub_dict.write_back.flushes',
  /** Observable counter, `{key}` (write-back only): keys written by flushes. */
  flushedKeys: 'redis_pubsub_dict.write_back.flushed_keys',
  /** Histogram, `s` (write-back only): duration of successful flushes. */
  flushDuration: 'redis_pubsub_dict.write_back.flush.duration',
  /** Counter, `{conflict}` (write-back only): conflicts, by `outcome` (`local`, `remote`, `merged`), `detected_by` and `policy`. */
  conflicts: 'redis_pubsub_dict.write_back.conflicts',
} as const;

/** The attribute naming the manager's namespace on every measurement. */
export const NAMESPACE_ATTRIBUTE = 'redis_pubsub_dict.namespace';

/** Bucket boundaries (seconds) advised for the duration histograms: 1 ms to 10 s. */
const DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

const METER_METHODS = ['createObservableCounter', 'createObservableUpDownCounter', 'createHistogram', 'createCounter', 'addBatchObservableCallback', 'removeBatchObservableCallback'] as const;

/**
 * Reports the metrics of `manager` through `options.meter` until the returned function is called.
 *
 * Counters read `manager.stats()` at collection time, so they are cumulative from the manager's
 * creation; durations come from the `resync` and `flush` events. A {@link WriteBackCacheManager}
 * also reports its dirty keys, flushes and conflicts. Instrumenting several managers with one meter
 * is fine: each reports under its own `redis_pubsub_dict.namespace` (and `attributes`).
 *
 * @param manager - a `PubSubCacheManager` or `WriteBackCacheManager`.
 * @param options - see {@link InstrumentOptions}.
 * @returns a function that stops reporting (idempotent); call it when you close the manager.
 * @throws InvalidArgumentError `E_INVALID_OPTION` when `manager` or `options.meter` is not one.
 */
export function instrument<V>(manager: PubSubCacheManager<V>, options: InstrumentOptions): () => void {
  const where = 'instrument';
  if (
    manager === null ||
    typeof manager !== 'object' ||
    typeof manager.stats !== 'function' ||
    typeof manager.on !== 'function' ||
    typeof (manager.store as { namespace?: unknown } | undefined)?.namespace !== 'string'
  ) {
    throw new InvalidArgumentError('E_INVALID_OPTION', `${where}: manager must be a PubSubCacheManager or WriteBackCacheManager, got ${describe(manager)}`);
  }
  const meter = (options as Partial<InstrumentOptions> | undefined)?.meter;
  if (meter === null || typeof meter !== 'object' || METER_METHODS.some((name) => typeof meter[name] !== 'function')) {
    throw new InvalidArgumentError('E_INVALID_OPTION', `${where}: options.meter must be an OpenTelemetry Meter, got ${describe(meter)}`);
  }
  const extra = options.attributes;
  if (extra !== undefined && (extra === null || typeof extra !== 'object')) {
    throw new InvalidArgumentError('E_INVALID_OPTION', `${where}: options.attributes must be an object, got ${describe(extra)}`);
  }
  const base: Attributes = { ...extra, [NAMESPACE_ATTRIBUTE]: manager.store.namespace };
  const writeBack = 'dirty' in manager.stats();

  const counter = (name: string, unit: string, description: string) => meter.createObservableCounter(name, { unit, description });
  const gauge = (name: string, unit: string, description: string) => meter.createObservableUpDownCounter(name, { unit, description });
  const hits = counter(METRICS.hits, '{read}', 'Reads served from the near cache.');
  const misses = counter(METRICS.misses, '{read}', 'Reads that went to Redis.');
  const evictions = counter(METRICS.evictions, '{entry}', 'Entries evicted by the LRU to stay within its max.');
  const size = gauge(METRICS.size, '{entry}', 'Entries cached now (cached misses included).');
  const events = counter(METRICS.events, '{entry}', 'Entries of messages from other instances, applied (changed the cache) or ignored.');
  const malformed = counter(METRICS.malformed, '{message}', 'Malformed messages ignored.');
  const resyncs = counter(METRICS.resyncs, '{resync}', 'Resynchronisations after a gap in the event stream.');
  const observables: Observable[] = [hits, misses, evictions, size, events, malformed, resyncs];
  const dirtyKeys = writeBack ? gauge(METRICS.dirtyKeys, '{key}', 'Keys with a local change not written to Redis yet.') : undefined;
  const flushes = writeBack ? counter(METRICS.flushes, '{flush}', 'Flushes, ok or failed for at least one key.') : undefined;
  const flushedKeys = writeBack ? counter(METRICS.flushedKeys, '{key}', 'Keys written to Redis by flushes.') : undefined;
  if (dirtyKeys && flushes && flushedKeys) observables.push(dirtyKeys, flushes, flushedKeys);

  const observe: BatchObservableCallback = (result) => {
    const stats = manager.stats() as CacheStats & Partial<WriteBackStats>;
    result.observe(hits, stats.hits, base);
    result.observe(misses, stats.misses, base);
    result.observe(evictions, stats.evictions, base);
    result.observe(size, stats.size, base);
    result.observe(events, stats.eventsApplied, { ...base, outcome: 'applied' });
    result.observe(events, stats.eventsIgnored, { ...base, outcome: 'ignored' });
    result.observe(malformed, stats.malformed, base);
    result.observe(resyncs, stats.resyncs, base);
    if (dirtyKeys && flushes && flushedKeys) {
      const flushErrors = stats.flushErrors ?? 0;
      result.observe(dirtyKeys, stats.dirty ?? 0, base);
      result.observe(flushes, (stats.flushes ?? 0) - flushErrors, { ...base, outcome: 'ok' });
      result.observe(flushes, flushErrors, { ...base, outcome: 'error' });
      result.observe(flushedKeys, stats.flushedKeys ?? 0, base);
    }
  };
  meter.addBatchObservableCallback(observe, observables);

  const histogram = (name: string, description: string): Histogram =>
    meter.createHistogram(name, { unit: 's', description, advice: { explicitBucketBoundaries: DURATION_BUCKETS } });
  const resyncDuration = histogram(METRICS.resyncDuration, 'Duration of resynchronisations after a gap.');
  const onResync = (info: ResyncInfo): void => {
    resyncDuration.record(info.durationMs / 1000, { ...base, reason: info.reason, mode: info.mode });
  };
  manager.on('resync', onResync);

  let onFlush: ((report: FlushReport<V>) => void) | undefined;
  let onConflict: ((conflict: Conflict<V>) => void) | undefined;
  if (writeBack) {
    const flushDuration = histogram(METRICS.flushDuration, 'Duration of successful flushes.');
    const conflicts = meter.createCounter(METRICS.conflicts, { unit: '{conflict}', description: 'Conflicts between a local change and a remote write, by outcome.' });
    onFlush = (report) => flushDuration.record(report.durationMs / 1000, base);
    onConflict = (conflict) => conflicts.add(1, { ...base, outcome: conflict.outcome, detected_by: conflict.detectedBy, policy: conflict.policy });
    (manager as unknown as WriteBackCacheManager<V>).on('flush', onFlush);
    manager.on('conflict', onConflict);
  }

  let stopped = false;
  return () => {
    if (stopped) return;
    stopped = true;
    meter.removeBatchObservableCallback(observe, observables);
    manager.off('resync', onResync);
    if (onFlush) manager.off('flush', onFlush);
    if (onConflict) manager.off('conflict', onConflict);
  };
}
