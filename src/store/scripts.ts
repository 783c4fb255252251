/**
 * The Lua scripts and the layout of their calls, in one place: the apply script (below), the stamps
 * script, the lock release; {@link ApplyUnit} frames one apply call (its arguments in the order
 * the script reads them), {@link applyOutcome} reads its reply, {@link stampsCall} and
 * {@link stampOfReply} do the same for the stamps script.
 *
 * The one script that changes entries: a batch of compare-and-set writes (values or tombstones)
 * and the PUBLISH of what was applied, in one atomic step. See `docs/protocol.md`.
 *
 * KEYS: the Redis keys of the batch (all in one hash slot on a Cluster).
 * ARGV[1] tombstone TTL (ms); ARGV[2] publish command ('' = none, 'PUBLISH' or 'SPUBLISH');
 * ARGV[3] update channel; ARGV[4] delete channel; ARGV[5] update message header ('' when the batch
 * has no value write); ARGV[6] delete message header ('' when it has no delete); ARGV[7] the
 * update message entries of the batch, concatenated in key order; ARGV[8] the delete message
 * entries; ARGV[9] the byte length of each key's entry, 4 bytes big-endian per key ('' when nothing
 * is published); ARGV[10] '1' when every key has a guard argument, '' when none has; ARGV[11] '1'
 * when every change writes a value (no tombstone), else ''; ARGV[12] the dictionary's `maxDriftMs`.
 * Then per key, in key order, its change (ARGV[12 + i]): the record to store (`v` + stamp +
 * payload, or `x` + stamp + 16-digit expiry time + payload, whose key then expires at that time by
 * PEXPIREAT) or `t` + stamp for a tombstone. Then, only when ARGV[10] is '1', per key its guard
 * (ARGV[12 + n + i]; '' = the change's own stamp).
 *
 * Before its first write the script validates every argument (a malformed call is refused with an
 * error starting `BADARGS`), reads the server's clock (`TIME`) and checks with
 * `redis.acl_check_cmd` every command it may run after its first write, publishing included (a
 * refusal is an error starting `NOPERM`): a change that cannot be published is not written. (The
 * first write of the fast path, MSETNX, is checked by Redis as it runs: refused, it writes nothing
 * and fails the call; the checks of the general path's commands are skipped when the fast path
 * writes, which saves about a quarter of the script's time on a one-key write.) A change stamped more than
 * `maxDriftMs` ahead of the server's clock is refused (reply `{3, serverMs}` for its key); a stored
 * stamp that far ahead counts as no stamp.
 *
 * With `signingKeys`, ARGV[5] and ARGV[6] (when not '') start with the message's two 23-byte
 * signature tags, 'all applied' and 'partly refused', before the header: the script appends one,
 * and publishes a partly refused signed message whole (see `publish` and `src/protocol/signing.ts`).
 *
 * Each change is its own argument: the client frames the whole call in one buffer (resp.ts), so an
 * argument costs it a header only, and Redis makes each one a Lua string in C, which is cheaper
 * than cutting a concatenation apart in Lua. The message entries are published as they are when
 * every change was applied (the common case) and cut out otherwise.
 *
 * An entry is written when the stored stamp (a record's, a tombstone's, or none for no data,
 * foreign data or a malformed stamp) is lower than its guard; the guard is the new stamp under
 * last-writer-wins, or the stamp of the moment a key became dirty under discard-on-remote-update.
 * Reply per key: 1 (written, a live value was there), 2 (written, nothing live was there), or
 * `{storedStamp, storedRecord|nil}`, or `{3, serverMs}` (stamped too far ahead); or the single
 * integer 2 when every key was new (below). Each
 * message header present is published, with the applied entries (possibly none, so that
 * per-origin sequence numbers stay contiguous).
 *
 * Fast path: a batch of value writes whose keys all hold nothing (no value, no tombstone) is
 * written by one `MSETNX`, which writes all or nothing; only when some key exists does the script
 * read the stored stamps. Inserting new keys then costs about one `MSET`, not `MGET` plus `MSET`.
 *
 * @module
 */
