"""Counters of what happened to every event and every Tencent call, kept in Redis so every
process adds to the same (the metrics exporter, worker/doors/metrics.py, reads them)."""

from __future__ import annotations

from typing import cast

import redis

from worker.engine.state import keys
from worker.engine.state.pipeline import Batch, pipeline

#: The counters `battle-scorer stats` and the metrics endpoint report.
FIELDS = ("received", "ingested", "duplicate", "held", "outside", "not_to_owner",
          "dead_lettered", "ignored", "lifecycle", "replayed", "end_mismatch",
          "reconcile_corrections", "unapplied", "dead_letters_dropped")
#: Upper bounds (seconds) of the Tencent call latency histogram.
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def bump(redis_or_pipe: redis.Redis | Batch, field: str, n: int = 1) -> None:
    """Add `n` to one counter (no-op for 0)."""
    if n:
        redis_or_pipe.hincrby(keys.STATS, field, n)


def bump_many(redis: redis.Redis, counts: dict[str, int]) -> None:
    """Add several counters in one round trip."""
    counts = {k: v for k, v in counts.items() if v}
    if not counts:
        return
    pipe = pipeline(redis)
    for k, v in counts.items():
        pipe.hincrby(keys.STATS, k, v)
    pipe.execute()


def read(redis: redis.Redis) -> dict[str, int]:
    """All counters, zero for those never bumped."""
    # Replies are str: every client of the state is made with decode_responses (connect).
    pipe = pipeline(redis)
    pipe.hgetall(keys.STATS)
    pipe.get(keys.DEAD_LETTERS_DROPPED)
    raw, dropped = pipe.execute()
    raw = with_dropped(cast("dict[str, str]", raw), dropped)
    return {f: int(raw.get(f, 0)) for f in sorted(set(FIELDS) | set(raw))}


def with_dropped(stats: dict[str, str], dropped: str | None) -> dict[str, str]:
    """The stats hash with `dead_letters_dropped`, which the dead-letter script counts in a key
    beside its list (one cluster slot with it, keys.DEAD_LETTERS_DROPPED), not in the hash."""
    return {**stats, "dead_letters_dropped": dropped or "0"}


def record_call(redis: redis.Redis, api: str, outcome: str, seconds: float,
                waited: float = 0.0) -> None:
    """Count one Tencent call, its latency bucket and any rate-limiter wait (one round trip)."""
    le = next((b for b in BUCKETS if seconds <= b), "+Inf")
    pipe = pipeline(redis)
    pipe.hincrby(keys.METRICS_CALLS, f"{api}|{outcome}", 1)
    pipe.hincrbyfloat(keys.METRICS_LATENCY_SUM, api, seconds)
    pipe.hincrby(keys.METRICS_LATENCY_BUCKETS, f"{api}|{le}", 1)
    if waited:
        pipe.hincrbyfloat(keys.METRICS_LIMITER_WAIT, api, waited)
    pipe.execute()
