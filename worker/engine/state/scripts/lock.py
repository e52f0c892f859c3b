"""Lua of the owner lock (state/lock.py): renew or release it only while the token is ours."""

from __future__ import annotations

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