import { createHash } from 'node:crypto';
import { ClockSkewError, asError } from '../errors.js';
import { arrayHeader, encodeHeader, entryLength, type MessageType, writeEntry } from '../protocol/messages.js';
import { changeHeaderLength, splitRecord, writeChange } from '../protocol/record.js';
import { parseStamp, type Stamp } from '../protocol/stamp.js';
import { type FrameArg, FramedCommand, argLength, bulkLength, frameLength, writeArg, writeBulkHeader, writeCrlf, writeFrameStart, writePrefixedKey } from './resp.js';
import type { Commands } from './topology.js';
import type { PreparedChange, PublishTarget, VersionedChange, WriteOutcome } from './types.js';

export const APPLY_LUA = `
local function valid(s) return #s == 34 and not string.find(s, '[^0-9a-f]') end
local function refuse(why) return redis.error_reply('BADARGS apply script: ' .. why) end
local n = #KEYS
local ttl = tonumber(ARGV[1])
local guarded = ARGV[10] ~= ''
local function len4(s, i)
  local b1, b2, b3, b4 = string.byte(s, i * 4 - 3, i * 4)
  return ((b1 * 256 + b2) * 256 + b3) * 256 + b4
end
-- Every argument is checked before the first write: a malformed call changes nothing.
if n < 1 then return refuse('no key') end
if #ARGV ~= 12 + n + (guarded and n or 0) then return refuse('expected ' .. (12 + n) .. ' arguments (' .. (12 + 2 * n) .. ' with guards), got ' .. #ARGV) end
if not ttl or ttl < 1 or ttl ~= math.floor(ttl) then return refuse('tombstone TTL is not a positive integer') end
local maxDrift = tonumber(ARGV[12])
if not maxDrift or maxDrift < 0 or maxDrift ~= math.floor(maxDrift) then return refuse('max drift is not a non-negative integer') end
local cmd = ARGV[2]
if cmd ~= '' and cmd ~= 'PUBLISH' and cmd ~= 'SPUBLISH' then return refuse('unknown publish command') end
if (ARGV[10] ~= '' and ARGV[10] ~= '1') or (ARGV[11] ~= '' and ARGV[11] ~= '1') then return refuse('flags must be empty or 1') end
-- The server's clock bounds the stamps: a change stamped more than maxDrift ms ahead of it is
-- refused (reply {3, server ms}), and a stored stamp that far ahead counts as no stamp. A stamp is
-- past the horizon when it is at or above the first stamp of the next millisecond, hz ('g', above
-- every stamp, when that millisecond is beyond the 48-bit range).
local now = redis.pcall('TIME')
if now.err then return redis.error_reply('NOPERM apply script: the user may not run TIME') end
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local hz = 'g'
if now + maxDrift + 1 < 281474976710656 then
  local x, digits = now + maxDrift + 1, {}
  for d = 12, 1, -1 do
    local r = x % 16
    digits[d] = string.sub('0123456789abcdef', r + 1, r + 1)
    x = math.floor(x / 16)
  end
  hz = table.concat(digits) .. string.rep('0', 22)
end
local hzv, hzt = 'v' .. hz, 't' .. hz
-- The change of key i is ARGV[12 + i]; its guard, when guarded, ARGV[12 + n + i]. Each is
-- checked in place (one anchored pattern, no substring).
local STAMP = '^' .. string.rep('[0-9a-f]', 34)
local EXPIRY = '^' .. string.rep('%d', 16)
local changes, skewed = {}, {}
local nv, nt, lv, lt, nskewed, nx = 0, 0, 0, 0, 0, 0
local publishing = cmd ~= ''
local lens = ARGV[9]
if publishing then
  if #lens ~= 4 * n then return refuse('entry lengths must be 4 bytes per key') end
else
  for a = 3, 9 do if ARGV[a] ~= '' then return refuse('message argument ' .. a .. ' without a publish command') end end
end
for i = 1, n do
  local c = ARGV[12 + i]
  local kind = string.byte(c, 1)
  local far
  if kind == 118 and #c >= 35 then
    far = c >= hzv
  elseif kind == 116 and #c == 35 then
    far = c >= hzt
  elseif kind == 120 and #c >= 51 and string.find(c, EXPIRY, 36) then
    -- An expiring record: 'x', the stamp, 16 digits of expiry time, the payload.
    far = string.sub(c, 2, 35) >= hz
    nx = nx + 1
  end
  if far == nil or not string.find(c, STAMP, 2) then
    return refuse('change ' .. i .. ' is not a record or a tombstone with a valid stamp')
  end
  if guarded then
    local g = ARGV[12 + n + i]
    if g ~= '' and not ((#g == 34 or (#g == 35 and string.byte(g, 35) == 103)) and string.find(g, STAMP)) then
      return refuse('guard ' .. i .. ' is not a stamp')
    end
  end
  local len = 0
  if publishing then
    len = len4(lens, i)
    if len < 1 then return refuse('entry ' .. i .. ' is empty') end
  end
  if kind ~= 116 then nv, lv = nv + 1, lv + len else nt, lt = nt + 1, lt + len end
  if far then
    skewed[i] = true
    nskewed = nskewed + 1
  end
  changes[i] = c
end
if ARGV[11] == '1' and nt > 0 then return refuse('a tombstone in a values-only batch') end
if publishing then
  if ARGV[3] == '' or (nt > 0 and ARGV[4] == '') then return refuse('a channel is missing') end
  if (nv > 0) ~= (ARGV[5] ~= '') or (nt > 0) ~= (ARGV[6] ~= '') then return refuse('message headers do not match the changes') end
  if lv ~= #ARGV[7] or lt ~= #ARGV[8] then return refuse('entry lengths do not add up to the message entries') end
end
-- Permissions, also checked before the first write: a change that cannot be published is not
-- written. The keys themselves were checked by Redis against the caller's key patterns. The
-- publishing (and the expiry of the fast path) are checked first; every other command of the
-- general path just before it (below): on the fast path the first write, MSETNX, is checked by
-- Redis as it runs, and refused it writes nothing and fails the call.
local k1 = KEYS[1]
-- redis.acl_check_cmd exists since Redis 7.0; without it, ACL refusals surface as they happen.
local allowed = redis.acl_check_cmd or function() return true end
local function refuseCmd(name) return redis.error_reply('NOPERM apply script: the user may not run ' .. name .. ' on key ' .. k1) end
if publishing then
  if nv > 0 and not allowed(cmd, ARGV[3], 'm') then return redis.error_reply('NOPERM apply script: the user may not ' .. cmd .. ' to channel ' .. ARGV[3]) end
  if nt > 0 and not allowed(cmd, ARGV[4], 'm') then return redis.error_reply('NOPERM apply script: the user may not ' .. cmd .. ' to channel ' .. ARGV[4]) end
end
if nx > 0 and not allowed('PEXPIREAT', k1, '1') then return refuseCmd('PEXPIREAT') end
-- An expiring record (tag x) sets the key's expiry; Redis refuses leading zeros in integers.
local function expire(key, change)
  if string.byte(change, 1) == 120 then
    redis.call('PEXPIREAT', key, string.match(string.sub(change, 36, 51), '^0*(%d+)$'))
  end
end
local function arr(c)
  if c < 16 then return string.char(144 + c) end
  if c < 65536 then return string.char(220, math.floor(c / 256), c % 256) end
  return string.char(221, math.floor(c / 16777216) % 256, math.floor(c / 65536) % 256, math.floor(c / 256) % 256, c % 256)
end
-- Publishes header .. arr(c) .. entries. A signed header argument (it starts with a bin8, 0xc4)
-- holds the message's two 23-byte tags, then the header: the first tag is appended when every
-- entry of the message was applied, the second when some were refused.
local function publish(channel, head, c, entries, all)
  if string.byte(head, 1) == 196 then
    local tag = all and string.sub(head, 1, 23) or string.sub(head, 24, 46)
    redis.call(ARGV[2], channel, string.sub(head, 47) .. arr(c) .. entries .. tag)
  else
    redis.call(ARGV[2], channel, head .. arr(c) .. entries)
  end
end
if ARGV[11] ~= '' and nskewed == 0 then
  local kv = {}
  for i = 1, n do
    kv[2 * i - 1] = KEYS[i]
    kv[2 * i] = changes[i]
  end
  if redis.call('MSETNX', unpack(kv)) == 1 then
    for i = 1, n do expire(KEYS[i], changes[i]) end
    if publishing then publish(ARGV[3], ARGV[5], n, ARGV[7], true) end
    return 2
  end
end
-- The general path's commands, checked before its first write.
local need = { { 'MGET', k1 }, { 'EXISTS', k1 }, { 'HGET', k1, 's' } }
if nv > 0 then need[#need + 1] = { 'MSET', k1, 'v' } end
if nt > 0 then
  need[#need + 1] = { 'DEL', k1 }
  need[#need + 1] = { 'HSET', k1, 's', 'v' }
  need[#need + 1] = { 'PEXPIRE', k1, '1' }
end
for j = 1, #need do
  if not allowed(unpack(need[j])) then return refuseCmd(need[j][1]) end
end
-- One MGET reads every live record; tombstones (hashes) read as nil, and are looked up only when
-- EXISTS says some of the nil keys exist. A batch costs a handful of commands, not two per key.
local values = redis.call('MGET', unpack(KEYS))
local stored, missing = {}, {}
for i = 1, n do
  local v = values[i]
  if v then
    local tag = string.byte(v, 1)
    if (tag == 118 or tag == 120) and #v >= 35 then
      local s = string.sub(v, 2, 35)
      if valid(s) and s < hz then stored[i] = s end
    end
  else
    missing[#missing + 1] = i
  end
end
if #missing > 0 then
  local names = {}
  for j = 1, #missing do names[j] = KEYS[missing[j]] end
  if redis.call('EXISTS', unpack(names)) > 0 then
    for j = 1, #missing do
      local s = redis.pcall('HGET', KEYS[missing[j]], 's')
      if type(s) == 'string' and valid(s) and s < hz then stored[missing[j]] = s end
    end
  end
end
local result, sets, dels, applied = {}, {}, {}, {}
local count = 0
for i = 1, n do
  local change = changes[i]
  local cur = stored[i]
  local ok = cur == nil
  if not ok then
    local guard = guarded and ARGV[12 + n + i] or ''
    if guard == '' then guard = string.sub(change, 2, 35) end
    ok = cur < guard
  end
  if skewed[i] then
    result[i] = { 3, now }
  elseif ok then
    if string.byte(change, 1) == 116 then
      dels[#dels + 1] = i
    else
      sets[#sets + 1] = KEYS[i]
      sets[#sets + 1] = change
    end
    applied[i] = true
    count = count + 1
    result[i] = values[i] and 1 or 2
  else
    result[i] = { cur, values[i] or false }
  end
end
if #sets > 0 then
  redis.call('MSET', unpack(sets))
  for j = 2, #sets, 2 do expire(sets[j - 1], sets[j]) end
end
for j = 1, #dels do
  local key = KEYS[dels[j]]
  redis.call('DEL', key)
  redis.call('HSET', key, 's', string.sub(changes[dels[j]], 2, 35))
  redis.call('PEXPIRE', key, ttl)
end
if ARGV[2] ~= '' then
  local upd, del = ARGV[7], ARGV[8]
  local nupd, ndel = #sets / 2, #dels
  local uall, dall = true, true
  if count < n and (string.byte(ARGV[5], 1) == 196 or string.byte(ARGV[6], 1) == 196) then
    -- Signed and some changes refused: the tag covers every entry, so each message goes whole,
    -- flagged partial when some of its own changes were refused (receivers then only drop keys).
    local tu, td = 0, 0
    for i = 1, n do
      if string.byte(changes[i], 1) == 116 then td = td + 1 else tu = tu + 1 end
    end
    uall, dall = nupd == tu, ndel == td
    nupd, ndel = tu, td
  elseif count < n then
    -- Some changes were refused: keep the entries of the applied ones only.
    local lens, u, d, uo, dof = ARGV[9], {}, {}, 0, 0
    for i = 1, n do
      local len = len4(lens, i)
      if string.byte(changes[i], 1) == 116 then
        if applied[i] then d[#d + 1] = string.sub(del, dof + 1, dof + len) end
        dof = dof + len
      else
        if applied[i] then u[#u + 1] = string.sub(upd, uo + 1, uo + len) end
        uo = uo + len
      end
    end
    upd, del = table.concat(u), table.concat(d)
  end
  if ARGV[5] ~= '' then publish(ARGV[3], ARGV[5], nupd, upd, uall) end
  if ARGV[6] ~= '' then publish(ARGV[4], ARGV[6], ndel, del, dall) end
end
return result
`;

