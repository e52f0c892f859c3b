"""The dead-letter store: events that could not be scored, with their reason, and their replay."""

from __future__ import annotations

import json

from worker import keys
from worker.ingest import handle
from worker.runtime import Runtime
from worker.stats import bump


def list_entries(rt: Runtime, limit: int = 100) -> list[dict]:
    """The oldest `limit` dead letters."""
    return [json.loads(x) for x in rt.redis.lrange(keys.DEAD_LETTERS, 0, limit - 1)]


def replay(rt: Runtime, limit: int = 10_000) -> dict[str, int]:
    """Run dead letters through ingest again (after a fix); those still bad are kept again.

    Each entry is handled before it is removed (a crash in between replays it again, which
    ingest's de-duplication makes harmless); one that still fails is appended anew by
    handle() with its current reason. Only as many entries as were there at the start are
    replayed, so a still-bad entry is not retried in a loop.
    """
    total: dict[str, int] = {}
    for _ in range(min(limit, rt.redis.llen(keys.DEAD_LETTERS))):
        raw = rt.redis.lindex(keys.DEAD_LETTERS, 0)
        if raw is None:
            break
        entry = json.loads(raw)
        for k, v in handle(rt, [(entry["body"], entry.get("event_id"))]).items():
            total[k] = total.get(k, 0) + v
        rt.redis.lpop(keys.DEAD_LETTERS)
        bump(rt.redis, "replayed")
    return total
