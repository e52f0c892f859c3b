"""worker.engine.state.counters: event counters and Tencent call metrics, shared in Redis."""

from __future__ import annotations

import threading

import fakeredis
import pytest

from worker.engine.state import keys
from worker.engine.state.counters import (
    BUCKETS,
    FIELDS,
    CallTally,
    bump,
    bump_many,
    read,
)
from worker.engine.state.pipeline import pipeline


def record(redis: fakeredis.FakeRedis, *calls: tuple) -> None:
    """Count `calls` ((api, outcome, seconds[, waited]) each) and write them in one round trip."""
    tally = CallTally(redis)
    for call in calls:
        tally.add(*call)
    tally.write()


def test_read_reports_every_counter_zero_before_any_bump(
        fake_redis: fakeredis.FakeRedis) -> None:
    counts = read(fake_redis)
    assert set(counts) == set(FIELDS) and not any(counts.values())
    assert list(counts) == sorted(counts)


def test_bump_adds_and_zero_writes_nothing(fake_redis: fakeredis.FakeRedis) -> None:
    bump(fake_redis, "ingested", 0)
    assert not fake_redis.exists(keys.STATS)
    bump(fake_redis, "ingested")
    bump(fake_redis, "ingested", 4)
    bump(fake_redis, "duplicate", -1)  # a correction may subtract
    assert read(fake_redis)["ingested"] == 5 and read(fake_redis)["duplicate"] == -1


def test_bump_on_a_pipeline_counts_at_execute(fake_redis: fakeredis.FakeRedis) -> None:
    pipe = pipeline(fake_redis)
    bump(pipe, "held", 2)
    assert read(fake_redis)["held"] == 0
    pipe.execute()
    assert read(fake_redis)["held"] == 2


def test_bump_many_skips_zeros_and_keeps_unknown_counters(
        fake_redis: fakeredis.FakeRedis) -> None:
    bump_many(fake_redis, {})
    bump_many(fake_redis, {"received": 0})
    assert not fake_redis.exists(keys.STATS)
    bump_many(fake_redis, {"received": 3, "ignored": 0, "new_kind": 2})
    assert fake_redis.hgetall(keys.STATS) == {"received": "3", "new_kind": "2"}
    counts = read(fake_redis)
    assert counts["received"] == 3 and counts["new_kind"] == 2 and counts["ignored"] == 0


@pytest.mark.parametrize("seconds,bucket", [(0.0, "0.01"), (0.01, "0.01"), (0.0101, "0.025"),
                                            (1.0, "1.0"), (10.0, "10.0"), (10.5, "+Inf")])
def test_a_call_is_counted_in_the_first_bucket_that_holds_its_latency(
        fake_redis: fakeredis.FakeRedis, seconds: float, bucket: str) -> None:
    record(fake_redis, ("get_gift_count", "success", seconds))
    assert fake_redis.hgetall(keys.METRICS_LATENCY_BUCKETS) == {
        f"get_gift_count|{bucket}": "1"}
    assert list(BUCKETS) == sorted(BUCKETS)


def test_call_metrics_count_outcomes_sum_latency_and_limiter_waits(
        fake_redis: fakeredis.FakeRedis) -> None:
    record(fake_redis, ("set_battle_score", "success", 0.25),
           ("set_battle_score", "retryable", 0.5, 0.125), ("set_battle_score", "success", 0.25))
    assert fake_redis.hgetall(keys.METRICS_CALLS) == {"set_battle_score|success": "2",
                                                      "set_battle_score|retryable": "1"}
    assert float(fake_redis.hget(keys.METRICS_LATENCY_SUM, "set_battle_score")) == 1.0
    assert float(fake_redis.hget(keys.METRICS_LIMITER_WAIT, "set_battle_score")) == 0.125


def test_no_limiter_wait_writes_nothing(fake_redis: fakeredis.FakeRedis) -> None:
    record(fake_redis, ("get_battle_info", "final", 0.01))
    assert not fake_redis.exists(keys.METRICS_LIMITER_WAIT)


def test_call_tally_adds_up_and_writes_once(fake_redis: fakeredis.FakeRedis) -> None:
    tally = CallTally(fake_redis, every=60.0)
    tally.record("set_battle_score", "success", 0.25)
    tally.record("set_battle_score", "success", 0.25, waited=0.5)
    assert fake_redis.hgetall(keys.METRICS_CALLS) == {}
    tally.close()
    assert fake_redis.hgetall(keys.METRICS_CALLS) == {"set_battle_score|success": "2"}
    assert fake_redis.hget(keys.METRICS_LIMITER_WAIT, "set_battle_score") == "0.5"
    tally.close()  # nothing left: nothing written twice
    assert fake_redis.hgetall(keys.METRICS_CALLS) == {"set_battle_score|success": "2"}


def test_call_tally_without_a_thread_writes_at_once(fake_redis: fakeredis.FakeRedis,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A call has landed when its metrics are recorded: no thread to be had must neither raise
    nor stop the metrics for good."""
    def no_thread(self: threading.Timer) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Timer, "start", no_thread)
    tally = CallTally(fake_redis)
    tally.record("get_gift_count", "success", 0.01)
    tally.record("get_gift_count", "success", 0.01)
    assert fake_redis.hgetall(keys.METRICS_CALLS) == {"get_gift_count|success": "2"}
