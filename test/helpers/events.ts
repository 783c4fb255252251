/**
 * Waiting on a cache manager's events, with a deadline (no sleeps): the next event of a kind, the
 * next one about a key, and a marker write whose event proves that every earlier one arrived.
 */
import { randomBytes } from 'node:crypto';
import { expect } from 'vitest';

/** What these helpers need of a manager: its events, `get` and `set`. */
interface Manager {
  on(event: string, listener: (...args: never[]) => void): unknown;
  off(event: string, listener: (...args: never[]) => void): unknown;
}

type EventName = 'down' | 'resync' | 'invalidate' | 'update';

/** Resolves with the args of the next `name` event of `m` that satisfies `accept`; rejects after `timeoutMs`. */
export function nextEvent(m: Manager, name: EventName, timeoutMs: number, accept: (...args: unknown[]) => boolean = () => true): Promise<unknown[]> {
  const emitter = m as unknown as NodeJS.EventEmitter;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(name, listener);
      reject(new Error(`no '${name}' event within ${timeoutMs} ms`));
    }, timeoutMs);
    const listener = (...args: unknown[]): void => {
      if (!accept(...args)) return;
      clearTimeout(timer);
      emitter.off(name, listener);
      resolve(args);
    };
    emitter.on(name, listener);
  });
}

/** Resolves with the args of the next `name` event of `m` about `key`; rejects after `timeoutMs`. */
export function nextEventFor(m: Manager, name: 'invalidate' | 'update', key: string, timeoutMs = 10_000): Promise<unknown[]> {
  return nextEvent(m, name, timeoutMs, (k) => k === key);
}

/**
 * Writes a fresh marker key `key(name)` through `writer` and waits until `m` has its invalidation:
 * a writer's messages reach `m` in publish order, so every earlier one has arrived. `m` first reads
 * the marker (a cached miss is dropped by its event, which makes the event observable).
 */
export async function markerSeen<V>(
  writer: { set(key: string, value: V): Promise<unknown> },
  m: Manager & { get(key: string): Promise<unknown> },
  value: V,
  key: (name: string) => string = (name) => name,
): Promise<void> {
  const k = key(`marker-${randomBytes(3).toString('hex')}`);
  const seen = nextEventFor(m, 'invalidate', k);
  expect(await m.get(k)).toBeUndefined();
  await writer.set(k, value);
  await seen;
}
