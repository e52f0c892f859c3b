"""Lua of the ingest queue's drain (broker Redis; never a Cluster: kombu needs one)."""

from __future__ import annotations

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
