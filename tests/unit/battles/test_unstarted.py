"""Unit tests of worker/engine/battles/unstarted.py: learn a battle not started, or give it up."""

from __future__ import annotations

import pytest
import respx

from tests.unit.conftest import T0
from tests.unit.flush.answers import BATTLE_INFO, ROOMS, answer, info, start
from worker.engine.battles import registry, unstarted
from worker.engine.battles.records import Battle
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.counters import read
from worker.engine.state.keys import BattleKeys, RoomKeys

BK = BattleKeys("b1")
#: A five-minute PK created at T0: given up 6 minutes later if it never starts.
DEADLINE = T0 + 300 + unstarted.GIVE_UP_GRACE


def created(rt: Runtime) -> dict[str, str]:
    """Battle b1 as its create webhook registers it at T0; returns its meta hash."""
    registry.register(rt, "b1", 0, 300_000, {"r1": None, "r2": None}, "create")
    meta: dict[str, str] = rt.redis.hgetall(BK.meta)
    return meta


def at(rt: Runtime, t: float) -> None:
    """Move the runtime's clock to `t`."""
    rt.clock = lambda: t


def test_a_battle_is_given_up_its_duration_and_a_grace_after_it_was_first_seen() -> None:
    assert unstarted.give_up_after(300.0) == 300.0 + unstarted.GIVE_UP_GRACE
    # A create webhook may carry no Duration: a minute at least.
    assert unstarted.give_up_after(0.0) == (unstarted.GIVE_UP_MIN_DURATION
                                            + unstarted.GIVE_UP_GRACE)


@pytest.mark.parametrize("now,next_try", [
    (T0, T0 + unstarted.RESOLVE_MIN_DELAY),  # at first, RESOLVE_MIN_DELAY apart
    (T0 + 100, T0 + 150),  # then half the time waited so far
    (T0 + 250, T0 + 250 + unstarted.RESOLVE_MAX_DELAY),  # at most RESOLVE_MAX_DELAY
    (DEADLINE - 10, DEADLINE),  # and the last try falls on the deadline
])
def test_a_battle_not_started_yet_is_asked_about_again_further_apart(
        frt: Runtime, respx_mock: respx.MockRouter, now: float, next_try: float) -> None:
    meta = created(frt)
    route = respx_mock.post(BATTLE_INFO).mock(return_value=info("b1", {"r1": 0, "r2": 0}))
    at(frt, now)
    assert unstarted.resolve_unstarted(frt, "b1", meta) == "unresolved"
    assert route.call_count == 1
    assert frt.redis.zscore(keys.UNRESOLVED, "b1") == next_try
    # When it was first seen unresolved is recorded (from its registration).
    assert float(frt.redis.hget(BK.meta, "unresolved_since")) == T0


def test_an_answer_with_its_start_and_owners_registers_it_running(
        frt: Runtime, respx_mock: respx.MockRouter) -> None:
    meta = created(frt)
    respx_mock.post(BATTLE_INFO).mock(side_effect=[
        info("b1", {"r1": 0, "r2": 0}, start=T0 - 5, duration_ms=300_000),  # owners unknown
        info("b1", {"r1": 0, "r2": 0}, start=T0 - 5, duration_ms=300_000, owners=ROOMS)])
    assert unstarted.resolve_unstarted(frt, "b1", meta) == "unresolved"
    assert unstarted.resolve_unstarted(frt, "b1", meta) == "resolved"
    battle = Battle.load(frt, "b1")
    assert battle is not None and battle.status == "running" and battle.rooms == ROOMS
    assert (battle.start, battle.end) == (T0 - 5, T0 + 295)
    assert frt.redis.zscore(keys.UNRESOLVED, "b1") is None
    assert frt.redis.zscore(keys.ACTIVE, "b1") == T0 + 295


@pytest.mark.parametrize("answered", ["not_started", "failed"])
def test_past_its_bound_a_battle_that_never_started_is_given_up(
        frt: Runtime, respx_mock: respx.MockRouter, answered: str) -> None:
    meta = created(frt)
    frt.redis.zadd(keys.RECONCILE_DUE, {"b1": T0})
    respx_mock.post(BATTLE_INFO).mock(return_value=info("b1", {"r1": 0, "r2": 0})
                                      if answered == "not_started" else answer(code=100002))
    at(frt, DEADLINE)
    assert unstarted.resolve_unstarted(frt, "b1", meta) == unstarted.GIVEN_UP
    meta = frt.redis.hgetall(BK.meta)
    assert meta["status"] == "given_up" and float(meta["given_up_at"]) == DEADLINE
    why = "not started" if answered == "not_started" else "get_battle_info failed: "
    assert meta["give_up_reason"].startswith(why)
    # Out of every schedule, no gift routed or held for it, its keys gone within a day.
    assert frt.redis.zscore(keys.UNRESOLVED, "b1") is None
    assert frt.redis.zscore(keys.RECONCILE_DUE, "b1") is None
    assert not frt.redis.hexists(RoomKeys("r1").battles, "b1")
    assert 0 < frt.redis.ttl(BK.meta) <= registry.KEEP_AFTER_END
    assert read(frt.redis)["given_up"] == 1


def test_a_battle_with_no_meta_at_all_gets_one_try_then_is_given_up(
        frt: Runtime, respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(BATTLE_INFO).mock(return_value=answer(code=100002))
    assert unstarted.resolve_unstarted(frt, "ghost", {}) == unstarted.GIVEN_UP
    assert route.call_count == 1


def test_a_start_webhook_meanwhile_wins_over_the_schedule_and_over_giving_up(
        frt: Runtime, respx_mock: respx.MockRouter) -> None:
    meta = created(frt)
    respx_mock.post(BATTLE_INFO).mock(return_value=info("b1", {"r1": 0, "r2": 0}))
    frt.redis.zrem(keys.UNRESOLVED, "b1")  # registered running while we asked
    assert unstarted.resolve_unstarted(frt, "b1", meta) == "unresolved"
    assert frt.redis.zscore(keys.UNRESOLVED, "b1") is None  # it stays out
    start(frt)
    assert unstarted.give_up(frt, "b1", 400.0, "not started") == "resolved"
    assert frt.redis.hget(BK.meta, "status") == "running"
    assert frt.redis.hexists(RoomKeys("r1").battles, "b1")


def test_a_very_late_start_webhook_revives_a_given_up_battle(frt: Runtime) -> None:
    created(frt)
    assert unstarted.give_up(frt, "b1", None, "not started") == unstarted.GIVEN_UP
    assert unstarted.given_up_pass(frt, "b1") == unstarted.GIVEN_UP  # a stray pass: no call
    assert not unstarted.revived(frt, "b1")
    start(frt)  # register() accepts it: its start was never known
    frt.redis.hdel(RoomKeys("r1").battles, "b1")
    frt.redis.zrem(keys.RECONCILE_DUE, "b1")
    assert unstarted.given_up_pass(frt, "b1") == "resolved"
    assert frt.redis.hexists(RoomKeys("r1").battles, "b1")  # its index entry is back
    assert frt.redis.zscore(keys.RECONCILE_DUE, "b1") == T0
