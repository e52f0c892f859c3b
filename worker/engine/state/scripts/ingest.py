"""Lua of the ingest path: route a gift to its battle (or hold it), then count it once."""

from __future__ import annotations

# Ingest gifts of one battle: de-duplicate each by event id, then add its value to the room's
# pending delta, ledger and per-second sums. One call per battle per batch, so a bulk message
# costs one command per battle rather than one per gift.
# A gift that would take its room's ledger past MAX_SCORE (2**53, worker/engine/tencent/models.py)
# is refused before it is marked seen: no batch can then exceed what Tencent holds. The bound
# is compared as v > 2**53 - ledger: Lua numbers are doubles, and ledger + v rounds 2**53 + 1
# down to 2**53 (tests/unit/battles/test_registry.py).
# KEYS: seen, pending, ledger, secs   ARGV: expire_at, then event_id, room, value, second per gift
# Returns one flag per gift: 1 if new, 0 if a duplicate, 2 if refused (out of bounds).
INGEST = """
local out = {}
for j = 2, #ARGV, 4 do
  local v = tonumber(ARGV[j + 2])
  if redis.call('SISMEMBER', KEYS[1], ARGV[j]) == 1 then
    out[#out + 1] = 0
  elseif v < 0 or v > 9007199254740992 - (tonumber(redis.call('HGET', KEYS[3], ARGV[j + 1])) or 0) then
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
"""  # noqa: E501  (one Lua line; the script's text is kept as it was)

# Route a gift by its room and second, or hold it until its battle is known. Atomic with the
# registration of battles in the room index, so a gift can never fall between the two.
# The rule is find_battle's in worker/engine/battles/roomindex.py (see its docstring; keep
# both alike):
# the latest start among the windows holding the second, ties to the greater BattleId in byte
# order (compared byte by byte here: Lua's `<` on strings follows the server's locale). The
# index value format ("start end owner", owner '-' while unknown) is roomindex.py's too.
# The held list expires `ttl` after its last hold: the sweep empties it long before (a gift is
# held HOLD_SECONDS), so only a list the sweep lost track of ever reaches it.
# KEYS: room battles index, held list   ARGV: second, item json, ttl
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
redis.call('EXPIRE', KEYS[2], ARGV[3])
return ''
"""

# Count a gift outside any battle once per event id, in time buckets that expire whole (a set
# whose expiry every add pushed on never expired in a busy room: issue 28). The id is looked
# for in the buckets on either side too, so a redelivery is caught across a bucket's edge and
# on a host whose clock is a little off; it is added to this bucket, whose expiry is fixed
# (the end of the next bucket), never pushed on.
# KEYS: this bucket, the one before, the one after   ARGV: event_id, expire_at of this bucket
# Returns 1 if the id is new, 0 for a duplicate.
COUNT_OUTSIDE = """
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 or
   redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then
  return 0
end
local added = redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIREAT', KEYS[1], ARGV[2])
return added
"""

# Write a battle into its room's index, and prune the entries of battles that ended before
# `cutoff` (their own keys expire then: a late gift of theirs is held, then counted outside).
# So the index, read whole for every routed batch and every held gift, holds the room's
# battles of the last day or so, never its whole history. Entries whose start is not known
# yet (end 0) are pruned by the give-up of battles that never start.
# KEYS: room battles index   ARGV: BattleId, index value, expire_at, cutoff
# Returns how many entries were pruned.
INDEX_BATTLE = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local idx = redis.call('HGETALL', KEYS[1])
local cutoff = tonumber(ARGV[4])
local pruned = 0
for i = 1, #idx, 2 do
  local e = tonumber(string.match(idx[i + 1], '^%S+ (%S+) '))
  if e and e > 0 and e < cutoff and idx[i] ~= ARGV[1] then
    redis.call('HDEL', KEYS[1], idx[i])
    pruned = pruned + 1
  end
end
redis.call('EXPIREAT', KEYS[1], ARGV[3])
return pruned
"""
