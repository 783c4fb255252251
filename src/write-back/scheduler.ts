/**
 * When the write-back manager flushes: on a timer (`flushIntervalMs`), when the dirty map reaches
 * its size trigger, on request (`flush()`), and again after a failure, with back-off (`retryDelayMs`
 * doubled up to 30 s). One flush runs at a time; a flush requested while one runs starts when it
 * ends, and requests made meanwhile share it. `onIdle()` flushes (and waits for retries) until
 * nothing is dirty.
 *
 * The scheduler knows nothing of what a flush does: the manager's {@link FlushWork} runs it and
 * tells the scheduler when it starts, ends, fails or succeeds.
 *
 * @module
 */

/** Longest delay between two retries of a failed flush, in ms. */
const MAX_RETRY_DELAY_MS = 30_000;

/** What the scheduler needs of its manager. */
export interface FlushWork<R> {
  /** Runs one flush (the manager calls {@link FlushScheduler.begin} and {@link FlushScheduler.end} around it). */
  run(): Promise<R>;
  /** The manager's `flush()`: automatic flushes and `untilIdle` request theirs through it, as a caller does. */
  flush(): Promise<R>;
  /** Number of keys waiting to be written. */
  pending(): number;
  /** Reports the failure of a flush nobody awaits (automatic, retry). */
  onError(error: Error): void;
  /** True once the manager is closed: no retry is scheduled, `untilIdle` rejects with {@link closedError}. */
  closed(): boolean;
  /** The error of a wait that finds the manager closed. */
  closedError(): Error;
}

/** What a flush reports that tells progress from none. */
interface Progress {
  readonly written: readonly unknown[];
  readonly conflicts: readonly unknown[];
}

/** The flush scheduler of a write-back manager (see the module's description). */
export class FlushScheduler<R extends Progress> {
  readonly #work: FlushWork<R>;
  readonly #retryDelayMs: number;
  #interval: NodeJS.Timeout | undefined;
  #retryTimer: NodeJS.Timeout | undefined;
  #retryDelay = 0;
  #tail: Promise<unknown> = Promise.resolve();
  #queued: Promise<R> | undefined;
  #inFlight = 0;
  /** Woken after each flush, with its error when it failed. */
  #waiters: ((failure: Error | undefined) => void)[] = [];

  /**
   * @param work - the manager's side.
   * @param intervalMs - flush every this many ms when something is dirty; 0 = no timer.
   * @param retryDelayMs - first delay before retrying a failed flush, doubled up to 30 s.
   */
  constructor(work: FlushWork<R>, intervalMs: number, retryDelayMs: number) {
    this.#work = work;
    this.#retryDelayMs = retryDelayMs;
    if (intervalMs > 0) {
      this.#interval = setInterval(() => {
        // After a failed flush its retry is scheduled: the interval must not defeat the back-off.
        if (this.#work.pending() > 0) this.trigger();
      }, intervalMs);
      this.#interval.unref();
    }
  }

  /** True while a flush runs. */
  get running(): boolean {
    return this.#inFlight > 0;
  }

  /** Starts an automatic flush unless one runs or a retry is scheduled (the size trigger, the timer). */
  trigger(): void {
    if (this.#inFlight === 0 && this.#retryTimer === undefined) this.autoFlush();
  }

  /** Runs a flush after the one running, if any; calls made before it starts share it. Rejects once the manager is closed. */
  flush(): Promise<R> {
    if (this.#work.closed()) return Promise.reject(this.#work.closedError());
    if (this.#queued) return this.#queued;
    const run = this.#tail.then(() => {
      this.#queued = undefined;
      return this.#work.run();
    });
    this.#queued = run;
    this.#tail = run.catch(() => undefined);
    return run;
  }

  /** A flush whose failure is reported, not thrown. */
  autoFlush(): void {
    this.#work.flush().catch((error: unknown) => this.#work.onError(error as Error));
  }

  /** A flush starts running. */
  begin(): void {
    this.#inFlight++;
  }

  /** A flush stopped running. */
  end(): void {
    this.#inFlight--;
  }

  /** A flush succeeded: the next failure starts the back-off over. */
  succeeded(): void {
    this.#retryDelay = 0;
  }

  /** Schedules a retry after the next back-off delay (unless one is scheduled or the manager is closed). */
  scheduleRetry(): void {
    if (this.#work.closed() || this.#retryTimer !== undefined) return;
    this.#retryDelay = Math.min(this.#retryDelay === 0 ? this.#retryDelayMs : this.#retryDelay * 2, MAX_RETRY_DELAY_MS);
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      if (this.#work.pending() > 0) this.autoFlush();
      else this.wake();
    }, this.#retryDelay);
    this.#retryTimer.unref();
  }

  /** Resolves after the next flush (or close), with the flush's error when it failed. */
  nextFlush(): Promise<Error | undefined> {
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Wakes the callers of {@link nextFlush}. */
  wake(failure?: Error): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const resolve of waiters) resolve(failure);
  }

  /** Flushes, and waits for retries, until nothing is dirty and no flush runs. */
  async untilIdle(): Promise<void> {
    while (this.#work.pending() > 0 || this.#inFlight > 0) {
      if (this.#work.closed()) throw this.#work.closedError();
      if (this.#retryTimer !== undefined) {
        await this.nextFlush();
        continue;
      }
      try {
        const report = await this.#work.flush();
        // A flush that left keys dirty without writing or reporting anything made no progress:
        // wait for the back-off rather than flush again at once (never spin).
        if (report.written.length === 0 && report.conflicts.length === 0 && this.#work.pending() > 0) this.scheduleRetry();
      } catch {
        // A failed flush schedules a retry; wait for it.
      }
    }
  }

  /** Stops the timer and any scheduled retry (the manager is closing). */
  stop(): void {
    if (this.#interval !== undefined) clearInterval(this.#interval);
    if (this.#retryTimer !== undefined) clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
  }
}
