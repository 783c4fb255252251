/**
 * Public types of the store layer: the options of one write, and the changes and outcomes of the
 * versioned low-level API ({@link RedisDict.writeVersioned}).
 *
 * @module
 */
import type { FrameSigner } from '../protocol/signing.js';
import type { Stamp } from '../protocol/stamp.js';

/** Options of one write: `set(key, value, options)` and `setMany(entries, options)` of every class. */
export interface SetOptions {
  /**
   * Time to live in ms: the entry expires at the write's time plus this, in Redis (PEXPIREAT) and
   * in every near cache, which stops serving it at that moment without waiting for a message.
   * 0 = no expiry.
   *
   * @defaultValue the dictionary's `defaultTtlMs`
   */
  ttlMs?: number;
}

/** Keys of {@link SetOptions}, for validation. */
export const SET_OPTION_KEYS = ['ttlMs'] as const;

/** One change for {@link RedisDict.writeVersioned}. */
export interface VersionedChange<V> {
  /** Dictionary key (already normalized). */
  readonly key: string;
  /** Stamp of the change. */
  readonly stamp: Stamp;
  /** Write only if the stored stamp is lower than this. Default: {@link VersionedChange.stamp} (last-writer-wins). */
  readonly guard?: Stamp;
  /** True to write a tombstone. */
  readonly deleted: boolean;
  /** The value, when not deleted. */
  readonly value?: V;
  /** The value already encoded by {@link RedisDict.encodeValue}, to avoid encoding it twice. */
  readonly payload?: Uint8Array;
  /** Expiry time of the value (ms since the epoch), fixed when the change was made; none when undefined or `Infinity`. */
  readonly expiresAt?: number | undefined;
}

/**
 * Hears the outcome of the change at `index` of a {@link RedisDict.writeVersioned} call as soon as
 * its batch has replied, while later batches may still be executing.
 */
export type OutcomeListener<V> = (index: number, outcome: WriteOutcome<V>) => void;

/** What Redis holds for a key, as found by a refused compare-and-set. */
export interface StoredState<V> {
  /** Stamp stored ('' when nothing, or foreign data, is stored). */
  readonly stamp: Stamp | '';
  /** True when the stored state is a tombstone or nothing. */
  readonly deleted: boolean;
  /** The stored value when live. */
  readonly value?: V;
  /** Expiry time of the stored value, when it has one. */
  readonly expiresAt?: number | undefined;
}

/** Outcome of one {@link VersionedChange}. */
export type WriteOutcome<V> =
  | { readonly status: 'written'; readonly existed: boolean }
  | { readonly status: 'conflict'; readonly stored: StoredState<V> }
  | { readonly status: 'failed'; readonly error: Error };

/** Where and how a batch is published; `undefined` for a dictionary that does not publish. */
export interface PublishTarget {
  readonly command: 'PUBLISH' | 'SPUBLISH';
  readonly updateChannel: string;
  readonly deleteChannel: string;
  /** Next sequence number of this writer for `group`. */
  nextSeq(group: number): number;
  /** True to put values in update messages. */
  readonly withValues: boolean;
  /** Largest value put in a message; larger ones are announced without their value. */
  readonly maxPublishedValueBytes: number;
  /** Signs the messages (`signingKeys`); `undefined` for unsigned messages. */
  readonly signer?: FrameSigner | undefined;
  /** The channel names as UTF-8 bytes, which the signature covers. */
  readonly updateChannelBytes?: Buffer;
  readonly deleteChannelBytes?: Buffer;
}

/** A validated, encoded change, as a batch of the apply script carries it. @internal */
export interface PreparedChange<V> {
  /** Position of the change in the call's list (outcomes are aligned with it). */
  readonly index: number;
  readonly change: VersionedChange<V>;
  readonly redisKey: string;
  /** The encoded value; `undefined` for a delete. The record is built when its batch is sent. */
  readonly payload: Uint8Array | undefined;
}
