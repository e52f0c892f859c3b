"""Prometheus metrics, cluster-wide: counters and state kept in Redis, read at scrape time.

Every worker process on every host adds to the same Redis hashes, so one exporter (`battle-
scorer metrics`, its own process: worker/doors/metrics_http.py) shows the whole deployment and no
series is per process or per battle: label values are bounded (API names, outcomes, event
outcomes, the three queue names). A scrape costs two round trips to the state Redis and one to
the broker's, whatever the load; a missing key reads as zero (or +Inf for an age), and a Redis
that does not answer drops its families and sets `scorer_redis_up` to 0 instead of failing.
"""

from __future__ import annotations

import logging
import time

import redis as redis_lib
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from worker.engine.settings import Settings
from worker.engine.state import counters, keys, redisclock
from worker.engine.state.counters import BUCKETS
from worker.engine.state.pipeline import pipeline
from worker.engine.state.redisclock import redis_now
from worker.engine.tencent.errors import Outcome

log = logging.getLogger("scorer.metrics")

#: string: time (beat's clock) the beat last published `scorer.tick`, written by the beat's
#: publish hook (worker/doors/signals.py). It expires, so a beat gone for good leaves no key behind.
BEAT_PUBLISHED = keys.BEAT_PUBLISHED
BEAT_PUBLISHED_TTL = 300
#: The task whose publishes prove the beat is alive.
TICK_TASK = "scorer.tick"
#: kombu's Redis transport keeps priority `n` of queue `q` in the list `q + SEP + str(n)`.
PRIORITY_SEP = "\x06\x16"
#: A room's reconcile baseline is due this many seconds after its battle's start.
BASELINE_DUE = 10.0
#: Overdue battles examined for `scorer_oldest_pending_seconds` (bounds the scrape).
OLDEST_SCAN = 100
#: Counters bumped only on rare paths: exported as 0 until then, so rate() and the alerts
#: see a series from the start rather than an absent one.
EXTRA_EVENTS = ("audit_corrections", "given_up", "late_drift", "reconcile_heal_ms",
                "reconcile_reads", "reconcile_reads_deferred", "reconcile_reads_dropped",
                "reconcile_reads_drifted", "reconcile_reads_judged", "reconcile_reads_yielded",
                "unsettled")
INF = float("inf")
#: SCORER_QUEUE's default, which is Celery's own default queue (`celery`).
DEFAULT_QUEUE: str = Settings.model_fields["queue"].default


def record_beat_publish(redis, now: float | None = None) -> None:
    """Record that the beat just published a tick (one SET with an expiry), on Redis's clock."""
    redis.set(BEAT_PUBLISHED, repr(redis_now(redis) if now is None else now),
              ex=BEAT_PUBLISHED_TTL)


def age_of(raw, now: float) -> float:
    """Seconds since the time stored in `raw` (a Redis string), +Inf if absent or garbage."""
    try:
        return max(0.0, now - float(raw)) if raw is not None else INF
    except ValueError:
        return INF


def beat_publish_age(redis, now: float | None = None) -> float:
    """Seconds since the beat last published a tick; +Inf with no record."""
    return age_of(redis.get(BEAT_PUBLISHED), redis_now(redis) if now is None else now)


def queue_names(input_queue: str) -> dict[str, str]:
    """The queues reported, by role: producers' input, drains, control tasks; and Celery's
    default `celery` when SCORER_QUEUE is another (role `default`): a producer left on the
    default queue fills it and nobody of ours consumes it (alert ScorerDefaultQueueFilling)."""
    names = {"input": input_queue, "drain": keys.DRAIN_QUEUE, "control": keys.CONTROL_QUEUE}
    if input_queue != DEFAULT_QUEUE:
        names["default"] = DEFAULT_QUEUE
    return names


def _num(value, cast=int):
    # A hand-edited or foreign value must cost one series, never the scrape.
    try:
        return cast(value)
    except (TypeError, ValueError):
        return cast(0)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], value)
    return g


