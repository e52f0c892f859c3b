"""Unit tests of worker/engine/flush/settle.py: a batch that may have landed, settled once."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import respx

from tests.unit.conftest import T0
from tests.unit.flush.answers import (
    BATTLE_INFO,
    SET_SCORE,
    answer,
    info,
    ints,
    pend,
    scored,
    scores_of,
    sent,
    start,
)
from worker.engine.battles.ending import GIVE_UP_AFTER_END
from worker.engine.flush import settle
from worker.engine.flush.audit import AFTER_AMBIGUITY
from worker.engine.flush.inflight import AFTER_ERROR, Claim, Inflight
from worker.engine.flush.near_end import FINAL_LEAD
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.counters import read
from worker.engine.state.keys import BattleKeys
from worker.engine.state.lock import RedisLock
from worker.engine.timers import TIMERS

BK = BattleKeys("b1")
#: After the request ended without an answer, once it can be judged.
JUDGED = T0 + AFTER_ERROR + 0.1
READ_BACK_RETRY = TIMERS.flush.read_back_retry


@pytest.fixture
def claim(frt: Runtime) -> Iterator[Claim]:
    """A flush's claim on battle b1 (ends at T0 + 50), under its lock, Tencent holding what
    the ledger says was applied: r1 10, r2 3."""
    battle = start(frt)
    frt.redis.hset(BK.applied, mapping={"r1": 10, "r2": 3})
    with RedisLock(frt.redis, BK.lock) as lock:
        yield Claim(frt, "b1", lock, admitted=True, battle=battle)


def unanswered(claim: Claim, **deltas: int) -> Inflight:
    """A batch of `deltas` whose request ended at T0 without an answer."""
    pend(claim.rt, **deltas)
    inf = claim.claim()
    assert inf is not None
    inf.unanswered(T0, near=False)
    return inf


@pytest.mark.parametrize("held,expected", [(None, "absent"), (15, "applied"), (10, "unsent"),
                                           (12, "other"), (0, "other")])
def test_a_read_of_one_room_says_whether_the_batch_landed(held: int | None,
                                                          expected: str) -> None:
    assert settle.verdict(held, applied=10, target=15) == expected


def test_no_read_before_the_request_can_have_landed(frt: Runtime, claim: Claim) -> None:
    inf = unanswered(claim, r1=5)
    # No route is mocked: a read-back now would fail the test.
    assert settle.resolve(claim, inf) == "unresolved"
    assert frt.redis.hget(BK.inflight, "state") == "ambiguous"
    assert ints(frt, BK.applied) == {"r1": 10, "r2": 3}


def test_a_read_showing_the_batch_landed_settles_it_without_a_write(
        frt: Runtime, claim: Claim, respx_mock: respx.MockRouter) -> None:
    inf = unanswered(claim, r1=5, r2=2)
    frt.clock = lambda: JUDGED
    respx_mock.post(BATTLE_INFO).mock(return_value=info("b1", {"r1": 15, "r2": 5}))
    assert settle.resolve(claim, inf) == "ok"
    assert ints(frt, BK.applied) == {"r1": 15, "r2": 5}
    assert not frt.redis.exists(BK.inflight) and not frt.redis.exists(BK.unapplied)


@pytest.mark.parametrize("held", [10, 99], ids=["not_landed", "someone_else_wrote"])
def test_any_other_read_sets_the_totals_with_optype_2_and_asks_for_an_audit(
        frt: Runtime, claim: Claim, respx_mock: respx.MockRouter, held: int) -> None:
    inf = unanswered(claim, r1=5)
    frt.clock = lambda: JUDGED
    respx_mock.post(BATTLE_INFO).mock(return_value=info("b1", {"r1": held, "r2": 3}))
    route = respx_mock.post(SET_SCORE).mock(return_value=scored())
    assert settle.resolve(claim, inf) == "ok"
    (body,) = sent(route)
    assert body["OpType"] == 2 and scores_of(body) == {"r1": 15}  # never OpType 1 again
    assert ints(frt, BK.applied) == {"r1": 15, "r2": 3}
    # A late landing of the lost request: audited after it, and overwritten before the end.
    assert frt.redis.zscore(keys.AUDIT_DUE, "b1") == JUDGED + AFTER_AMBIGUITY
    assert frt.redis.zscore(keys.FINAL_DUE, "b1") == T0 + 50 - FINAL_LEAD


def test_a_room_missing_from_the_read_keeps_its_delta_unapplied(
        frt: Runtime, claim: Claim, respx_mock: respx.MockRouter) -> None:
    inf = unanswered(claim, r1=5, r2=2)
    frt.clock = lambda: JUDGED
    respx_mock.post(BATTLE_INFO).mock(return_value=info("b1", {"r1": 15}))
    assert settle.resolve(claim, inf) == "ok"
    assert ints(frt, BK.applied) == {"r1": 15, "r2": 3}
    assert ints(frt, BK.unapplied) == {"r2": 2}


def test_after_the_end_the_read_alone_settles_it_and_nothing_is_written(
        frt: Runtime, claim: Claim, respx_mock: respx.MockRouter) -> None:
    inf = unanswered(claim, r1=5, r2=2)
    inf.settle_at = T0 + 3600  # it might still land, but the battle has ended (its end webhook)
    frt.redis.hset(BK.meta, "ended_at", T0)
    respx_mock.post(BATTLE_INFO).mock(
        return_value=info("b1", {"r1": 15, "r2": 3}, end=T0 - 1))
    assert settle.resolve(claim, inf) == "ok"
    assert ints(frt, BK.applied) == {"r1": 15, "r2": 3}
    assert ints(frt, BK.unapplied) == {"r2": 2}


@pytest.mark.parametrize("fails", ["read", "overwrite"])
def test_a_failed_read_or_overwrite_leaves_the_batch_ambiguous_for_the_next_try(
        frt: Runtime, claim: Claim, respx_mock: respx.MockRouter, fails: str) -> None:
    inf = unanswered(claim, r1=5)
    frt.clock = lambda: JUDGED
    if fails == "read":
        respx_mock.post(BATTLE_INFO).mock(side_effect=httpx.ConnectError("down"))
    else:
        respx_mock.post(BATTLE_INFO).mock(return_value=info("b1", {"r1": 10}))
        respx_mock.post(SET_SCORE).mock(return_value=httpx.Response(502))
    assert settle.resolve(claim, inf) == "unresolved"
    assert frt.redis.hget(BK.inflight, "state") == "ambiguous"
    assert frt.redis.hget(BK.inflight, "r:r1") == "5"
    assert ints(frt, BK.applied) == {"r1": 10, "r2": 3}


def ended_claim(claim: Claim, end: float, **deltas: int) -> Inflight:
    """A batch of `deltas` left in flight by a sender that died, its battle b1 ended at `end`
    (Tencent said so: the end webhook), get_battle_info failing ever since."""
    inf = unanswered(claim, **deltas)
    claim.rt.redis.hset(BK.meta, mapping={"end": end, "ended_at": end})
    claim.battle = None
    return inf


def test_after_the_end_a_failed_read_back_is_tried_again_ever_later(
        frt: Runtime, claim: Claim, respx_mock: respx.MockRouter) -> None:
    inf = ended_claim(claim, T0, r1=5)
    respx_mock.post(BATTLE_INFO).mock(side_effect=httpx.ConnectError("gone"))
    for since, retry in ((1, READ_BACK_RETRY), (100, 50)):
        frt.clock = lambda since=since: T0 + since
        assert settle.resolve(claim, inf) == "unresolved"
        assert frt.redis.hget(BK.inflight, "state") == "ambiguous"
        assert float(frt.redis.hget(BK.inflight, "settle_at")) == T0 + since + retry
    assert ints(frt, BK.applied) == {"r1": 10, "r2": 3} and not frt.redis.exists(BK.unapplied)


@pytest.mark.parametrize("fails", ["read", "overwrite"])
def test_past_the_bound_a_batch_no_read_settles_is_given_up_once(
        frt: Runtime, claim: Claim, respx_mock: respx.MockRouter, fails: str) -> None:
    inf = ended_claim(claim, T0 - 1, r1=5, r2=2)
    frt.clock = lambda: T0 - 1 + GIVE_UP_AFTER_END
    if fails == "read":
        respx_mock.post(BATTLE_INFO).mock(return_value=answer(code=100002))  # battle gone
    else:  # Tencent's read says not ended (its clock behind ours): the overwrite is refused
        respx_mock.post(BATTLE_INFO).mock(return_value=info("b1", {"r1": 10, "r2": 3}))
        respx_mock.post(SET_SCORE).mock(return_value=answer(code=100006))
    assert settle.resolve(claim, inf) == "given_up"
    assert not frt.redis.exists(BK.inflight)
    assert ints(frt, BK.applied) == {"r1": 10, "r2": 3}  # what we know Tencent holds
    assert ints(frt, BK.unapplied) == {"r1": 5, "r2": 2}
    assert json.loads(frt.redis.lindex(BK.flushes, 0))["outcome"] == settle.UNSETTLED
    assert read(frt.redis)["unsettled"] == 1 and read(frt.redis)["unapplied"] == 7


def test_give_up_settles_what_the_battle_holds_without_a_call_unless_its_lock_is_held(
        frt: Runtime, claim: Claim) -> None:
    """A batch that may have landed is `unsettled`; one never sent (`unsent`) and the value
    pending behind it are `after_end`, as a flush after the end records them. No route is
    mocked: a call would fail the test."""
    unanswered(claim, r1=5)
    claim.mark("unsent")
    pend(frt, r1=1, r2=4)
    claim.lock.__exit__(None, None, None)  # the flush that claimed it is gone
    frt.redis.set(BK.lock, "a-live-flush", px=6000)
    assert not settle.give_up(frt, "b1")
    assert frt.redis.hget(BK.inflight, "r:r1") == "5" and ints(frt, BK.pending) == {
        "r1": 1, "r2": 4}
    frt.redis.delete(BK.lock)
    assert settle.give_up(frt, "b1")
    assert not frt.redis.exists(BK.inflight) and not frt.redis.exists(BK.pending)
    assert ints(frt, BK.unapplied) == {"r1": 6, "r2": 4}
    outcomes = [json.loads(r)["outcome"] for r in frt.redis.lrange(BK.flushes, 0, -1)]
    assert outcomes == ["after_end", "after_end"]
    assert read(frt.redis).get("unsettled", 0) == 0
    assert settle.give_up(frt, "b1")  # nothing left: nothing more recorded
    assert frt.redis.llen(BK.flushes) == 2
