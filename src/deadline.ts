/**
 * Bounds on waits: every public promise that waits for something outside the caller's control
 * (a subscription, a flush) settles within a time the caller can set, or when an `AbortSignal`
 * fires, with a coded error.
 *
 * @module
 */
import { AbortedError, InvalidArgumentError, TimeoutError } from './errors.js';
import { describe } from './options.js';

/** How long a wait may last. */
export interface WaitOptions {
  /**
   * Give up after this many ms with `E_TIMEOUT`; 0 = no time limit.
   * @defaultValue 0 for `onIdle()` (no limit); 30000 for `ready()` (see `ReadyOptions`)
   */
  timeoutMs?: number;
  /**
   * Give up with `E_ABORTED` when this signal is aborted.
   *
   * @defaultValue none
   */
  signal?: AbortSignal;
}

/** The checked `timeoutMs` of `options` (`fallback` when not given). @internal */
export function waitOptions(where: string, options: WaitOptions | undefined, fallback: number): { timeoutMs: number; signal: AbortSignal | undefined } {
  if (options === undefined) return { timeoutMs: fallback, signal: undefined };
  if (typeof options !== 'object' || options === null) throw new InvalidArgumentError('E_INVALID_ARGUMENT', `${where}: options must be an object, got ${describe(options)}`);
  const { timeoutMs = fallback, signal } = options;
  if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 0) {
    throw new InvalidArgumentError('E_INVALID_ARGUMENT', `${where}: \`timeoutMs\` must be an integer >= 0, got ${describe(timeoutMs)}`);
  }
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw new InvalidArgumentError('E_INVALID_ARGUMENT', `${where}: \`signal\` must be an AbortSignal, got ${describe(signal)}`);
  }
  return { timeoutMs, signal };
}

/**
 * `work`, or a rejection with `E_TIMEOUT` after `timeoutMs` (0 = never) or `E_ABORTED` when
 * `signal` fires, whichever comes first. `work` itself is not cancelled. @internal
 */
export function bounded<T>(work: Promise<T>, where: string, timeoutMs: number, signal: AbortSignal | undefined): Promise<T> {
  if (signal?.aborted === true) {
    work.catch(() => undefined);
    return Promise.reject(new AbortedError(`${where} was aborted`, { cause: signal.reason }));
  }
  if (timeoutMs === 0 && signal === undefined) return work;
  return new Promise<T>((resolve, reject) => {
    let timer: NodeJS.Timeout | undefined;
    const onAbort = (): void => {
      done();
      reject(new AbortedError(`${where} was aborted`, { cause: signal?.reason }));
    };
    const done = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    };
    if (timeoutMs > 0) {
      timer = setTimeout(() => {
        done();
        reject(new TimeoutError(`${where} did not complete within ${timeoutMs} ms`));
      }, timeoutMs);
    }
    signal?.addEventListener('abort', onAbort, { once: true });
    work.then(
      (value) => {
        done();
        resolve(value);
      },
      (error: unknown) => {
        done();
        reject(error as Error);
      },
    );
  });
}
