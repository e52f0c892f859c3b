"""Unit tests of worker/engine/flush/settle.py: a batch that may have landed, settled once."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import respx

from tests.unit.conftest import T0
from tests.unit.flush.answers import (
    BATTLE_INFO,
    SET_SCORE,
    info,
    ints,
    pend,
    scored,
    scores_of,
    sent,
    start,
)
from worker.engine.flush import settle
from worker.engine.flush.audit import AFTER_AMBIGUITY
from worker.engine.flush.inflight import AFTER_ERROR, Claim, Inflight
from worker.engine.flush.near_end import FINAL_LEAD
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.keys import BattleKeys
from worker.engine.state.lock import RedisLock

BK = BattleKeys("b1")
#: After the request ended without an answer, once it can be judged.
JUDGED = T0 + AFTER_ERROR + 0.1


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
        return_value=info("b1", {"r1": 15, "r2": 3}, status=2))
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
