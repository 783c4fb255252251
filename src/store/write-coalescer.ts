/**
 * Write coalescing: concurrent write calls to one slot group share script calls, the way a
 * write-back flush batches, while each call still settles with its own outcomes.
 *
 * Per slot group (a hash slot on a Cluster, everything on a standalone server) at most
 * {@link MAX_SENDS_PER_GROUP} sends are in flight. A call whose group is idle is sent at once, in
 * the caller's tick (a lone write waits for nothing). A call that arrives while its group is busy
 * waits in the group's pending batches; when the group's send in flight has replied, everything
 * pending for it goes out in one send, each batch one script call (pipelined per node). So under
 * load a group alternates between one batch on the wire and one being gathered, and the number of
 * script calls falls with the number of calls in flight.
 *
 * Rules that keep each write's meaning:
 * - A batch holds each key once (the apply script writes each key once): a change joins the first
 *   pending batch after the last one holding its key, so two writes of one key by this process go
 *   out in the order they were issued, in separate script calls.
 * - A batch holds at most `maxKeys` changes and about `maxBytes` bytes.
 * - Each call hears the outcome of each of its own changes (written, existed, conflict, refused for
 *   clock skew, failed), as its batch replies.
 * - A batch refused as a whole for a reason that may concern one call only (an ACL key pattern
 *   refuses the whole script call; a malformed argument) is resent as one batch per call, so that
 *   the refusal reaches the call it concerns and no other. Nothing was written by the refused call
 *   (the script checks everything before its first write).
 * - Every call has a deadline, fixed when it is made: a change still waiting to be sent at its
 *   call's deadline fails with `E_TIMEOUT` unsent; a send's deadline is the earliest of its calls'.
 *
 * The module knows nothing of Redis: its host (the dictionary) says how to group, size and send.
 *
 * @module
 */
import { TimeoutError } from '../errors.js';

/**
 * At most this many sends of one slot group in flight. Measured (issue #17, 10,000 set()s with 100
 * in flight, 5 interleaved rounds on a loaded 2-core host): 1, 2, and 1 with the first send
 * deferred to the end of the tick (so that writes of the same tick join it) were within the noise
 * of each other (medians 34k, 33k, 39k keys/s; each round's spread ±50 %). 1 is kept: it adds
 * nothing to a lone write, and it sends the largest batches.
 */
export const MAX_SENDS_PER_GROUP = 1;

/** A batch as the host sends it: one script call of changes of one slot group. */
export interface CoalescedBatch<T> {
  readonly slot: number;
  readonly items: readonly T[];
}

/** What a {@link WriteCoalescer} needs from the dictionary it serves. */
export interface CoalescerHost<T, O> {
  /** Most changes per batch. */
  readonly maxKeys: number;
  /** Bytes of changes after which a batch is full. */
  readonly maxBytes: number;
  /** The dictionary key of a change (a batch holds each key once). */
  keyOf(item: T): string;
  /** The slot group of a change. */
  slotOf(item: T): number;
  /** The size of a change in a batch, in bytes. */
  sizeOf(item: T): number;
  /**
   * Sends `batches` (one script call each, in order) within `timeoutMs`, and calls `onBatch` once
   * per batch as soon as its outcomes (aligned with its items) are known, or with the error that
   * failed it as a whole. Resolves when every batch has been reported; never rejects.
   */
  send(batches: readonly CoalescedBatch<T>[], timeoutMs: number, onBatch: (index: number, result: readonly O[] | Error) => void): Promise<void>;
  /** The outcome of a change of a batch that failed as a whole with `error` (`item`: the call's first change in it). */
  failure(error: Error, item: T): O;
  /** True when a batch's failure as a whole may concern some of its calls only: it is then resent one batch per call. */
  splittable(error: Error): boolean;
}

/** Hears the outcome at `index` of a call as soon as its batch has replied. */
export type CallListener<O> = (index: number, outcome: O) => void;

/** One write call: its outcomes, aligned with its changes, and how to settle it. */
interface Call<O> {
  readonly outcomes: O[];
  remaining: number;
  readonly deadline: number;
  readonly onOutcome: CallListener<O> | undefined;
  listenerError: { error: unknown } | undefined;
  resolve(outcomes: O[]): void;
  reject(error: unknown): void;
}

/** A change in a batch, with the call it belongs to and its position there. */
interface Entry<T, O> {
  readonly item: T;
  readonly call: Call<O>;
  readonly index: number;
}

