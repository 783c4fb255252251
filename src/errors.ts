/**
 * Errors thrown by redis-pubsub-dict. Every error is a {@link RedisDictError} with a stable
 * {@link RedisDictError.code | code}; match on the code, not on the message.
 *
 * @module
 */

/** Stable error codes. */
export type ErrorCode =
  | 'E_INVALID_KEY'
  | 'E_INVALID_NAMESPACE'
  | 'E_INVALID_OPTION'
  | 'E_INVALID_ARGUMENT'
  | 'E_SERIALIZE'
  | 'E_VALUE_TOO_LARGE'
  | 'E_CORRUPT'
  | 'E_CLOSED'
  | 'E_BACKPRESSURE'
  | 'E_FLUSH'
  | 'E_TIMEOUT'
  | 'E_CLUSTER'
  | 'E_CONNECTION';

/** Base class of every error this library throws. */
export class RedisDictError extends Error {
  /** Stable machine-readable code. */
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A key, namespace, option or argument is invalid. Nothing was written. */
export class InvalidArgumentError extends RedisDictError {
  constructor(code: 'E_INVALID_KEY' | 'E_INVALID_NAMESPACE' | 'E_INVALID_OPTION' | 'E_INVALID_ARGUMENT', message: string) {
    super(code, message);
  }
}

/** A value cannot be stored: it does not round-trip through the codec, or it is too large. Nothing was written. */
export class SerializationError extends RedisDictError {
  /** The key being written, when known. */
  readonly key: string | undefined;

  constructor(code: 'E_SERIALIZE' | 'E_VALUE_TOO_LARGE', message: string, options?: { key?: string; cause?: unknown }) {
    super(code, message, options);
    this.key = options?.key;
  }
}

/** Data stored under a key of the namespace is not a record this library wrote, or cannot be decoded. */
export class CorruptDataError extends RedisDictError {
  /** The dictionary key whose stored data is corrupt. */
  readonly key: string;

  constructor(key: string, reason: string, options?: { cause?: unknown }) {
    super('E_CORRUPT', `Stored data for key \`${key}\` is corrupt or foreign: ${reason}`, options);
    this.key = key;
  }
}

/** The instance was closed; no further calls are accepted. */
export class ClosedError extends RedisDictError {
  constructor(what: string) {
    super('E_CLOSED', `${what} is closed`);
  }
}

/** Too many changes are waiting to be written (`maxPending`). The change was not accepted. */
export class BackpressureError extends RedisDictError {
  /** Number of pending (dirty) keys when the change was refused. */
  readonly pending: number;

  constructor(pending: number, maxPending: number) {
    super('E_BACKPRESSURE', `${pending} changes are waiting to be written, the limit \`maxPending\` is ${maxPending}`);
    this.pending = pending;
  }
}

/** An operation did not complete in time. */
export class TimeoutError extends RedisDictError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('E_TIMEOUT', message, options);
  }
}

/**
 * A Cluster kept redirecting or refusing a command (MOVED, ASK, TRYAGAIN, CLUSTERDOWN, LOADING) until
 * the retry deadline (`retryTimeoutMs`) passed: a failover or a resharding that did not end in time.
 * The last Redis error is the `cause`. A write that fails so was not applied, or was applied once
 * (writes are compare-and-set on stamps, so retrying it is safe).
 */
export class ClusterError extends RedisDictError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('E_CLUSTER', message, options);
  }
}

/**
 * The connection to a node kept dropping or being refused until the retry deadline
 * (`retryTimeoutMs`) passed. The last connection error is the `cause`. A write that fails so may or
 * may not have been applied (retrying it is safe: writes are compare-and-set on stamps).
 */
export class ConnectionError extends RedisDictError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('E_CONNECTION', message, options);
  }
}

/** Keys that a flush could not write. They stay dirty and are retried. */
export class FlushError extends RedisDictError {
  /** Each key that could not be written, with the error Redis gave. */
  readonly failed: readonly { readonly key: string; readonly error: Error }[];

  constructor(failed: readonly { key: string; error: Error }[], message?: string) {
    const keys = failed.slice(0, 5).map((f) => `\`${f.key}\``).join(', ');
    const more = failed.length > 5 ? ` and ${failed.length - 5} more` : '';
    super('E_FLUSH', message ?? `Could not write ${failed.length} key(s): ${keys}${more}; they stay dirty`, { cause: failed[0]?.error });
    this.failed = failed;
  }
}

/** `value` if it is an Error, else an Error with its text (for what a `catch` or a rejection gives). @internal */
export function asError(value: unknown): Error {
  return value instanceof Error ? value : new Error(String(value));
}
