"""Counters of what happened to every event, kept in Redis so every process adds to the same."""

from __future__ import annotations

from worker.engine.state.pipeline import pipeline
from worker.engine.state import keys

#: The counters `battle-scorer stats` and the metrics endpoint report.
FIELDS = ("received", "ingested", "duplicate", "held", "outside", "not_to_owner",
          "dead_lettered", "ignored", "lifecycle", "replayed", "end_mismatch",
          "reconcile_corrections", "unapplied")


def bump(redis_or_pipe, field: str, n: int = 1) -> None:
    """Add `n` to one counter (no-op for 0)."""
    if n:
        redis_or_pipe.hincrby(keys.STATS, field, n)


def bump_many(redis, counts: dict[str, int]) -> None:
    """Add several counters in one round trip."""
    counts = {k: v for k, v in counts.items() if v}
    if not counts:
        return
    pipe = pipeline(redis)
    for k, v in counts.items():
        pipe.hincrby(keys.STATS, k, v)
    pipe.execute()


def read(redis) -> dict[str, int]:
    """All counters, zero for those never bumped."""
    raw = redis.hgetall(keys.STATS)
    return {f: int(raw.get(f, 0)) for f in sorted(set(FIELDS) | set(raw))}
