"""Lua of reconcile: decide a correction; give up a battle that never started."""

from __future__ import annotations

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

# Store a pass's reconcile state (baselines, reads waiting, drift waiting) while the pass still
# holds its lock: a pass frozen past its lease and woken would otherwise write back what it saw
# before the freeze over what the passes since stored (bench.chaos: the reads taken while a
# worker was frozen at a battle's start were erased, and a later read became the baseline).
# KEYS: recon, rlock   ARGV: lock token, then field, value pairs
RECON_STORE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
for j = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[j], ARGV[j + 1]) end
return 1
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
