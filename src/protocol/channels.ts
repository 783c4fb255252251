/**
 * Channel names of the wire format (see `docs/protocol.md`): where a namespace's changes are
 * published, classic (`<scope>/update`, `<scope>/delete`) or sharded, one channel per hash slot
 * (`<scope>/changes{<tag>}`, with a tag that hashes to the slot of the keys it announces).
 *
 * @module
 */
import calculateSlot from 'cluster-key-slot';

let slotTags: string[] | undefined;

/**
 * A short string whose hash slot is `slot`, for naming sharded channels that live in the same slot
 * as the keys they announce (SPUBLISH from a script must stay inside the script's slot).
 */
export function slotTag(slot: number): string {
  if (!slotTags) {
    const tags: string[] = new Array(16384);
    let found = 0;
    for (let i = 0; found < 16384; i++) {
      const tag = i.toString(36);
      const s = calculateSlot(tag);
      if (tags[s] === undefined) {
        tags[s] = tag;
        found++;
      }
    }
    slotTags = tags;
  }
  return slotTags[slot]!;
}

/** A channel prefix: printable ASCII without space or braces (a brace would move a sharded channel's hash slot). */
export const CHANNEL_PREFIX = /^[\x21-\x7a\x7c\x7e]{1,128}$/;

/**
 * True when sharded channel names built on `scope` hash to the slot of their `{tag}`, or to the one
 * slot every key of the scope lives in: `scope` has no `{`, or its first `{` opens a non-empty hash
 * tag closed inside it (then every key and every channel hash to that tag).
 */
export function shardableScope(scope: string): boolean {
  const open = scope.indexOf('{');
  if (open < 0) return true;
  const close = scope.indexOf('}', open + 1);
  return close > open + 1;
}

/** What scopes a namespace's channel names (see {@link channelNames}). */
export interface ChannelScope {
  /** The namespace. */
  readonly namespace: string;
  /** The client's `keyPrefix` ('' or absent when none). */
  readonly keyPrefix?: string;
  /** The store's `channelPrefix` ('' or absent when none). */
  readonly channelPrefix?: string;
  /** The database of a standalone client (0 or absent for database 0, and on a Cluster). */
  readonly db?: number;
}

/**
 * The update and delete channel names of a scope as Redis sees them (`docs/protocol.md`):
 * `<keyPrefix><channelPrefix><ns>/update[@<db>]` and `…/delete[@<db>]`, or for sharded pub/sub
 * (`slot` given) the one channel of that slot, `…/changes{<tag>}`, where `<tag>` hashes to `slot`,
 * for both kinds of message (a message says whether it is an update or a delete): a sharded
 * subscription is then one channel per slot, 16,384, instead of two.
 */
export function channelNames(scope: ChannelScope, slot?: number): { update: string; delete: string } {
  const base = `${scope.keyPrefix ?? ''}${scope.channelPrefix ?? ''}${scope.namespace}/`;
  const db = scope.db !== undefined && scope.db !== 0 ? `@${scope.db}` : '';
  if (slot !== undefined) {
    const channel = `${base}changes${db}{${slotTag(slot)}}`;
    return { update: channel, delete: channel };
  }
  return { update: `${base}update${db}`, delete: `${base}delete${db}` };
}
