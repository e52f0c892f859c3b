"""The Lua scripts that make each state change atomic; each touches keys of one hash tag only."""

from __future__ import annotations

# Ingest gifts of one battle: de-duplicate each by event id, then add its value to the room's
# pending delta, ledger and per-second sums. One call per battle per batch, so a bulk message
# costs one command per battle rather than one per gift.
# A gift that would take its room's ledger past MAX_SCORE (2**53, worker/engine/tencent/models.py) is
# refused before it is marked seen: no batch can then exceed what Tencent holds.
# KEYS: seen, pending, ledger, secs   ARGV: expire_at, then event_id, room, value, second per gift
# Returns one flag per gift: 1 if new, 0 if a duplicate, 2 if refused (out of bounds).
INGEST = """
local out = {}
for j = 2, #ARGV, 4 do
  local v = tonumber(ARGV[j + 2])
  if redis.call('SISMEMBER', KEYS[1], ARGV[j]) == 1 then
    out[#out + 1] = 0
  elseif v < 0 or (tonumber(redis.call('HGET', KEYS[3], ARGV[j + 1])) or 0) + v > 9007199254740992 then
    out[#out + 1] = 2
  else
    redis.call('SADD', KEYS[1], ARGV[j])
    if v > 0 then
      redis.call('HINCRBY', KEYS[2], ARGV[j + 1], v)
      redis.call('HINCRBY', KEYS[3], ARGV[j + 1], v)
      redis.call('HINCRBY', KEYS[4], ARGV[j + 1] .. '|' .. ARGV[j + 3], v)
    end
    out[#out + 1] = 1
  end
end
for i = 1, 4 do redis.call('EXPIREAT', KEYS[i], ARGV[1]) end
return out
"""

# Route a gift by its room and second, or hold it until its battle is known. Atomic with the
# registration of battles in the room index, so a gift can never fall between the two.
# The rule is find_battle's in worker/engine/battles.py (see its docstring; keep both copies alike):
# the latest start among the windows holding the second, ties to the greater BattleId in byte
# order (compared byte by byte here: Lua's `<` on strings follows the server's locale).
# KEYS: room battles index, held list   ARGV: second, item json
# Returns the BattleId find_battle would choose, or '' after holding the gift.
ROUTE_OR_HOLD = """
local function bytes_gt(a, b)
  local n = math.min(#a, #b)
  for k = 1, n do
    local x, y = string.byte(a, k), string.byte(b, k)
    if x ~= y then return x > y end
  end
  return #a > #b
end
local idx = redis.call('HGETALL', KEYS[1])
local t = tonumber(ARGV[1])
local best, best_s = nil, nil
for i = 1, #idx, 2 do
  local s, e, owner = string.match(idx[i + 1], '^(%S+) (%S+) (%S+)$')
  s = tonumber(s); e = tonumber(e)
  if s and e and s > 0 and owner ~= '-' and t >= s and t < e then
    if best == nil or s > best_s or (s == best_s and bytes_gt(idx[i], best)) then
      best, best_s = idx[i], s
    end
  end
end
if best then return best end
redis.call('RPUSH', KEYS[2], ARGV[2])
return ''
"""

# Claim the pending deltas of a battle into an in-flight record, or resume the one a previous
# owner left. KEYS: pending, inflight, lock   ARGV: flush_id, now, lock token
# Returns the in-flight hash as a flat list ({} if there is nothing to flush, -1 without lock).
CLAIM = """
if redis.call('GET', KEYS[3]) ~= ARGV[3] then return -1 end
if redis.call('EXISTS', KEYS[2]) == 1 then return redis.call('HGETALL', KEYS[2]) end
local p = redis.call('HGETALL', KEYS[1])
if #p == 0 then return {} end
local rec = {'id', ARGV[1], 'at', ARGV[2], 'state', 'sending'}
for i = 1, #p, 2 do
  if tonumber(p[i + 1]) ~= 0 then
    table.insert(rec, 'r:' .. p[i]); table.insert(rec, p[i + 1])
  end
end
redis.call('DEL', KEYS[1])
if #rec == 6 then return {} end
redis.call('HSET', KEYS[2], unpack(rec))
return rec
"""

# Settle an in-flight batch once its outcome is known: add what Tencent applied to `applied`,
# what it refused to `unapplied`, record the flush, drop the in-flight record.
# KEYS: inflight, applied, unapplied, flushes, lock
# ARGV: flush_id, lock token, record json, n, then n × (room, applied value, unapplied value)
COMMIT = """
if redis.call('GET', KEYS[5]) ~= ARGV[2] then return -1 end
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
local n = tonumber(ARGV[4])
for i = 0, n - 1 do
  local room = ARGV[5 + 3 * i]
  local a = tonumber(ARGV[6 + 3 * i]); local u = tonumber(ARGV[7 + 3 * i])
  if a ~= 0 then redis.call('HINCRBY', KEYS[2], room, a) end
  if u ~= 0 then redis.call('HINCRBY', KEYS[3], room, u) end
end
redis.call('DEL', KEYS[1])
redis.call('LPUSH', KEYS[4], ARGV[3])
redis.call('LTRIM', KEYS[4], 0, 99)
return 1
"""

