/**
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
 * and publishes a partly refused signed message whole (see `publish` and `src/signing.ts`).
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

/** Reads the stamps of keys: per key the record's stamp, the tombstone's stamp, or '' (used by resync). */
export const STAMPS_LUA = `
local function valid(s) return #s == 34 and not string.find(s, '[^0-9a-f]') end
local out = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local head = redis.pcall('GETRANGE', key, 0, 34)
  local stamp = ''
  if type(head) == 'table' then
    local s = redis.pcall('HGET', key, 's')
    if type(s) == 'string' and valid(s) then stamp = 't' .. s end
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
export const STAMPS_SHA = createHash('sha1').update(STAMPS_LUA).digest('hex');
