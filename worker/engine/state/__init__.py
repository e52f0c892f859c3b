"""The Redis state: key names, Lua scripts, the owner lock, pipelines, counters."""