# Change fields of the in-flight record only while we hold the lock and it is still ours.
# KEYS: inflight, lock   ARGV: flush_id, lock token, then field, value pairs
MARK = """
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return -1 end
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
return 1
"""

# Adopt an in-flight record left by a previous owner: give it our flush id.
# KEYS: inflight, lock   ARGV: old id, new id, lock token
ADOPT = """
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return -1 end
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'id', ARGV[2])
return 1
"""

# Decide a reconcile correction: add each room's drift to its corrections and to its pending
# value in one step, while the reconcile pass still holds its lock. The flush path delivers it;
# a pass that runs again judges its reads against the new corrections and decides nothing twice.
# KEYS: pending, corr, rlock   ARGV: expire_at, lock token, then room, drift pairs
CORRECT = """
if redis.call('GET', KEYS[3]) ~= ARGV[2] then return -1 end
for j = 3, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[j], ARGV[j + 1])
  redis.call('HINCRBY', KEYS[2], ARGV[j], ARGV[j + 1])
end
for i = 1, 2 do
  if redis.call('TTL', KEYS[i]) == -1 then redis.call('EXPIREAT', KEYS[i], ARGV[1]) end
end
return 1
"""

# Locks with a heartbeat: only the holder may extend or release.
# KEYS: lock   ARGV: token, ttl ms
LOCK_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
LOCK_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Tencent's clock offset: intersect a sample [lo, hi] with the stored bounds widened by their
# age x drift; a sample that contradicts them widens them to cover both (see worker/engine/tencent/clock.py).
# KEYS: clock hash   ARGV: lo, hi, now, drift   Returns {lo, hi}.
CLOCK_OBSERVE = """
local lo, hi = tonumber(ARGV[1]), tonumber(ARGV[2])
local now, drift = tonumber(ARGV[3]), tonumber(ARGV[4])
local c = redis.call('HMGET', KEYS[1], 'lo', 'hi', 'at')
if c[1] then
  local age = math.max(0, now - tonumber(c[3])) * drift
  local olo, ohi = tonumber(c[1]) - age, tonumber(c[2]) + age
  if lo <= ohi and hi >= olo then
    lo, hi = math.max(lo, olo), math.min(hi, ohi)
  else
    lo, hi = math.min(lo, olo), math.max(hi, ohi)
  end
end
redis.call('HSET', KEYS[1], 'lo', tostring(lo), 'hi', tostring(hi), 'at', tostring(now))
return {tostring(lo), tostring(hi)}
"""

# Sliding-window log rate limiter: admit a call if fewer than `rate` were admitted in the last
# `window` ms (Redis's own clock, so every host agrees). A 'low' call (one with no deadline)
# is admitted only below `rate` minus what is left of the reserve the tick keeps for deadlines
# (the reserve less the 'high' calls of the window, logged apart as well).
# KEYS: log, reserve, high log   ARGV: rate, window ms, id, lane ('low' | 'high')
# Returns 0 if admitted, else the ms to wait until enough calls leave the window.
RATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
if ARGV[4] == 'low' then
  -- a call without a deadline leaves room for the reserved calls with one not made yet in
  -- this window (keeping the whole reserve idle cut the budget to 140 of 180 calls a second)
  local unused = tonumber(redis.call('GET', KEYS[2]) or '0') - redis.call('ZCARD', KEYS[3])
  limit = limit - math.min(limit - 1, math.max(0, unused))
