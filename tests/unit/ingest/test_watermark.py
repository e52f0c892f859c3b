"""worker.engine.ingest.watermark: W, before which every queued webhook has been ingested."""

from __future__ import annotations

import json

import pytest

from tests.unit.conftest import T0
from tests.unit.state.server_clock import ServerClock
from worker.engine.ingest import watermark
from worker.engine.ingest.watermark import STUCK_SECONDS, Watermark
from worker.engine.runtime import Runtime
from worker.engine.state import keys

#: Between two ticks: more than the 50 ms the script waits before it promotes.
TICK = 0.1


def _ticks(rt: Runtime, clock: ServerClock, n: int) -> Watermark:
    """`n` ticks, TICK apart; the last one's watermark."""
    mark = watermark.advance(rt)
    for _ in range(n - 1):
        clock.advance(TICK)
        mark = watermark.advance(rt)
    return mark


def _unacked(rt: Runtime, tag: str, routing_key: str, delivered: float,
             message: object = "...") -> None:
    """A message a worker holds, as kombu's Redis transport records it."""
    rt.broker.hset(keys.KOMBU_UNACKED, tag, json.dumps([message, "", routing_key]))
    rt.broker.zadd(keys.KOMBU_UNACKED_INDEX, {tag: delivered})


def test_unknown_until_first_advanced_and_zero_when_unreadable(frt: Runtime) -> None:
    assert watermark.current(frt) == 0.0  # then nothing is judged
    frt.broker.hset(keys.INGEST_WATERMARK, "w", "garbage")
    assert watermark.current(frt) == 0.0


def test_with_nothing_queued_w_trails_the_present_by_two_ticks(frt: Runtime,
                                                               clock: ServerClock) -> None:
    first = watermark.advance(frt)
    assert first == Watermark(0.0, T0, 0) and first.lag == T0
    mark = _ticks(frt, clock, 3)
    assert mark.w == pytest.approx(T0) and mark.lag == pytest.approx(2 * TICK)
    assert watermark.current(frt) == mark.w
    mark = _ticks(frt, clock, 5)
    assert mark.lag == pytest.approx(2 * TICK)


def test_w_stops_before_a_message_that_stays_queued(frt: Runtime, clock: ServerClock) -> None:
    _ticks(frt, clock, 3)
    clock.advance(TICK)
    frt.broker.lpush(frt.settings.queue, "m1")
    queued_at = clock.t
    mark = _ticks(frt, clock, 10)
    assert mark.w < queued_at and mark.queue == 1
    frt.broker.rpop(frt.settings.queue)  # taken, and done
    assert _ticks(frt, clock, 4).w > queued_at


def test_w_waits_for_ingest_messages_held_but_not_for_control_ones(
        frt: Runtime, clock: ServerClock) -> None:
    _ticks(frt, clock, 3)
    _unacked(frt, "c1", keys.CONTROL_QUEUE, clock.t)  # a long control task: irrelevant
    assert _ticks(frt, clock, 4).w > T0 + TICK
    _unacked(frt, "i1", frt.settings.queue, clock.t)  # an ingest task still running
    held_since = clock.t
    assert _ticks(frt, clock, 10).w <= held_since
    frt.broker.hdel(keys.KOMBU_UNACKED, "i1")
    frt.broker.zrem(keys.KOMBU_UNACKED_INDEX, "i1")
    assert _ticks(frt, clock, 4).w > held_since


def test_an_unreadable_unacked_record_counts_as_an_ingest_message(
        frt: Runtime, clock: ServerClock) -> None:
    _ticks(frt, clock, 3)
    frt.broker.hset(keys.KOMBU_UNACKED, "x", "{not json")
    frt.broker.zadd(keys.KOMBU_UNACKED_INDEX, {"x": clock.t})
    since = clock.t
    assert _ticks(frt, clock, 6).w <= since  # unsure: wait


def test_w_waits_for_a_drain_claim_being_ingested(frt: Runtime, clock: ServerClock) -> None:
    _ticks(frt, clock, 3)
    frt.broker.zadd(keys.DRAIN_CLAIMS, {keys.drain_claim_key("c"): clock.t})
    claimed = clock.t
    assert _ticks(frt, clock, 8).w <= claimed
    frt.broker.zrem(keys.DRAIN_CLAIMS, keys.drain_claim_key("c"))
    assert _ticks(frt, clock, 4).w > claimed


def test_w_never_goes_back(frt: Runtime, clock: ServerClock) -> None:
    before = _ticks(frt, clock, 4).w
    watermark.restart(frt)
    assert watermark.current(frt) == before
    assert set(frt.broker.hgetall(keys.INGEST_WATERMARK)) == {"w"}
    for _ in range(4):
        clock.advance(TICK)
        assert watermark.advance(frt).w >= before


def test_a_message_of_a_lost_consumer_goes_back_to_the_queue(frt: Runtime,
                                                             clock: ServerClock) -> None:
    msg = {"body": "b", "headers": {"task": "scorer.webhook"}, "properties": {}}
    _unacked(frt, "dead", frt.settings.queue, T0 - STUCK_SECONDS - 1, msg)
    _unacked(frt, "ctl", keys.CONTROL_QUEUE, T0 - 60)  # control tasks run long: kept
    _unacked(frt, "live", frt.settings.queue, T0 - 1)  # just taken: kept
    frt.broker.hset(keys.KOMBU_UNACKED, "junk", "{not json")
    frt.broker.zadd(keys.KOMBU_UNACKED_INDEX, {"junk": T0 - 60, "gone": T0 - 60})
    frt.broker.hset(keys.INGEST_WATERMARK, mapping={"w": "1", "cp_at": "2", "cp_msg": "m"})
    assert watermark.give_back_stuck(frt) == 1
    assert [json.loads(m) for m in frt.broker.lrange(frt.settings.queue, 0, -1)] == [msg]
    assert set(frt.broker.hkeys(keys.KOMBU_UNACKED)) == {"ctl", "live", "junk"}
    assert "dead" not in frt.broker.zrange(keys.KOMBU_UNACKED_INDEX, 0, -1)
    assert frt.broker.hgetall(keys.INGEST_WATERMARK) == {"w": "1"}  # W restarts its checkpoint
    assert watermark.give_back_stuck(frt) == 0


def test_give_back_stuck_moves_at_most_its_limit(frt: Runtime, clock: ServerClock) -> None:
    for i in range(5):
        _unacked(frt, f"d{i}", frt.settings.queue, T0 - 60)
    assert watermark.give_back_stuck(frt, limit=2) == 2
    assert frt.broker.llen(frt.settings.queue) == 2 and frt.broker.hlen(keys.KOMBU_UNACKED) == 3