/** SHA1 of {@link APPLY_LUA}, for EVALSHA. */
export const APPLY_SHA = createHash('sha1').update(APPLY_LUA).digest('hex');

/**
 * Reads the stamps of keys (used by resync): per key the record's stamp, `t` + the tombstone's
 * stamp, `''` for nothing, or `?` for foreign data of any Redis type (a string that is not a
 * record, a hash that is not a tombstone, a list, a set...).
 */
const STAMPS_LUA = `
local function valid(s) return #s == 34 and not string.find(s, '[^0-9a-f]') end
local out = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local head = redis.pcall('GETRANGE', key, 0, 34)
  local stamp = ''
  if type(head) == 'table' then
    -- Not a string: a tombstone (a hash whose s is a stamp), or data of another type, foreign.
    local s = redis.pcall('HGET', key, 's')
    if type(s) == 'string' and valid(s) then stamp = 't' .. s else stamp = '?' end
  elseif #head == 35 and (string.byte(head, 1) == 118 or string.byte(head, 1) == 120) and valid(string.sub(head, 2)) then
    stamp = string.sub(head, 2)
  elseif #head > 0 then
    stamp = '?'
  end
  out[i] = stamp
end
return out
`;

/** SHA1 of {@link STAMPS_LUA}. */
const STAMPS_SHA = createHash('sha1').update(STAMPS_LUA).digest('hex');

