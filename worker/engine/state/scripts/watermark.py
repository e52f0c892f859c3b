"""Lua of the ingest watermark (broker Redis; never a Cluster: kombu needs one)."""

from __future__ import annotations

# Advance the ingest watermark W: every message enqueued before W has been fully ingested.
# A checkpoint remembers the newest queued message at time cp_at; once that message has left
# the queue (FIFO: so has everything older), everything enqueued before cp_at has been taken
# (at `popped_at`). Once no ingest message delivered before popped_at is still unacknowledged
# and no drain claim taken before it is still held, W = cp_at. Then a new checkpoint.
# A consumer pops a message (BRPOP) before it records it as unacknowledged, and a frozen one may
# hold a popped reply in its socket: so W also waits until every live consumer (checked in
# within ARGV[2] s) has checked in more than ARGV[3] s after popped_at (ingest/consumers.py).
# KEYS: queue, unacked_index, unacked, claims, watermark, consumers
# ARGV: ingest queue name, a consumer's silence after which it is dead (s), check-in margin (s)
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
  if not busy and #redis.call('ZRANGEBYSCORE', KEYS[6], now - tonumber(ARGV[2]),
                              '(' .. (popped_at + tonumber(ARGV[3])), 'LIMIT', 0, 1) > 0 then
    busy = true  -- a live consumer has not checked in since: it may hold a popped message
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
