/**
 * The write-back flush scheduler on its own (src/write-back/scheduler.ts), with fake timers: no
 * Redis and no manager, only a FlushWork that records when it runs.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { type FlushWork, FlushScheduler } from '../../src/write-back/scheduler.js';

interface Report {
  written: string[];
  conflicts: never[];
}

/** A work whose flushes succeed (writing everything pending) unless `failing`, recording when they run. */
function fakeWork() {
  const state = { pending: 0, failing: false, closed: false, runs: [] as number[], errors: [] as Error[], gate: undefined as Promise<void> | undefined };
  let scheduler!: FlushScheduler<Report>;
  const work: FlushWork<Report> = {
    run: async () => {
      scheduler.begin();
      state.runs.push(Date.now());
      await (state.gate ?? Promise.resolve());
      scheduler.end();
      if (state.failing) {
        scheduler.scheduleRetry();
        const error = new Error('down');
        scheduler.wake(error);
        throw error;
      }
      const written = Array.from({ length: state.pending }, (_, i) => `k${i}`);
      state.pending = 0;
      scheduler.succeeded();
      scheduler.wake();
      return { written, conflicts: [] };
    },
    flush: () => scheduler.flush(),
    pending: () => state.pending,
    onError: (error) => state.errors.push(error),
    closed: () => state.closed,
    closedError: () => new Error('closed'),
  };
  return { state, work, use: (s: FlushScheduler<Report>) => (scheduler = s) };
}

beforeEach(() => {
  vi.useFakeTimers({ now: 0 });
});
afterEach(() => {
  vi.useRealTimers();
});

describe('FlushScheduler', () => {
  it('runs one flush at a time; requests made while one runs share the next one', async () => {
    const { state, work, use } = fakeWork();
    const s = use(new FlushScheduler(work, 0, 100));
    state.pending = 2;
    let open!: () => void;
    state.gate = new Promise((resolve) => (open = resolve));
    const first = s.flush();
    // Not started yet: a second request shares it.
    expect(s.flush()).toBe(first);
    await vi.advanceTimersByTimeAsync(0);
    expect(s.running).toBe(true);
    const second = s.flush();
    const third = s.flush();
    expect(second).toBe(third);
    expect(second).not.toBe(first);
    state.gate = undefined;
    open();
    await expect(first).resolves.toEqual({ written: ['k0', 'k1'], conflicts: [] });
    await expect(second).resolves.toEqual({ written: [], conflicts: [] });
    expect(state.runs).toHaveLength(2);
  });

  it('flushes on its timer only when something is pending', async () => {
    const { state, work, use } = fakeWork();
    const s = use(new FlushScheduler(work, 1000, 100));
    await vi.advanceTimersByTimeAsync(2500);
    expect(state.runs).toEqual([]);
    state.pending = 1;
    await vi.advanceTimersByTimeAsync(1000);
    expect(state.runs).toEqual([3000]);
    s.stop();
  });

  it('retries a failed flush with a back-off doubled up to 30 s, reports each failure, and starts over after a success', async () => {
    const { state, work, use } = fakeWork();
    const s = use(new FlushScheduler(work, 0, 100));
    state.pending = 1;
    state.failing = true;
    s.trigger();
    await vi.advanceTimersByTimeAsync(100 + 200 + 400 + 800);
    expect(state.runs).toEqual([0, 100, 300, 700, 1500]);
    // A trigger while a retry is scheduled does not defeat the back-off.
    s.trigger();
    await vi.advanceTimersByTimeAsync(0);
    expect(state.runs).toHaveLength(5);
    await vi.advanceTimersByTimeAsync(200_000);
    const gaps = state.runs.slice(1).map((t, i) => t - state.runs[i]!);
    expect(Math.max(...gaps)).toBe(30_000);
    expect(state.errors.length).toBe(state.runs.length);
    state.failing = false;
    await vi.advanceTimersByTimeAsync(30_000);
    const after = state.runs.length;
    state.pending = 1;
    state.failing = true;
    s.trigger();
    await vi.advanceTimersByTimeAsync(100);
    expect(state.runs.slice(after)).toHaveLength(2);
    expect(state.runs.at(-1)! - state.runs.at(-2)!).toBe(100);
    s.stop();
  });

  it('untilIdle flushes until nothing is pending, waiting for retries after a failure', async () => {
    const { state, work, use } = fakeWork();
    const s = use(new FlushScheduler(work, 0, 100));
    state.pending = 3;
    state.failing = true;
    let idle = false;
    const done = s.untilIdle().then(() => (idle = true));
    await vi.advanceTimersByTimeAsync(250);
    expect(idle).toBe(false);
    state.failing = false;
    await vi.advanceTimersByTimeAsync(400);
    await done;
    expect(idle).toBe(true);
    expect(state.pending).toBe(0);
  });

  it('refuses to flush once the manager is closed, and schedules no retry', async () => {
    const { state, work, use } = fakeWork();
    const s = use(new FlushScheduler(work, 0, 100));
    state.closed = true;
    await expect(s.flush()).rejects.toThrow('closed');
    state.pending = 1;
    await expect(s.untilIdle()).rejects.toThrow('closed');
    s.scheduleRetry();
    await vi.advanceTimersByTimeAsync(1000);
    expect(state.runs).toEqual([]);
  });
});