const EMPTY = Buffer.alloc(0);
/** Bytes of changes after which a batch is split, so that script arguments and messages stay small. */
export const MAX_BATCH_BYTES = 1 << 20;

/** The size of a change in a script call, in bytes (what {@link MAX_BATCH_BYTES} bounds). */
export function changeSize<V>(item: PreparedChange<V>): number {
  return (item.payload?.length ?? 0) + changeHeaderLength(expiryOfChange(item.change)) + item.change.key.length;
}

/** What {@link applyOutcome} needs of the dictionary: its clock and its decoder. */
export interface OutcomeContext<V> {
  readonly maxDriftMs: number;
  observe(stamp: string): void;
  decodeValue(key: string, payload: Uint8Array): V;
}

/**
 * The outcome of one change from its entry in the apply script's reply (see {@link APPLY_LUA}):
 * 1 or 2 written, `{3, serverMs}` refused for clock skew, `{storedStamp, storedRecord|nil}` refused
 * because Redis holds a stamp at or above the guard. Observes the stored stamp.
 */
export function applyOutcome<V>(change: VersionedChange<V>, reply: unknown, context: OutcomeContext<V>): WriteOutcome<V> {
  const { key } = change;
  if (reply === 1) return WRITTEN_OVER_VALUE;
  if (reply === 2) return WRITTEN_NEW;
  if (!Array.isArray(reply)) return { status: 'failed', error: new Error(`Unexpected script reply for key \`${key}\``) };
  if (reply[0] === 3 && typeof reply[1] === 'number') {
    // Refused: the change's stamp is more than maxDriftMs ahead of the server's clock.
    return { status: 'failed', error: new ClockSkewError(key, change.stamp, parseStamp(change.stamp).ms, reply[1], context.maxDriftMs) };
  }
  const stampRaw: unknown = reply[0];
  const stamp = Buffer.isBuffer(stampRaw) ? stampRaw.toString('latin1') : String(stampRaw ?? '');
  if (stamp !== '') context.observe(stamp);
  // Redis holds this very change (stamps are unique per writer): an earlier attempt of the same
  // call (resent after a dropped connection or a failover), or of an earlier flush, was applied.
  // Whether a value existed before it is not known any more: reported as not.
  if (stamp === change.stamp) return WRITTEN_NEW;
  const raw: unknown = reply[1];
  if (!Buffer.isBuffer(raw)) return { status: 'conflict', stored: { stamp, deleted: true } };
  try {
    const { payload, expiresAt } = splitRecord(key, raw);
    const value = context.decodeValue(key, payload);
    return { status: 'conflict', stored: expiresAt === undefined ? { stamp, deleted: false, value } : { stamp, deleted: false, value, expiresAt } };
  } catch (error) {
    // A newer record whose value cannot be decoded: this key fails, the rest of the batch stands.
    return { status: 'failed', error: asError(error) };
  }
}

