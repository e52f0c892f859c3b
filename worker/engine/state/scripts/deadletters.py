"""Lua of the dead-letter store: every change to its list, with its byte total kept right.

The store is bounded by count and by bytes (worker/engine/deadletters.py): a push drops the
oldest entries past either cap and counts them. The byte total (the sum of the entries'
lengths) lives in a key of the list's slot; every script here that adds or removes an entry
moves it in the same atomic step. A total that is missing while the list is not empty (lost,
deleted, or written before it existed) or that went negative (entries removed around the
scripts) is counted afresh from the list, once; an empty list has no total key at all. One
that is too high (entries removed by hand) only drops more, until the list empties or holds
the new entry alone, when it is exact again.
"""

from __future__ import annotations

# KEYS: the dead-letter list, its dropped counter, its byte total (one slot: the list's hash
# tag, `{<list key>}:dropped` and `{<list key>}:bytes`).
# ARGV[1] is the operation:
#   'push', entry, count cap, byte cap: append the entry, then drop the oldest while past the
#       count cap, or past the byte cap with more than the new entry left; the drops are
#       counted. Returns the list's length.
#   'settle', entry: remove the oldest if it is still `entry` (it may have been dropped
#       meanwhile, and then another would go). Returns 1 if removed, else 0.
#   'keep', entry: move the oldest to the end as it is, if it is still `entry`. Returns 1 if
#       moved, else 0 (the total does not change: the same bytes stay).
# The recount walks the list in slices (one pass, once per loss: writes stay O(1) amortized).
DEAD_LETTER = """
local function recount()
  local total, i = 0, 0
  while true do
    local slice = redis.call('LRANGE', KEYS[1], i, i + 99)
    for _, e in ipairs(slice) do total = total + #e end
    if #slice < 100 then return total end
    i = i + 100
  end
end

local function total_of()
  local t = tonumber(redis.call('GET', KEYS[3]) or '')
  if t == nil or t < 0 then t = recount() end
  return t
end

local function store(total, n)
  if n == 0 then
    redis.call('DEL', KEYS[3])
  elseif total < 0 then
    redis.call('SET', KEYS[3], recount())
  else
    redis.call('SET', KEYS[3], total)
  end
end

local op = ARGV[1]
if op == 'push' then
  local entry, cap, max_bytes = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
  local total = 0
  if redis.call('LLEN', KEYS[1]) > 0 then total = total_of() end
  local n = redis.call('RPUSH', KEYS[1], entry)
  total = total + #entry
  local dropped = 0
  while n > 0 and (n > cap or (n > 1 and total > max_bytes)) do
    total = total - #redis.call('LPOP', KEYS[1])
    n = n - 1
    dropped = dropped + 1
  end
  if n == 1 then total = #entry end
  if dropped > 0 then redis.call('INCRBY', KEYS[2], dropped) end
  store(total, n)
  return n
end

local head = redis.call('LINDEX', KEYS[1], 0)
if not head or head ~= ARGV[2] then return 0 end
if op == 'keep' then
  redis.call('LMOVE', KEYS[1], KEYS[1], 'LEFT', 'RIGHT')
  return 1
end
if op == 'settle' then
  local total = total_of()
  redis.call('LPOP', KEYS[1])
  store(total - #head, redis.call('LLEN', KEYS[1]))
  return 1
end
return redis.error_reply('DEAD_LETTER: unknown operation ' .. tostring(op))
"""
