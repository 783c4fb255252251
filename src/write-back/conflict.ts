/**
 * Conflict policies of the write-back cache.
 *
 * A conflict is a remote write that reaches a key while it holds a local change not yet written
 * (dirty). It is detected by a message, or at flush time when the compare-and-set script finds a
 * stamp in Redis that it must not overwrite. Every local change that a conflict discards or
 * overrides is reported (I3).
 *
 * - `last-writer-wins`: the higher stamp wins. A remote write newer than the local change replaces
 *   it (reported); an older one is ignored, and the flush overwrites it.
 * - `discard-on-remote-update`: the local change is discarded (reported) when a remote write newer
 *   than the moment the key became dirty arrives, whatever its stamp relative to the local change.
 * - a resolver function: called with both sides for the same conflicts as
 *   `discard-on-remote-update`; `'local'` keeps the local change, `'remote'` takes the remote one,
 *   `{ value }` merges. Kept and merged values get a fresh stamp above both sides and are written
 *   by the next flush.
 *
 * @module
 */
import type { ConflictPolicyName, ConflictSide } from '../cache/types.js';
import type { Stamp } from '../protocol/stamp.js';

/** Decides a conflict: keep the local change, take the remote one, or merge into a new value. */
export type ConflictResolver<V> = (local: ConflictSide<V>, remote: ConflictSide<V>, key: string) => 'local' | 'remote' | { value: V };

/** How conflicts are decided. */
export type ConflictPolicy<V> = 'last-writer-wins' | 'discard-on-remote-update' | ConflictResolver<V>;

/** Name of a policy. */
export function policyName(policy: ConflictPolicy<unknown>): ConflictPolicyName {
  return typeof policy === 'function' ? 'custom' : policy;
}

/** What a conflict policy decides about a remote write that reaches a key with a local change. */
export type ConflictDecision<V> =
  /** Not a conflict: the local change stands and the flush writes it. */
  | { readonly kind: 'none' }
  /** A resolver needs the remote value, which its message did not carry: the flush will find it in Redis. */
  | { readonly kind: 'undecided' }
  /** The resolver threw, or returned something other than `'local'`, `'remote'` or `{ value }`: the local change is kept. */
  | { readonly kind: 'failed'; readonly error: Error }
  /** The remote write wins: the local change is discarded. */
  | { readonly kind: 'remote' }
  /** The local change is kept, with a new stamp above the remote write. */
  | { readonly kind: 'local' }
  /** The local change is replaced by the resolver's value, with a new stamp above the remote write. */
  | { readonly kind: 'merged'; readonly value: V };

const NONE = { kind: 'none' } as const;
const UNDECIDED = { kind: 'undecided' } as const;
const REMOTE = { kind: 'remote' } as const;
const LOCAL = { kind: 'local' } as const;

/**
 * Decides a remote write against a local change under `policy`, changing nothing: the caller
 * applies the decision. `local.since` is the lowest stamp a remote write must exceed to count as
 * concurrent (see {@link conflicts}). A resolver is called only for a conflict whose remote value
 * is known; what it throws becomes a `'failed'` decision.
 */
export function decideConflict<V>(
  policy: ConflictPolicy<V>,
  local: { readonly stamp: Stamp; readonly since: string; readonly value: V | undefined; readonly deleted: boolean },
  remote: ConflictSide<V> & { readonly known: boolean },
  key: string,
): ConflictDecision<V> {
  if (!conflicts(policyName(policy as ConflictPolicy<unknown>), local, remote.stamp)) return NONE;
  if (typeof policy !== 'function') return REMOTE;
  // Without the remote value the resolver cannot decide; the flush will find it in Redis.
  if (!remote.known) return UNDECIDED;
  let decision: ReturnType<ConflictResolver<V>>;
  try {
    decision = policy({ value: local.value, deleted: local.deleted, stamp: local.stamp }, { value: remote.value, deleted: remote.deleted, stamp: remote.stamp }, key);
  } catch (error) {
    return { kind: 'failed', error: error as Error };
  }
  if (decision === 'local') return LOCAL;
  if (decision === 'remote') return REMOTE;
  if (typeof decision === 'object' && decision !== null) return { kind: 'merged', value: decision.value };
  return { kind: 'failed', error: new TypeError(`conflict resolver returned ${String(decision)}`) };
}

/**
 * True when a remote write with `remoteStamp` conflicts with a local change.
 * `since` is the lowest stamp a remote write must exceed to count as concurrent (the moment the key
 * became dirty, or the last stamp of this key known to be in Redis).
 */
function conflicts(policy: ConflictPolicyName, local: { readonly stamp: Stamp; readonly since: string }, remoteStamp: Stamp): boolean {
  return policy === 'last-writer-wins' ? remoteStamp > local.stamp : remoteStamp > local.since;
}