/** Deletes a lock (KEYS[1]) only if it still holds the caller's token (ARGV[1]). */
export const RELEASE_LOCK_LUA = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/** Outcome of a change written over a live value (shared: outcomes are read-only). */
const WRITTEN_OVER_VALUE = { status: 'written', existed: true } as const;
/** Outcome of a change written where no live value was. */
export const WRITTEN_NEW = { status: 'written', existed: false } as const;

/**
 * One call of the apply script: a batch of one slot. It is built on first use, right before it is
 * sent, so that message sequence numbers are taken in the order the calls are sent and a large
 * flush is encoded while the server executes the batches already sent. The call is framed here,
 * in one buffer (see resp.ts), and sent as a {@link FramedCommand}.
 *
 * Exported for the protocol conformance vectors (`scripts/protocol-vectors.ts`), which take the
 * script arguments from it. @internal
 */
export class ApplyUnit<V> {
  readonly weight: number;
  private built: BuiltBatch | undefined;

  constructor(
    readonly slot: number,
    readonly part: readonly PreparedChange<V>[],
    private readonly target: PublishTarget | undefined,
    private readonly tombstoneTtlMs: number,
    private readonly maxDriftMs: number,
    private readonly origin: string,
    /** The client's own `keyPrefix` (ioredis adds it to the keys of the commands it frames; so do we). */
    private readonly keyPrefix: string,
    /** `keyPrefix` + `<namespace>/` as bytes, written before each key. */
    private readonly wirePrefix: Buffer,
  ) {
    this.weight = part.length;
  }

