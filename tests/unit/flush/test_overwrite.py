"""Unit tests of worker/engine/flush/overwrite.py: the one OpType 2 writer and its arithmetic."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest
import respx

from tests.unit.conftest import T0
from tests.unit.flush.answers import SET_SCORE, answer, scored, scores_of, sent, start
from worker.engine.flush.inflight import LockLost
from worker.engine.flush.near_end import NEAR_END_READ
from worker.engine.flush.overwrite import moved, overwrite, totals
from worker.engine.runtime import Runtime
from worker.engine.state.keys import BattleKeys
from worker.engine.state.lock import RedisLock

log = logging.getLogger("test.overwrite")


@pytest.fixture
def lock(frt: Runtime) -> Iterator[RedisLock]:
    """The lock of battle b1, held."""
    with RedisLock(frt.redis, BattleKeys("b1").lock) as held:
        yield held


def test_totals_are_held_plus_delta_per_room_asked_never_below_zero() -> None:
    held = {"r1": 10, "r2": 4}
    assert totals(held, {"r1": 5}, {"r1"}) == {"r1": 15}
    assert totals(held, {"r1": 5}, {"r1", "r2", "r3"}) == {"r1": 15, "r2": 4, "r3": 0}
    assert totals(held, {"r1": -30, "r2": -1}, {"r1", "r2"}) == {"r1": 0, "r2": 3}


def test_moved_is_what_the_write_adds_to_the_ledger_for_the_rooms_it_set() -> None:
    target = {"r1": 15, "r2": 0, "r3": 7}
    held = {"r1": 10, "r2": 4}
    assert moved(target, held, ["r1", "r2", "r3"]) == {"r1": 5, "r2": -4, "r3": 7}
    assert moved(target, held, ["r1"]) == {"r1": 5}  # a room refused moved nothing
    assert moved(target, held, []) == {}


def test_overwrite_sends_one_optype_2_of_the_target_and_returns_the_answer(
        frt: Runtime, lock: RedisLock, respx_mock: respx.MockRouter) -> None:
    battle = start(frt)
    route = respx_mock.post(SET_SCORE).mock(return_value=scored({"r1": 0, "r2": 1}))
    res = overwrite(frt, "b1", battle, lock, {"r1": 15, "r2": 3}, "test write", log)
    assert res is not None and res.split(["r1", "r2"]) == (["r1"], ["r2"])
    (body,) = sent(route)
    assert body["OpType"] == 2 and scores_of(body) == {"r1": 15, "r2": 3}
    assert route.calls[0].request.extensions["timeout"]["read"] == 5.0  # far from the end


def test_near_the_end_the_write_waits_less_for_its_answer(
        frt: Runtime, lock: RedisLock, respx_mock: respx.MockRouter) -> None:
    battle = start(frt, at=T0 - 57)  # ends at T0 + 3
    route = respx_mock.post(SET_SCORE).mock(return_value=scored())
    assert overwrite(frt, "b1", battle, lock, {"r1": 1}, "test write", log) is not None
    assert route.calls[0].request.extensions["timeout"]["read"] == NEAR_END_READ


def test_a_lost_lock_raises_before_any_call(frt: Runtime, lock: RedisLock) -> None:
    battle = start(frt)
    lock.lost = True  # the heartbeat found our lock gone: another writer may hold the battle
    with pytest.raises(LockLost):  # (no route is mocked: a call would fail differently)
        overwrite(frt, "b1", battle, lock, {"r1": 15}, "test write", log)


@pytest.mark.parametrize("reply,ambiguous", [
    (httpx.ReadTimeout("no answer"), True),
    (httpx.ConnectError("refused"), False),
    (answer(code=100002), False),
    (httpx.Response(502), False),
])
def test_a_failed_write_returns_none_and_only_an_ambiguous_one_is_reported(
        frt: Runtime, lock: RedisLock, respx_mock: respx.MockRouter,
        reply: httpx.Response | Exception, ambiguous: bool) -> None:
    battle = start(frt)
    route = respx_mock.post(SET_SCORE).mock(side_effect=[reply])
    may_land: list[bool] = []
    res = overwrite(frt, "b1", battle, lock, {"r1": 15}, "test write", log,
                    on_ambiguous=lambda: may_land.append(True))
    assert res is None and route.call_count == 1  # one attempt, never retried here
    assert may_land == ([True] if ambiguous else [])