/** A batch being gathered or sent. */
interface Batch<T, O> {
  readonly slot: number;
  readonly group: Group<T, O>;
  /** Its index in its group's `pending` while it waits (-1 once sent). */
  readonly position: number;
  readonly entries: Entry<T, O>[];
  /** The changes of `entries`, in the same order (what the host sends). */
  readonly items: T[];
  bytes: number;
}

/** The state of one slot group. */
interface Group<T, O> {
  readonly slot: number;
  /** Sends of the group in flight. */
  inFlight: number;
  /** Batches waiting to be sent, in order. */
  pending: Batch<T, O>[];
  /**
   * Index in `pending` of the first batch that may still take a change: a batch that once refused
   * one (full) is passed over for good, so that placing n changes costs O(n), not O(n × batches).
   */
  firstOpen: number;
  /** Per key, the last pending batch holding it. */
  readonly lastBatchOf: Map<string, Batch<T, O>>;
  /**
   * The call being placed in this group while it was idle with nothing pending: its changes are
   * sent before `write()` returns, so no later call can join their batches and they need no entry
   * in `lastBatchOf`.
   */
  direct: Call<O> | undefined;
}

/** Concurrent write calls of one dictionary, coalesced per slot group (see the module's doc). */
export class WriteCoalescer<T, O> {
  readonly #host: CoalescerHost<T, O>;
  readonly #groups = new Map<number, Group<T, O>>();
  /** Groups whose send in flight has replied and that have pending batches. */
  readonly #ready = new Set<Group<T, O>>();
  #pumpScheduled = false;

  constructor(host: CoalescerHost<T, O>) {
    this.#host = host;
  }

  /**
   * Writes `items` (distinct keys) and resolves with their outcomes, aligned with them; rejects
   * with the first error `onOutcome` threw, once every outcome is known.
   */
  write(items: readonly T[], timeoutMs: number, onOutcome?: CallListener<O>): Promise<O[]> {
    const host = this.#host;
    return new Promise<O[]>((resolve, reject) => {
      const call: Call<O> = { outcomes: new Array<O>(items.length), remaining: items.length, deadline: Date.now() + timeoutMs, onOutcome, listenerError: undefined, resolve, reject };
      if (items.length === 0) {
        resolve(call.outcomes);
        return;
      }
      const touched: Group<T, O>[] = [];
      for (let index = 0; index < items.length; index++) {
        const item = items[index]!;
        const slot = host.slotOf(item);
        let group = this.#groups.get(slot);
        if (group === undefined) {
          group = { slot, inFlight: 0, pending: [], firstOpen: 0, lastBatchOf: new Map(), direct: undefined };
          this.#groups.set(slot, group);
        }
        if (group.pending.length === 0) {
          touched.push(group);
          if (group.inFlight < MAX_SENDS_PER_GROUP) group.direct = call;
        }
        this.#place(group, { item, call, index });
      }
      // The groups that are idle are sent now, together (one send: pipelined per node).
      const idle = touched.filter((group) => group.inFlight < MAX_SENDS_PER_GROUP);
      if (idle.length > 0) this.#dispatch(idle);
    });
  }