  queue(client: Commands): unknown {
    return (client as { sendCommand(command: FramedCommand): unknown }).sendCommand(this.command('evalsha', APPLY_SHA));
  }

  /** The call with the script's source, after NOSCRIPT. */
  queueScript(client: Commands): unknown {
    return (client as { sendCommand(command: FramedCommand): unknown }).sendCommand(this.command('eval', APPLY_LUA));
  }

  /** The call with the script's sha (`evalsha`) or its source (`eval`, after NOSCRIPT). */
  command(name: 'evalsha' | 'eval', script: string): FramedCommand {
    const built = (this.built ??= this.build());
    // ioredis routes the command by its first key; every key of the batch is in the same slot.
    return new FramedCommand(name, [script, 1, this.keyPrefix + this.part[0]!.redisKey], this.frame(name, script, built));
  }

  /** Everything but the keys and changes: the script's fixed arguments (see {@link APPLY_LUA}). */
  private build(): BuiltBatch {
    const { part, target, slot } = this;
    const n = part.length;
    let guarded = false;
    let valuesOnly = true;
    // UTF-8 length of each key, measured once: for the message entries and for the frame.
    const keyBytes = new Int32Array(n);
    for (let j = 0; j < n; j++) {
      const p = part[j]!;
      if (guardArg(p.change) !== '') guarded = true;
      if (p.payload === undefined) valuesOnly = false;
      keyBytes[j] = Buffer.byteLength(p.change.key, 'utf8');
    }
    let updateHeader: Buffer = EMPTY;
    let deleteHeader: Buffer = EMPTY;
    let updates: Buffer = EMPTY;
    let deletes: Buffer = EMPTY;
    let lengths: Buffer = EMPTY;
    if (target) {
      // Sizes first, then each kind's entries written into one buffer.
      const published = new Array<Uint8Array | undefined>(n);
      let updateBytes = 0;
      let deleteBytes = 0;
      lengths = Buffer.allocUnsafe(4 * n);
      for (let j = 0; j < n; j++) {
        const { change, payload } = part[j]!;
        const withValue = target.withValues && payload !== undefined && payload.length <= target.maxPublishedValueBytes;
        published[j] = withValue ? payload : undefined;
        const size = entryLength(keyBytes[j]!, change.stamp, published[j], expiryOfChange(change));
        lengths.writeUInt32BE(size, 4 * j);
        if (change.deleted) deleteBytes += size;
        else updateBytes += size;
      }
      if (updateBytes > 0) updates = Buffer.allocUnsafe(updateBytes);
      if (deleteBytes > 0) deletes = Buffer.allocUnsafe(deleteBytes);
      let u = 0;
      let d = 0;
      for (let j = 0; j < n; j++) {
        const { change } = part[j]!;
        if (change.deleted) d = writeEntry(deletes, d, change.key, keyBytes[j]!, change.stamp, published[j]);
        else u = writeEntry(updates, u, change.key, keyBytes[j]!, change.stamp, published[j], expiryOfChange(change));
      }
      // Sequence numbers are taken here, right before the call is sent (update first).
      const signer = target.signer;
      if (updateBytes > 0) updateHeader = encodeHeader('u' satisfies MessageType, this.origin, target.nextSeq(slot), slot, signer !== undefined);
      if (deleteBytes > 0) deleteHeader = encodeHeader('d' satisfies MessageType, this.origin, target.nextSeq(slot), slot, signer !== undefined);
      if (signer !== undefined) {
        // Signed: the header argument starts with the two tags of the whole message (every entry),
        // 'all applied' then 'partly refused'; the script appends one of them (see APPLY_LUA).
        let deleteCount = 0;
        for (let j = 0; j < n; j++) if (part[j]!.change.deleted) deleteCount++;
        if (updateBytes > 0) updateHeader = Buffer.concat([signer.tags(target.updateChannelBytes!, [updateHeader, arrayHeader(n - deleteCount), updates]), updateHeader]);
        if (deleteBytes > 0) deleteHeader = Buffer.concat([signer.tags(target.deleteChannelBytes!, [deleteHeader, arrayHeader(deleteCount), deletes]), deleteHeader]);
      }
    }
    const fixed: FrameArg[] = [
      this.tombstoneTtlMs,
      target?.command ?? '',
      target?.updateChannel ?? '',
      target?.deleteChannel ?? '',
      updateHeader,
      deleteHeader,
      updates,
      deletes,
      lengths,
      guarded ? '1' : '',
      valuesOnly ? '1' : '',
      this.maxDriftMs,
    ];
    return { fixed, guarded, keyBytes };
  }

