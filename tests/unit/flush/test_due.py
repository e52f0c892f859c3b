"""Unit tests of worker/engine/flush/due.py: what a flush would do now, and the flush due list."""

from __future__ import annotations

import pytest

from tests.unit.conftest import T0
from tests.unit.flush.answers import pend, start
from worker.engine.flush import due
from worker.engine.flush.inflight import LANDING_WINDOW
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.keys import BattleKeys

BK = BattleKeys("b1")


def in_flight(rt: Runtime, state: str, settle_at: float) -> None:
    """A batch of battle b1 in flight, in `state`, judged from `settle_at`."""
    rt.redis.hset(BK.inflight, mapping={"id": "f1", "state": state, "settle_at": settle_at,
                                        "r:r1": 5})


def test_idle_with_nothing_to_send_and_a_call_with_pending_value(frt: Runtime) -> None:
    battle = start(frt)
    assert due.needs_and_battle(frt, "b1") == ("idle", battle)
    pend(frt, r1=5)
    assert due.needs(frt, "b1") == "call"
    in_flight(frt, "unsent", 0)  # a batch a retryable answer left: sent again
    frt.redis.delete(BK.pending)
    assert due.needs(frt, "b1") == "call"
    assert due.needs(frt, "unknown") == "idle"


@pytest.mark.parametrize("state", ["sending", "ambiguous"])
def test_a_batch_that_may_still_land_is_busy_under_a_lock_else_unsettled_until_judged(
        frt: Runtime, state: str) -> None:
    start(frt)
    in_flight(frt, state, T0 + 1)
    assert due.needs(frt, "b1") == "unsettled"  # its sender died: wait, then judge it
    frt.redis.set(BK.lock, "a-live-flush")
    assert due.needs(frt, "b1") == "busy"  # a live flush settles it in a moment
    frt.clock = lambda: T0 + 1
    assert due.needs(frt, "b1") == "call"  # it can be judged now


def test_an_ended_battle_is_free_to_record_without_a_call(frt: Runtime) -> None:
    battle = start(frt)
    frt.clock = lambda: battle.end + 0.6  # surely ended, whatever Tencent's clock (+-0.5 s)
    assert due.needs(frt, "b1") == "idle"
    pend(frt, r1=5)
    assert due.needs(frt, "b1") == "free"
    frt.redis.delete(BK.pending)
    in_flight(frt, "ambiguous", T0 + 3600)  # even a batch that might still land
    assert due.needs(frt, "b1") == "free"


def test_settle_time_is_now_without_a_batch_else_when_it_can_be_judged(frt: Runtime) -> None:
    assert due.settle_time(frt, "b1") == T0
    in_flight(frt, "ambiguous", T0 + 2.5)
    assert due.settle_time(frt, "b1") == T0 + 2.5
    frt.redis.hdel(BK.inflight, "settle_at")
    frt.redis.hset(BK.inflight, "sent_at", T0 - 1)  # a record without settle_at
    assert due.settle_time(frt, "b1") == T0 - 1 + LANDING_WINDOW


def test_due_soon_and_due_at_with_zadd_flags(frt: Runtime) -> None:
    due.due_at(frt, "b1", T0 + 7, xx=True)  # not on the list: xx adds nothing
    assert frt.redis.zscore(keys.FLUSH_DUE, "b1") is None
    due.due_soon(frt, "b1")
    assert frt.redis.zscore(keys.FLUSH_DUE, "b1") == T0 + due.RETRY_SOON
    due.due_at(frt, "b1", T0 + 7, xx=True)
    assert frt.redis.zscore(keys.FLUSH_DUE, "b1") == T0 + 7


def test_a_flush_that_found_no_slot_goes_back_to_the_head_of_the_line(frt: Runtime) -> None:
    due.first_in_line(frt, "b1")  # an empty list: due now
    assert frt.redis.zscore(keys.FLUSH_DUE, "b1") == T0
    frt.redis.zadd(keys.FLUSH_DUE, {"old": T0 - 30, "new": T0 + 1})
    due.first_in_line(frt, "b2")
    assert frt.redis.zrange(keys.FLUSH_DUE, 0, -1) == ["b2", "old", "b1", "new"]
    assert frt.redis.zscore(keys.FLUSH_DUE, "b2") == pytest.approx(T0 - 30 - 0.001)


def test_only_battles_without_value_are_forgotten(frt: Runtime) -> None:
    frt.redis.zadd(keys.FLUSH_DUE, {"idle": T0 - 5, "pending": T0 - 5, "inflight": T0 - 5})
    frt.redis.hset(BattleKeys("pending").pending, "r1", 3)
    frt.redis.hset(BattleKeys("inflight").inflight, "id", "f1")
    assert due.holding_value(frt, ["idle", "pending", "inflight"]) == ["pending", "inflight"]
    due.forget_idle(frt, ["idle", "pending", "inflight"])
    # Those holding value (an ingest raced the ZREM) are due again at once.
    assert dict(frt.redis.zrange(keys.FLUSH_DUE, 0, -1, withscores=True)) == {
        "pending": T0, "inflight": T0}
    due.forget_if_idle(frt, BattleKeys("pending"))
    assert frt.redis.zscore(keys.FLUSH_DUE, "pending") == T0
    due.forget_idle(frt, [])  # nothing to do


def test_value_before_the_battle_has_surely_started_is_early_not_a_call(frt: Runtime) -> None:
    # A webhook up to 0.5 s ahead of its gift's counting brings value just before the start:
    # sent then, Tencent refused it (100006) and it went again.
    battle = start(frt, at=T0 + 1.0)
    pend(frt, r1=5)
    # With no sample, Tencent's clock may read 0.5 s behind ours: surely started at T0 + 1.5.
    assert due.needs_and_battle(frt, "b1") == ("early", battle)
    assert battle.starts_in(frt.tclock.earliest()) == pytest.approx(1.5)
    frt.clock = lambda: T0 + 1.5
    assert due.needs(frt, "b1") == "call"
