"""Lua of Tencent's clock: narrow the shared bounds on its offset with one sample."""

from __future__ import annotations

# Tencent's clock offset: intersect a sample [lo, hi] with the stored bounds widened by their
# age x drift; a sample that contradicts them widens them to cover both (see
# worker/engine/tencent/clock.py).
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
