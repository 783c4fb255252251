/**
 * Deadline-bounded polling, shared by the Redis harness (which must not import vitest, because the
 * demo uses it too) and by the test helpers.
 *
 * Tests never sleep "to let things settle": they poll a condition until it holds or a deadline passes.
 */
import { setTimeout as delay } from 'node:timers/promises';

/** Options for {@link pollUntil}. */
export interface PollOptions {
  /** Give up after this many milliseconds (default 10 000). */
  timeoutMs?: number;
  /** Wait this long between two attempts (default 25). */
  intervalMs?: number;
  /** Text of the error thrown at the deadline (default: "condition not met"). */
  message?: string;
}

/**
 * Calls `predicate` until it returns (or resolves to) `true`, waiting `intervalMs` between attempts.
 *
 * A predicate that throws counts as "not yet"; the last error is attached to the timeout error
 * (as `cause` and in the message), so a predicate may use `expect(...)` inside.
 *
 * @throws Error with `options.message` and the elapsed time once `timeoutMs` has passed.
 */
export async function pollUntil(
  predicate: () => boolean | Promise<boolean>,
  options: PollOptions = {},
): Promise<void> {
  const timeoutMs = options.timeoutMs ?? 10_000;
  const intervalMs = options.intervalMs ?? 25;
  const started = Date.now();
  const deadline = started + timeoutMs;
  let lastError: unknown;
  while (true) {
    try {
      if (await predicate()) return;
      lastError = undefined;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() >= deadline) {
      const detail = lastError instanceof Error ? `; last error: ${lastError.message}` : '';
      throw new Error(`${options.message ?? 'condition not met'} (gave up after ${Date.now() - started} ms${detail})`, {
        cause: lastError,
      });
    }
    await delay(Math.min(intervalMs, Math.max(0, deadline - Date.now())));
  }
}