  /** Puts an entry in the first pending batch of its group that may take it (after the last one holding its key). */
  #place(group: Group<T, O>, entry: Entry<T, O>): void {
    const host = this.#host;
    const key = host.keyOf(entry.item);
    const size = host.sizeOf(entry.item);
    const { pending } = group;
    const direct = group.direct === entry.call;
    const after = direct ? undefined : group.lastBatchOf.get(key);
    let start = group.firstOpen;
    if (after !== undefined) start = Math.max(start, after.position + 1);
    let batch: Batch<T, O> | undefined;
    for (let b = start; b < pending.length; b++) {
      const candidate = pending[b]!;
      if (candidate.entries.length < host.maxKeys && (candidate.entries.length === 0 || candidate.bytes + size <= host.maxBytes)) {
        batch = candidate;
        break;
      }
      if (b === group.firstOpen) group.firstOpen = b + 1;
    }
    if (batch === undefined) {
      batch = { slot: group.slot, group, position: pending.length, entries: [], items: [], bytes: 0 };
      pending.push(batch);
    }
    batch.entries.push(entry);
    batch.items.push(entry.item);
    batch.bytes += size;
    if (!direct) group.lastBatchOf.set(key, batch);
  }

  /** Sends everything pending in `groups`, as one send. */
  #dispatch(groups: readonly Group<T, O>[]): void {
    const batches: Batch<T, O>[] = [];
    const now = Date.now();
    let deadline = Infinity;
    for (const group of groups) {
      if (group.pending.length === 0) continue;
      for (const batch of group.pending) {
        let expired = false;
        let earliest = Infinity;
        for (const { call } of batch.entries) {
          if (call.deadline <= now) expired = true;
          else if (call.deadline < earliest) earliest = call.deadline;
        }
        if (!expired) {
          deadline = Math.min(deadline, earliest);
          batches.push(batch);
          continue;
        }
        // A change whose call's deadline passed while it waited fails unsent.
        const live = batch.entries.filter((entry) => {
          if (entry.call.deadline > now) return true;
          this.#settle(entry, this.#host.failure(new TimeoutError('The write waited for the writes before it past its deadline (`retryTimeoutMs`); it was not sent'), entry.item));
          return false;
        });
        if (live.length === 0) continue;
        deadline = Math.min(deadline, earliest);
        batches.push({ slot: batch.slot, group, position: -1, entries: live, items: live.map((entry) => entry.item), bytes: batch.bytes });
      }
      group.pending = [];
      group.firstOpen = 0;
      group.direct = undefined;
      if (group.lastBatchOf.size > 0) group.lastBatchOf.clear();
    }
    this.#send(batches, Math.max(0, deadline - now));
  }

  /** Sends `batches` (their groups count one more send in flight until every batch of theirs has replied). */
  #send(batches: readonly Batch<T, O>[], timeoutMs: number): void {
    if (batches.length === 0) return;
    const host = this.#host;
    const left = new Map<Group<T, O>, number>();
    for (const { group } of batches) {
      const count = left.get(group);
      if (count === undefined) group.inFlight++;
      left.set(group, (count ?? 0) + 1);
    }
    const onBatch = (b: number, result: readonly O[] | Error): void => {
      const batch = batches[b]!;
      const { group } = batch;
      if (result instanceof Error) this.#failBatch(batch, result);
      else batch.entries.forEach((entry, j) => this.#settle(entry, result[j]!));
      const count = left.get(group)! - 1;
      left.set(group, count);
      if (count === 0) {
        group.inFlight--;
        if (group.pending.length > 0) this.#schedule(group);
        else if (group.inFlight === 0 && this.#groups.get(group.slot) === group) this.#groups.delete(group.slot);
      }
    };
    void host.send(batches, timeoutMs, onBatch);
  }

  /** A batch failed as a whole: resent one batch per call when it may concern some calls only, else every change failed. */
  #failBatch(batch: Batch<T, O>, error: Error): void {
    const byCall = new Map<Call<O>, Entry<T, O>[]>();
    for (const entry of batch.entries) {
      const list = byCall.get(entry.call);
      if (list) list.push(entry);
      else byCall.set(entry.call, [entry]);
    }
    if (byCall.size > 1 && this.#host.splittable(error)) {
      // The resend is sent before this batch's send is counted as done: the group stays busy, so
      // nothing sent later overtakes it.
      const parts = [...byCall.values()].map((entries) => ({ slot: batch.slot, group: batch.group, position: -1, entries, items: entries.map((entry) => entry.item), bytes: 0 }));
      const deadline = Math.min(...parts.map((part) => part.entries[0]!.call.deadline));
      this.#send(parts, Math.max(0, deadline - Date.now()));
      return;
    }
    for (const entries of byCall.values()) {
      const outcome = this.#host.failure(error, entries[0]!.item);
      for (const entry of entries) this.#settle(entry, outcome);
    }
  }

  #settle(entry: Entry<T, O>, outcome: O): void {
    const { call, index } = entry;
    call.outcomes[index] = outcome;
    if (call.onOutcome !== undefined) {
      try {
        call.onOutcome(index, outcome);
      } catch (error) {
        call.listenerError ??= { error };
      }
    }
    if (--call.remaining === 0) {
      if (call.listenerError) call.reject(call.listenerError.error);
      else call.resolve(call.outcomes);
    }
  }

  /** Sends the pending batches of `group` on a microtask, with those of other groups ready by then. */
  #schedule(group: Group<T, O>): void {
    this.#ready.add(group);
    if (this.#pumpScheduled) return;
    this.#pumpScheduled = true;
    queueMicrotask(() => {
      this.#pumpScheduled = false;
      const groups = [...this.#ready].filter((g) => g.inFlight < MAX_SENDS_PER_GROUP && g.pending.length > 0);
      this.#ready.clear();
      if (groups.length > 0) this.#dispatch(groups);
    });
  }
}
