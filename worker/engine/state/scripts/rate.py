"""Lua of the rate limiter: one admission into a sliding-window log, two lanes; the send log."""

from __future__ import annotations

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

# The send log: a request leaves only while fewer than `cap` left in the last `window` ms, by
# the moment they left rather than when their slot was admitted (a slot admitted, then held
# by a stalled process, left bunched with later ones: Tencent answered 100012).
# KEYS: send log   ARGV: cap, window ms, id, 'go' (leave now whatever the log says: logged)
# Returns 0 if it may leave now (logged), else the ms until the oldest leaves the window.
SENT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
if n < tonumber(ARGV[1]) or ARGV[4] == 'go' then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window * 2)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now + 1)
"""
