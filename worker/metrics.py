"""Prometheus metrics, cluster-wide: counters kept in Redis by every process, read at scrape.

Every worker process on every host adds to the same Redis hashes, so one exporter (the beat,
or `battle-scorer metrics`) shows the whole deployment and no series is per process or per
battle: label values are bounded (API names, outcomes, event outcomes).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from worker.batch import pipeline
from worker import keys, stats

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def record_call(redis, api: str, outcome: str, seconds: float, waited: float = 0.0) -> None:
    """Count one Tencent call, its latency bucket and any rate-limiter wait (one round trip)."""
    le = next((b for b in BUCKETS if seconds <= b), "+Inf")
    pipe = pipeline(redis)
    pipe.hincrby(keys.METRICS_CALLS, f"{api}|{outcome}", 1)
    pipe.hincrbyfloat(keys.METRICS_LATENCY_SUM, api, seconds)
    pipe.hincrby(keys.METRICS_LATENCY_BUCKETS, f"{api}|{le}", 1)
    if waited:
        pipe.hincrbyfloat(keys.METRICS_LIMITER_WAIT, api, waited)
    pipe.execute()


class ScorerCollector:
    """Reads the shared state at scrape time."""

    def __init__(self, redis) -> None:
        self.redis = redis

    def collect(self):
        r = self.redis
        ev = CounterMetricFamily("scorer_events", "Events by what became of them",
                                 labels=["outcome"])
        for name, value in stats.read(r).items():
            ev.add_metric([name], value)
        yield ev

        calls = CounterMetricFamily("scorer_tencent_calls", "Tencent calls by API and outcome",
                                    labels=["api", "outcome"])
        for field, value in r.hgetall(keys.METRICS_CALLS).items():
            api, _, outcome = field.partition("|")
            calls.add_metric([api, outcome], int(value))
        yield calls

        sums = {k: float(v) for k, v in r.hgetall(keys.METRICS_LATENCY_SUM).items()}
        raw = r.hgetall(keys.METRICS_LATENCY_BUCKETS)
        lat = HistogramMetricFamily("scorer_tencent_latency_seconds", "Tencent call latency",
                                    labels=["api"])
        for api in sorted(sums):
            acc, buckets = 0, []
            for b in (*BUCKETS, "+Inf"):
                acc += int(raw.get(f"{api}|{b}", 0))
                buckets.append((str(b), acc))
            lat.add_metric([api], buckets, sums[api])
        yield lat

        wait = CounterMetricFamily("scorer_ratelimit_wait_seconds",
                                   "Time spent waiting for the shared rate limiter",
                                   labels=["api"])
        for api, value in r.hgetall(keys.METRICS_LIMITER_WAIT).items():
            wait.add_metric([api], float(value))
        yield wait

        now = time.time()
        active = r.zrange(keys.ACTIVE, 0, -1)
        pipe = pipeline(r)
        for bid in active:
            pipe.hvals(keys.BattleKeys(bid).pending)
        pending = sum(int(v) for vals in (pipe.execute() if active else []) for v in vals)
        oldest = r.zrange(keys.FLUSH_DUE, 0, 0, withscores=True)
        lag = max(0.0, now - oldest[0][1]) if oldest else 0.0
        for name, doc, value in (
            ("scorer_battles_active", "Battles registered and not yet finalized", len(active)),
            ("scorer_battles_due", "Battles with value waiting to be flushed",
             r.zcard(keys.FLUSH_DUE)),
            ("scorer_pending_value", "Gift value ingested, not yet sent (all battles)", pending),
            ("scorer_flush_lag_seconds", "How long the most overdue flush has waited", lag),
            ("scorer_held_rooms", "Rooms with gifts waiting for their battle",
             r.zcard(keys.HELD_ROOMS)),
            ("scorer_dead_letters", "Events in the dead-letter store",
             r.llen(keys.DEAD_LETTERS)),
        ):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            yield g


def registry_for(redis) -> CollectorRegistry:
    """A registry with only the scorer's collector."""
    reg = CollectorRegistry()
    reg.register(ScorerCollector(redis))
    return reg


def serve(port: int, redis=None, addr: str = "0.0.0.0"):
    """Serve /metrics on `port` in a daemon thread."""
    if redis is None:
        from worker.runtime import get_runtime

        redis = get_runtime().redis
    return start_http_server(port, addr=addr, registry=registry_for(redis))
