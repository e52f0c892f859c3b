"""Lua of the dead-letter store: keep an entry, trim past the cap, count what the trim dropped."""

from __future__ import annotations

# KEYS: the dead-letter list, its dropped counter (same slot: `{<list key>}:dropped`)
# ARGV: the entry (JSON), the cap. Returns the list's length after the trim.
DEAD_LETTER = """
local n = redis.call('RPUSH', KEYS[1], ARGV[1])
local cap = tonumber(ARGV[2])
if n > cap then
  redis.call('LTRIM', KEYS[1], n - cap, -1)
  redis.call('INCRBY', KEYS[2], n - cap)
  return cap
end
return n
"""
