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
  | 'E_ABORTED'
  | 'E_NOPERM'
  | 'E_CLOCK_SKEW'
  | 'E_CONNECTION'
  | 'E_CLUSTER'
  | 'E_LOADER'
  | 'E_READONLY'
  | 'E_OOM';

/** Codes of the `warning` event of a cache manager. */
export type WarningCode = 'E_EVICTION_POLICY';

/** Payload of the `warning` event: a condition that threatens a guarantee without being an error. */
export interface DictWarning {
  /** Stable machine-readable code. */
  readonly code: WarningCode;
  /** Human-readable explanation. */
  readonly message: string;
  /** The node concerned (`host:port`), when the warning is about one server. */
  readonly node?: string;
  /** For `E_EVICTION_POLICY`: the server's `maxmemory-policy`. */
  readonly policy?: string;
}

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
  constructor(code: 'E_INVALID_KEY' | 'E_INVALID_NAMESPACE' | 'E_INVALID_OPTION' | 'E_INVALID_ARGUMENT', message: string, options?: { cause?: unknown }) {
    super(code, message, options);
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
 * A connection failure: the connection to a node kept dropping or being refused until the retry
 * deadline (`retryTimeoutMs`) passed (a write that fails so may or may not have been applied;
 * retrying it is safe, writes are compare-and-set on stamps), or a cache manager's `ready()` met a
 * failure retrying will not fix: the server's TLS certificate does not verify, or the credentials
 * are wrong (an ACL refusal is a {@link PermissionError}). The underlying error is the `cause`.
 */
export class ConnectionError extends RedisDictError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('E_CONNECTION', message, options);
  }
}

/**
 * True for a connection error that retrying will not fix: a TLS certificate that does not verify
 * (Node's certificate error codes), or Redis refusing the credentials or a permission.
 * @internal
 */
export function isPermanentConnectionError(error: Error): boolean {
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string' && (TLS_CERT_ERRORS.has(code) || code.startsWith('ERR_TLS_CERT'))) return true;
  return /NOPERM|NOAUTH|WRONGPASS/.test(error.message);
}

/** Node's codes (OpenSSL's verification results) for a server certificate that does not verify. */
const TLS_CERT_ERRORS = new Set([
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'CERT_UNTRUSTED',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_REVOKED',
  'CERT_SIGNATURE_FAILURE',
  'HOSTNAME_MISMATCH',
]);

/** An operation was given up because its `AbortSignal` was aborted. */
export class AbortedError extends RedisDictError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('E_ABORTED', message, options);
  }
}

/** The loader of `getOrSet` failed (threw or rejected); its error is the `cause`. Nothing was stored. */
export class LoaderError extends RedisDictError {
  /** The key being loaded. */
  readonly key: string;

  constructor(key: string, cause: unknown) {
    const reason = cause instanceof Error ? cause.message : String(cause);
    super('E_LOADER', `The loader of key \`${key}\` failed: ${reason}`, { cause });
    this.key = key;
  }
}

/** Keys that a flush could not write. They stay dirty and are retried. */
export class FlushError extends RedisDictError {
  /** Each key that could not be written, with the error Redis gave. */
  readonly failed: readonly { readonly key: string; readonly error: Error }[];

  /**
   * @param code - `E_FLUSH`, or `E_TIMEOUT` for a flush that did not finish in time (`close()`'s
   *   final flush past `closeTimeoutMs`).
   */
  constructor(failed: readonly { key: string; error: Error }[], message?: string, code: 'E_FLUSH' | 'E_TIMEOUT' = 'E_FLUSH') {
    const keys = failed.slice(0, 5).map((f) => `\`${f.key}\``).join(', ');
    const more = failed.length > 5 ? ` and ${failed.length - 5} more` : '';
    super(code, message ?? `Could not write ${failed.length} key(s): ${keys}${more}; they stay dirty`, { cause: failed[0]?.error });
    this.failed = failed;
  }
}

/**
 * Redis refused a command by ACL (NOPERM): the user lacks a command, a key pattern or a channel
 * pattern. Nothing was written: the apply script checks every permission it needs, publishing
 * included, before its first write. The Redis error is the `cause`.
 */
export class PermissionError extends RedisDictError {
  /** The (first) dictionary key of the refused command. */
  readonly key: string | undefined;
  /** The channel refused, when the refusal named one. */
  readonly channel: string | undefined;

  constructor(message: string, options: { key?: string; channel?: string; cause?: unknown }) {
    super('E_NOPERM', message, { cause: options.cause });
    this.key = options.key;
    this.channel = options.channel;
  }
}

/**
 * Redis refused a write: the server is a read-only replica (`E_READONLY`: the client is connected
 * to a replica, or to a master demoted by a failover), or it is out of memory under a `maxmemory`
 * with the `noeviction` policy (`E_OOM`). Nothing was written. The Redis error is the `cause`. On a
 * Cluster, READONLY is taken for a failover in progress and retried until `retryTimeoutMs`.
 */
