"""Lua of a flush: claim the pending deltas, mark, adopt and commit the in-flight batch."""

from __future__ import annotations

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
# what it refused to `unapplied`, record the flush, drop the in-flight record. A key this makes
# afresh (its battle finalized and its keys expired before a late flush) gets the meta's expiry,
# or `keep` s when the meta is gone too: never a key that lives for ever (bench.soak found
# 34,000 such `flushes` and `unapplied` keys in 30 days).
# KEYS: inflight, applied, unapplied, flushes, lock, meta
# ARGV: flush_id, lock token, record json, n, then n × (room, applied value, unapplied value),
#       then keep
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
local at = redis.call('PEXPIRETIME', KEYS[6])
for k = 2, 4 do
  if redis.call('PTTL', KEYS[k]) == -1 then
    if at > 0 then redis.call('PEXPIREAT', KEYS[k], at)
    else redis.call('EXPIRE', KEYS[k], ARGV[5 + 3 * n]) end
  end
end
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