end
local n = redis.call('ZCARD', KEYS[1])
if n < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window * 2)
  if ARGV[4] ~= 'low' then
    redis.call('ZADD', KEYS[3], now, ARGV[3])
    redis.call('PEXPIRE', KEYS[3], window * 2)
  end
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], n - limit, n - limit, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now + 1)
"""

# -- The ingest queue's drain and watermark (broker Redis; never a Cluster: kombu needs one) --

# Ask for a drain when the ingest queue is long and fewer than `max` drains hold a slot.
# KEYS: queue, slots   ARGV: threshold, max slots, lease s, token
# Returns the queue length if a slot was taken for `token`, else 0.
DRAIN_REQUEST = """
local n = redis.call('LLEN', KEYS[1])
if n < tonumber(ARGV[1]) then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[4])
return n
"""

# Move up to `n` of the oldest messages of the ingest queue into a claim list, stamped with
# the time it was taken, in one step: a message is always in the queue or in exactly one
# claim, never only in a process's memory. KEYS: queue, claims, claim   ARGV: n
# Returns the claimed messages, oldest first.
DRAIN_CLAIM = """
if redis.call('EXISTS', KEYS[3]) == 1 then return redis.error_reply('claim key in use') end
local msgs = redis.call('RPOP', KEYS[1], tonumber(ARGV[1]))
if not msgs then return {} end
for i = 1, #msgs, 100 do
  redis.call('RPUSH', KEYS[3], unpack(msgs, i, math.min(i + 99, #msgs)))
end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[2], tonumber(t[1]) + tonumber(t[2]) / 1e6, KEYS[3])
return msgs
"""

# Give the messages of claims older than the lease (their drain died or stalled) back to the
# queue, at its consuming end and oldest first, so they are taken next.
# KEYS: queue, claims   ARGV: max claims, lease s
# Claim list keys come from the zset: fine on the broker, which is one Redis, never a Cluster.
DRAIN_RECOVER = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]), 'LIMIT', 0,
                         tonumber(ARGV[1]))
local moved = 0
for _, key in ipairs(dead) do
  local msgs = redis.call('LRANGE', key, 0, -1)
  for i = #msgs, 1, -1 do redis.call('RPUSH', KEYS[1], msgs[i]) end
  moved = moved + #msgs
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[2], key)
end
return moved
"""

# Advance the ingest watermark W: every message enqueued before W has been fully ingested.
# A checkpoint remembers the newest queued message at time cp_at; once that message has left
# the queue (FIFO: so has everything older), everything enqueued before cp_at has been taken
# (at `popped_at`). Once no ingest message delivered before popped_at is still unacknowledged
# and no drain claim taken before it is still held, W = cp_at. Then a new checkpoint.
# KEYS: queue, unacked_index, unacked, claims, watermark   ARGV: ingest queue name
# Returns {W, now, queue length} as strings (Redis time, seconds).
WATERMARK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local wm = {}
local flat = redis.call('HGETALL', KEYS[5])
for i = 1, #flat, 2 do wm[flat[i]] = flat[i + 1] end
local w = tonumber(wm.w or '0')
local cp_at = tonumber(wm.cp_at or '')
local popped_through = tonumber(wm.popped_through or '')
local popped_at = tonumber(wm.popped_at or '')
-- 2. (first: needs a tick between) promote what was taken to what was processed
if popped_at and now - popped_at > 0.05 then
  local busy = false
  local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', popped_at, 'LIMIT', 0, 200)
  if #old == 200 then busy = true end  -- more than we look at: assume an ingest one among them
  for _, tag in ipairs(old) do
    local raw = redis.call('HGET', KEYS[3], tag)
    if raw then
      local ok, v = pcall(cjson.decode, raw)
      if not ok or v[3] == ARGV[1] then busy = true; break end
    end
  end
  if not busy and #redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', popped_at, 'LIMIT', 0, 1) > 0 then
    busy = true  -- a drain batch taken before popped_at is still being ingested
  end
  if not busy then
    w = math.max(w, popped_through)
    popped_at = nil
    popped_through = nil
  end
end
-- 1. resolve the checkpoint
if cp_at and not popped_at then
  if wm.cp_msg == '' or not redis.call('LPOS', KEYS[1], wm.cp_msg, 'RANK', -1) then
    popped_through = cp_at
    popped_at = now
    cp_at = nil
  end
end
-- 3. a new checkpoint
local n = redis.call('LLEN', KEYS[1])
if not cp_at then
  cp_at = now
  wm.cp_msg = n > 0 and redis.call('LINDEX', KEYS[1], 0) or ''
end
redis.call('DEL', KEYS[5])
local out = {'w', tostring(w), 'cp_at', tostring(cp_at), 'cp_msg', wm.cp_msg}
if popped_at then
  table.insert(out, 'popped_at'); table.insert(out, tostring(popped_at))
  table.insert(out, 'popped_through'); table.insert(out, tostring(popped_through))
end
redis.call('HSET', KEYS[5], unpack(out))
return {tostring(w), tostring(now), tostring(n)}
"""

# -- reconcile: a battle that never started ----------------------------------------------

#: KEYS: every key of the battle, its meta hash first (one slot). ARGV: now, reason, keep (s).
#: Gives the battle up unless a register() made it running meanwhile; no key of it lives past
#: now + keep (a shorter TTL, such as a lock's, is kept). Returns {done, its rooms (JSON)}.
GIVE_UP = """
local status = redis.call('HGET', KEYS[1], 'status')
if status and status ~= 'created' then return {0, ''} end
redis.call('HSET', KEYS[1], 'status', 'given_up', 'given_up_at', ARGV[1],
           'give_up_reason', ARGV[2])
local keep = tonumber(ARGV[3]) * 1000
for _, key in ipairs(KEYS) do
  local ttl = redis.call('PTTL', key)
  if ttl == -1 or ttl > keep then redis.call('PEXPIRE', key, keep) end
end
return {1, redis.call('HGET', KEYS[1], 'rooms') or ''}
"""
#: KEYS: the meta hash. ARGV: when first seen unresolved, if not recorded yet. Never creates
#: the hash (it would have no expiry): returns nil when the battle has no meta.
UNRESOLVED_SINCE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSETNX', KEYS[1], 'unresolved_since', ARGV[1])
return redis.call('HGET', KEYS[1], 'unresolved_since')
"""
