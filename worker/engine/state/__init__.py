"""The Redis state: key names, Lua scripts, the battle lock, rate limiter, pipelines, counters."""
