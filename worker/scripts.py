"""The Lua scripts that make each state change atomic; each touches keys of one hash tag only."""

from __future__ import annotations

# Ingest gifts of one battle: de-duplicate each by event id, then add its value to the room's
# pending delta, ledger and per-second sums. One call per battle per batch, so a bulk message
# costs one command per battle rather than one per gift.
# KEYS: seen, pending, ledger, secs   ARGV: expire_at, then event_id, room, value, second per gift
# Returns one flag per gift: 1 if new, 0 if a duplicate.
INGEST = """
local out = {}
for j = 2, #ARGV, 4 do
  if redis.call('SADD', KEYS[1], ARGV[j]) == 0 then
    out[#out + 1] = 0
  else
    local v = tonumber(ARGV[j + 2])
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
# KEYS: room battles index, held list   ARGV: second, item json
# Returns the BattleId whose window holds the second (owner known), or '' after holding it.
ROUTE_OR_HOLD = """
local idx = redis.call('HGETALL', KEYS[1])
local t = tonumber(ARGV[1])
for i = 1, #idx, 2 do
  local s, e, owner = string.match(idx[i + 1], '^(%S+) (%S+) (%S+)$')
  s = tonumber(s); e = tonumber(e)
  if s and s > 0 and owner ~= '-' and t >= s and t < e then return idx[i] end
end
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

# Change a field of the in-flight record only while we hold the lock and it is still ours.
# KEYS: inflight, lock   ARGV: flush_id, lock token, field, value
MARK = """
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return -1 end
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
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

# Overwrite rooms' scores in the ledger of what Tencent holds, after an OpType 2 call answered,
# and add reconcile corrections. KEYS: applied, corr, lock
# ARGV: lock token, n, then n × (room, new applied score, correction delta)
SETTLE = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return -1 end
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  local room = ARGV[3 + 3 * i]
  redis.call('HSET', KEYS[1], room, ARGV[4 + 3 * i])
  local c = tonumber(ARGV[5 + 3 * i])
  if c ~= 0 then redis.call('HINCRBY', KEYS[2], room, c) end
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

# Sliding-window log rate limiter: admit a call if fewer than `rate` were admitted in the last
# `window` ms (Redis's own clock, so every host agrees). KEYS: log   ARGV: rate, window ms, id
# Returns 0 if admitted, else the ms to wait until the oldest call leaves the window.
RATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window * 2)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now + 1)
"""