class ScorerCollector:
    """Reads the shared state at scrape time (state Redis, and the broker's for the queues)."""

    def __init__(self, redis, broker=None, queue: str = DEFAULT_QUEUE) -> None:
        self.redis = redis
        self.broker = redis if broker is None else broker
        self.queue = queue

    def collect(self):
        """All families; those of a Redis that does not answer are left out."""
        now = self._now()
        up: dict[str, int] = {}
        for name, part in (("state", self._state), ("broker", self._queues)):
            if name == "broker" and self.broker is self.redis and not up["state"]:
                up[name] = 0  # the same Redis just failed: do not wait on it twice
                continue
            try:
                families = list(part(now))
            except redis_lib.RedisError as err:
                # type only: a connection error's text may carry the URL
                log.warning("metrics: %s Redis unavailable: %s", name, type(err).__name__)
                families, up[name] = [], 0
            else:
                up[name] = 1
            yield from families
        g = GaugeMetricFamily("scorer_redis_up", "1 when the scrape could read that Redis",
                              labels=["redis"])
        for name, value in up.items():
            g.add_metric([name], value)
        yield g

    def _now(self) -> float:
        """Redis's clock, on which the stamps read here were taken (this host's if it is down)."""
        try:
            return redis_now(self.broker)
        except redis_lib.RedisError:
            return time.time()

    def _queues(self, now: float):
        names = queue_names(self.queue)
        pipe = pipeline(self.broker)
        for q in names.values():
            pipe.llen(q)
            for n in range(1, 10):  # kombu's priority sub-queues (steps 3, 6, 9 by default)
                pipe.llen(f"{q}{PRIORITY_SEP}{n}")
        res = pipe.execute()
        g = GaugeMetricFamily("scorer_queue_depth", "Messages waiting in a broker queue",
                              labels=["queue", "role"])
        for i, (role, q) in enumerate(names.items()):
            g.add_metric([q, role], sum(_num(v) for v in res[10 * i:10 * i + 10]))
        yield g
        g = GaugeMetricFamily("scorer_host_clock_offset_seconds",
                              "A worker host's clock minus Redis's, as it last measured it",
                              labels=["host"])
        for host, offset in sorted(redisclock.offsets(self.broker, now).items()):
            g.add_metric([host], offset)
        yield g

    def _state(self, now: float):
        r = self.redis
        pipe = pipeline(r)
        for key in (keys.STATS, keys.METRICS_CALLS, keys.METRICS_LATENCY_SUM,
                    keys.METRICS_LATENCY_BUCKETS, keys.METRICS_LIMITER_WAIT):
            pipe.hgetall(key)
        pipe.zrange(keys.ACTIVE, 0, -1)
        pipe.zrange(keys.FLUSH_DUE, 0, 0, withscores=True)
        pipe.zcard(keys.FLUSH_DUE)
        pipe.zcard(keys.HELD_ROOMS)
        pipe.llen(keys.DEAD_LETTERS)
        pipe.get(keys.DEAD_LETTERS_DROPPED)
        pipe.get(keys.TICK_AT)
        pipe.get(BEAT_PUBLISHED)
        pipe.zcount(keys.RECON_UNBASED, "-inf", now - BASELINE_DUE)
        for zkey in (keys.FLUSH_DUE, keys.ENDGAME_DUE):
            pipe.zrangebyscore(zkey, "-inf", now, start=0, num=OLDEST_SCAN, withscores=True)
        (raw_stats, calls_raw, sums_raw, buckets_raw, wait_raw, active, first_due, due,
         held, dead, dropped, tick_at, beat_at, unbased, flush_due, endgame_due) = pipe.execute()
        raw_stats = counters.with_dropped(raw_stats, dropped)

        ev = CounterMetricFamily("scorer_events", "Events by what became of them",
                                 labels=["outcome"])
        for name in sorted(set(counters.FIELDS) | set(EXTRA_EVENTS) | set(raw_stats)):
            ev.add_metric([name], _num(raw_stats.get(name, 0)))
        yield ev

        calls = CounterMetricFamily("scorer_tencent_calls", "Tencent calls by API and outcome",
                                    labels=["api", "outcome"])
        counts: dict[tuple[str, str], int] = {}
        for field, value in calls_raw.items():
            api, _, outcome = field.partition("|")
            counts[(api, outcome)] = _num(value)
        # Every outcome of every API seen, 0 until it happens: increase() misses the first
        # count of a series that appears with it (the first refusal would raise no alert).
        for api in {api for api, _ in counts}:
            for outcome in Outcome:
                counts.setdefault((api, outcome.value), 0)
        for (api, outcome), value in sorted(counts.items()):
            calls.add_metric([api, outcome], value)
        yield calls

        lat = HistogramMetricFamily("scorer_tencent_latency_seconds", "Tencent call latency",
                                    labels=["api"])
        for api in sorted(sums_raw):
            acc, buckets = 0, []
            for b in (*BUCKETS, "+Inf"):
                acc += _num(buckets_raw.get(f"{api}|{b}", 0))
                buckets.append((str(b), acc))
            lat.add_metric([api], buckets, _num(sums_raw[api], float))
        yield lat

        wait = CounterMetricFamily("scorer_ratelimit_wait_seconds",
                                   "Time spent waiting for the shared rate limiter",
                                   labels=["api"])
        for api, value in sorted(wait_raw.items()):
            wait.add_metric([api], _num(value, float))
        yield wait

        # Second round trip: pending value of every active battle, and which of the most
        # overdue battles really hold value (the due sets keep idle battles until the tick
        # forgets them). A battle in its end game is judged by when its value first waited
        # (ENDGAME_DUE): the tick leaves its flush due time behind while the end game runs.
        candidates = sorted({**dict(flush_due), **dict(endgame_due)}.items(),
                            key=lambda kv: kv[1])
        pending_sum, oldest = self._pending(active, [b for b, _ in candidates])
        lag = max(0.0, now - first_due[0][1]) if first_due else 0.0
        if oldest is not None:
            oldest_age = max(0.0, now - dict(candidates)[oldest])
        elif len(flush_due) >= OLDEST_SCAN or len(endgame_due) >= OLDEST_SCAN:
            # Every battle scanned was idle: the oldest with value is younger than the last
            # one scanned, so report that as an upper bound rather than a false 0.
            oldest_age = max(0.0, now - candidates[-1][1])
        else:
            oldest_age = 0.0
        yield from (
            _gauge("scorer_battles_active", "Battles registered and not yet finalized",
                   len(active)),
            _gauge("scorer_battles_due", "Battles with value waiting to be flushed", due),
            _gauge("scorer_pending_value",
                   "Value ingested or corrected, not yet sent (all battles)", pending_sum),
            _gauge("scorer_flush_lag_seconds", "How long the most overdue flush has waited",
                   lag),
            _gauge("scorer_oldest_pending_seconds",
                   "How long the most overdue battle holding value has waited", oldest_age),
            _gauge("scorer_held_rooms", "Rooms with gifts waiting for their battle", held),
            _gauge("scorer_reconcile_rooms_without_baseline",
                   f"Rooms of running battles reconcile has no baseline of {BASELINE_DUE:g} s "
                   "after their start (drift there cannot be healed)", unbased),
            _gauge("scorer_dead_letters", "Events in the dead-letter store", dead),
            _gauge("scorer_last_tick_age_seconds",
                   "Seconds since a tick last ran (+Inf: never)", age_of(tick_at, now)),
            _gauge("scorer_beat_last_publish_age_seconds",
                   "Seconds since the beat last published a tick (+Inf: no record)",
                   age_of(beat_at, now)),
        )

    def _pending(self, active: list[str], candidates: list[str]) -> tuple[int, str | None]:
        """Summed pending value of `active`, and the first of `candidates` holding value."""
        if not active and not candidates:
            return 0, None
        pipe = pipeline(self.redis)
        for bid in active:
            pipe.hvals(keys.BattleKeys(bid).pending)
        for bid in candidates:
            bk = keys.BattleKeys(bid)
            pipe.hlen(bk.pending)
            pipe.exists(bk.inflight)
        res = pipe.execute()
        total = sum(_num(v) for vals in res[:len(active)] for v in vals)
        flags = res[len(active):]
        holding = (b for i, b in enumerate(candidates) if flags[2 * i] or flags[2 * i + 1])
        return total, next(holding, None)


def registry_for(redis, broker=None, queue: str = DEFAULT_QUEUE) -> CollectorRegistry:
    """A registry with only the scorer's collector."""
    reg = CollectorRegistry()
    reg.register(ScorerCollector(redis, broker, queue))
    return reg
