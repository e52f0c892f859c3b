"""The Redis state: key names, Lua scripts, the battle lock, the rate limiter, pipelines, counters."""