  /**
   * `<name> <script> <n> <keys…> <fixed arguments…> <changes…> [<guards…>]` in RESP, in one buffer:
   * each change is the record to store (`v`, stamp, payload) or `t` and the stamp of a tombstone,
   * written straight into the frame.
   */
  private frame(name: string, script: string, { fixed, guarded, keyBytes }: BuiltBatch): Buffer {
    const { part, wirePrefix } = this;
    const n = part.length;
    const guards = guarded ? part.map((p) => guardArg(p.change)) : [];
    const head = [script, n];
    const count = head.length + n + fixed.length + n + guards.length;
    const prefixBytes = wirePrefix.length;
    let size = frameLength(name, count);
    for (const arg of head) size += argLength(arg);
    for (let j = 0; j < n; j++) size += bulkLength(prefixBytes + keyBytes[j]!);
    for (const arg of fixed) size += argLength(arg);
    for (const p of part) size += bulkLength(changeHeaderLength(expiryOfChange(p.change)) + (p.payload?.length ?? 0));
    for (const guard of guards) size += argLength(guard);
    const out = Buffer.allocUnsafe(size);
    let at = writeFrameStart(out, name, count);
    for (const arg of head) at = writeArg(out, at, arg);
    for (let j = 0; j < n; j++) at = writePrefixedKey(out, at, wirePrefix, part[j]!.change.key, keyBytes[j]!);
    for (const arg of fixed) at = writeArg(out, at, arg);
    for (const p of part) {
      const { change, payload } = p;
      const expiresAt = expiryOfChange(change);
      at = writeBulkHeader(out, at, changeHeaderLength(expiresAt) + (payload?.length ?? 0));
      at = writeCrlf(out, writeChange(out, at, change.stamp, payload, expiresAt));
    }
    for (const guard of guards) at = writeArg(out, at, guard);
    if (at !== size) throw new Error(`apply frame: wrote ${at} bytes of ${size}`);
    return out;
  }
}

