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

/**
 * True when a remote write with `remoteStamp` conflicts with a local change.
 * `since` is the lowest stamp a remote write must exceed to count as concurrent (the moment the key
 * became dirty, or the last stamp of this key known to be in Redis).
 */
export function conflicts(policy: ConflictPolicyName, local: { readonly stamp: Stamp; readonly since: string }, remoteStamp: Stamp): boolean {
  return policy === 'last-writer-wins' ? remoteStamp > local.stamp : remoteStamp > local.since;
}