export class WriteRefusedError extends RedisDictError {
  /** The (first) dictionary key of the refused command. */
  readonly key: string | undefined;

  constructor(code: 'E_READONLY' | 'E_OOM', message: string, options: { key?: string | undefined; cause?: unknown }) {
    super(code, message, { cause: options.cause });
    this.key = options.key;
  }
}

/**
 * A change was refused because its version stamp is more than `maxDriftMs` ahead of the Redis
 * server's clock: the writer's clock is ahead. Nothing was written for that key.
 */
export class ClockSkewError extends RedisDictError {
  /** The dictionary key of the refused change. */
  readonly key: string;
  /** The stamp refused. */
  readonly stamp: string;
  /** The Redis server's clock (ms since the epoch) when it refused the change. */
  readonly serverTimeMs: number;

  constructor(key: string, stamp: string, stampMs: number, serverTimeMs: number, maxDriftMs: number) {
    super(
      'E_CLOCK_SKEW',
      `The change of key \`${key}\` is stamped ${stampMs - serverTimeMs} ms ahead of the Redis server's clock, more than \`maxDriftMs\` (${maxDriftMs}): this writer's clock is ahead; the change was not written`,
    );
    this.key = key;
    this.stamp = stamp;
    this.serverTimeMs = serverTimeMs;
  }
}

/**
 * Maps an error of a Redis command to a coded error: an ACL refusal (`NOPERM`, or a command a
 * script may not run) to {@link PermissionError}, a call the apply script refused as malformed
 * (`BADARGS`) to `E_INVALID_ARGUMENT`, the client's command timeout to {@link TimeoutError}
 * (`E_TIMEOUT`; a write may still be applied), a dropped or refused connection to
 * {@link ConnectionError} (`E_CONNECTION`), a write refused by a read-only replica or for lack of
 * memory to {@link WriteRefusedError} (`E_READONLY`, `E_OOM`); any other reply of Redis is returned as it is. `key`
 * is the (first) dictionary key of the command, for the message. @internal
 */
export function redisError(error: Error, key: string | undefined, what: string): Error {
  if (error instanceof RedisDictError) return error;
  const text = error.message;
  const about = key === undefined ? '' : ` (key \`${key}\`)`;
  // The client gave up waiting (its commandTimeout): a write may still be applied by Redis later.
  if (/Command timed out/.test(text)) return new TimeoutError(`${what}${about} timed out (the client's commandTimeout): ${text}`, { cause: error });
  if (isConnectionFailure(text)) return new ConnectionError(`${what}${about} failed, no connection to Redis: ${text}`, { cause: error });
  if (text.startsWith('NOPERM') || /^ERR The user executing the script can't/.test(text)) {
    const channel = /channel (\S+)$/.exec(text)?.[1];
    return new PermissionError(`Redis refused ${what}${about} by ACL: ${text}`, { key, channel, cause: error });
  }
  if (text.startsWith('BADARGS')) return new InvalidArgumentError('E_INVALID_ARGUMENT', `Redis refused ${what}${about}: ${text}`, { cause: error });
  if (/^READONLY\b/.test(text)) return new WriteRefusedError('E_READONLY', `Redis refused ${what}${about}: the server is a read-only replica: ${text}`, { key, cause: error });
  if (/^OOM\b/.test(text)) return new WriteRefusedError('E_OOM', `Redis refused ${what}${about}: out of memory (\`maxmemory\` reached, policy \`noeviction\`): ${text}`, { key, cause: error });
  return error;
}

/**
 * The library error for a connection or subscription failure that retrying will not fix (see
 * {@link isPermanentConnectionError}): an ACL refusal is a {@link PermissionError} (`E_NOPERM`),
 * anything else (credentials, TLS) a {@link ConnectionError} (`E_CONNECTION`).
 * @internal
 */
export function permanentConnectionError(error: Error, what: string): RedisDictError {
  if (/NOPERM/.test(error.message)) {
    const channel = /channel (\S+)/.exec(error.message)?.[1];
    return new PermissionError(`${what} by ACL: ${error.message}`, { channel, cause: error });
  }
  return new ConnectionError(`${what}: ${error.message}`, { cause: error });
}

/**
 * True when an error's `message` says the connection failed: dropped, refused, not writeable, or
 * the client's retries or its Cluster routing gave up (not a reply of Redis to the command).
 * @internal
 */
export function isConnectionFailure(message: string): boolean {
  return /Connection is closed|Stream isn't writeable|max retries per request|Too many Cluster redirections|Failed to refresh slots cache|None of startup nodes|Cluster is disconnected|E(CONNREFUSED|CONNRESET|PIPE|TIMEDOUT|HOSTUNREACH|NETUNREACH)/.test(message);
}

/** `value` if it is an Error, else an Error with its text (for what a `catch` or a rejection gives). @internal */
export function asError(value: unknown): Error {
  return value instanceof Error ? value : new Error(String(value));
}