/** A guard: a stamp, possibly followed by `g` (just above that stamp: see the write-back manager). */
export const GUARD_PATTERN = /^[0-9a-f]{34}g?$/;

/** The expiry time a change stores: its own for a value, none for a tombstone. */
function expiryOfChange(change: VersionedChange<unknown>): number | undefined {
  const { expiresAt } = change;
  return change.deleted || expiresAt === undefined || expiresAt === Infinity ? undefined : expiresAt;
}

/** The guard argument of a change for the apply script: '' when it is the change's own stamp. */
function guardArg(change: VersionedChange<unknown>): string {
  return change.guard === undefined || change.guard === change.stamp ? '' : change.guard;
}

/** What {@link ApplyUnit} builds once per call, NOSCRIPT retry included. */
interface BuiltBatch {
  readonly fixed: FrameArg[];
  readonly guarded: boolean;
  /** UTF-8 length of each key of the batch (without any prefix). */
  readonly keyBytes: Int32Array;
}

/**
 * One call of the stamps script for `redisKeys` (one slot): by sha, and with the source after
 * NOSCRIPT. See {@link STAMPS_LUA} and {@link stampOfReply}.
 */
export function stampsCall(redisKeys: readonly string[]): { queue(client: Commands): unknown; queueScript(client: Commands): unknown } {
  return {
    queue: (client) => client.call('EVALSHA', [STAMPS_SHA, redisKeys.length, ...redisKeys]),
    queueScript: (client) => client.call('EVAL', [STAMPS_LUA, redisKeys.length, ...redisKeys]),
  };
}

/** A key's entry in the stamps script's reply: a live record's stamp, `''` for nothing or a tombstone, `undefined` for foreign data. */
export function stampOfReply(reply: string): Stamp | '' | undefined {
  return reply === '?' ? undefined : reply.startsWith('t') ? '' : reply;
}
