"""Counters of what happened to every event and every Tencent call, kept in Redis so every
process adds to the same (the metrics exporter, worker/doors/metrics.py, reads them)."""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict
from typing import cast

import redis

from worker.engine.state import keys
from worker.engine.state.pipeline import Batch, pipeline
from worker.engine.timers import TIMERS

log = logging.getLogger("scorer.metrics")

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


class CallTally:
    """The Tencent calls' metrics of one process, added up in memory and written in one round
    trip at most every `every` s (a timer writes what a call left, so none waits for the
    next call). A process that dies loses at most that much of its metrics, never a score."""

    def __init__(self, redis: redis.Redis, every: float = TIMERS.state.call_metrics_every
                 ) -> None:
        self.redis = redis
        self.every = every
        self._mu = threading.Lock()
        self._timer: threading.Timer | None = None
        self._reset()

    def _reset(self) -> None:
        self._calls: Counter[str] = Counter()
        self._buckets: Counter[str] = Counter()
        self._latency: defaultdict[str, float] = defaultdict(float)
        self._waited: defaultdict[str, float] = defaultdict(float)

    def add(self, api: str, outcome: str, seconds: float, waited: float = 0.0) -> None:
        """Count one call, its latency bucket and any rate-limiter wait."""
        le = next((b for b in BUCKETS if seconds <= b), "+Inf")
        with self._mu:
            self._calls[f"{api}|{outcome}"] += 1
            self._buckets[f"{api}|{le}"] += 1
            self._latency[api] += seconds
            if waited:
                self._waited[api] += waited

    def record(self, api: str, outcome: str, seconds: float, waited: float = 0.0) -> None:
        """`add`, and have it written within `every` s. Never raises: it runs after Tencent
        answered, and a call that landed must not look failed."""
        self.add(api, outcome, seconds, waited)
        with self._mu:
            if self._timer is not None:
                return
            timer = self._timer = threading.Timer(self.every, self._due)
            timer.daemon = True
        try:
            timer.start()
        except RuntimeError:  # no thread to be had: write now rather than never again
            self._due()

    def close(self) -> None:
        """Write what is left now, and stop the timer (a process or a test ending)."""
        with self._mu:
            timer = self._timer
        if timer is not None:
            timer.cancel()
        self._due()

    def _due(self) -> None:
        with self._mu:
            self._timer = None
        try:
            self.write()
        except redis.RedisError as err:  # metrics never fail a call; these are lost
            log.debug("call metrics not written: %s", type(err).__name__)
        except Exception:  # a bug here must not stop the timer for good, nor reach a call
            log.exception("call metrics not written")

    def write(self) -> None:
        """Write what was added since the last write, in one round trip."""
        with self._mu:
            calls, buckets, latency, waited = (self._calls, self._buckets, self._latency,
                                               self._waited)
            self._reset()
        if not calls:
            return
        pipe = pipeline(self.redis)
        for f, n in calls.items():
            pipe.hincrby(keys.METRICS_CALLS, f, n)
        for api, s in latency.items():
            pipe.hincrbyfloat(keys.METRICS_LATENCY_SUM, api, s)
        for f, n in buckets.items():
            pipe.hincrby(keys.METRICS_LATENCY_BUCKETS, f, n)
        for api, s in waited.items():
            pipe.hincrbyfloat(keys.METRICS_LIMITER_WAIT, api, s)
        pipe.execute()
