"""Unit tests of worker/engine/flush/flusher.py: one flush of one battle, settled exactly once."""

from __future__ import annotations

import json
from dataclasses import replace

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
from worker.engine.flush import flusher
from worker.engine.flush.inflight import AFTER_ERROR
from worker.engine.flush.near_end import NEAR_END_READ
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.counters import read
from worker.engine.state.keys import BattleKeys
from worker.engine.state.lock import RedisLock
from worker.engine.tencent.errors import RateLimitTimeout
from worker.engine.timers import TIMERS

BK = BattleKeys("b1")


def flushes(rt: Runtime) -> list[dict[str, object]]:
    """The battle's flush records, newest first."""
    return [json.loads(x) for x in rt.redis.lrange(BK.flushes, 0, -1)]


def test_a_flush_sends_the_pending_delta_once_as_optype_1_and_commits_it(
        frt: Runtime, respx_mock: respx.MockRouter) -> None:
    start(frt)
    pend(frt, r1=5, r2=7)
    route = respx_mock.post(SET_SCORE).mock(return_value=scored())
    assert flusher.flush_battle(frt, "b1") == "ok"
    (body,) = sent(route)
    assert body["OpType"] == 1 and scores_of(body) == {"r1": 5, "r2": 7}
    assert ints(frt, BK.applied) == {"r1": 5, "r2": 7}
    assert not frt.redis.exists(BK.pending) and not frt.redis.exists(BK.inflight)
    assert [(f["outcome"], f["op"], f["scores"]) for f in flushes(frt)] == [
        ("ok", 1, {"r1": 5, "r2": 7})]
    assert float(frt.redis.hget(BK.meta, "turned_at")) == T0  # its turn: the next is planned
    # Nothing is left to send: the next flush makes no call and takes the battle off the list.
    assert flusher.flush_battle(frt, "b1") == "idle"
    assert route.call_count == 1
    assert frt.redis.zscore(keys.FLUSH_DUE, "b1") is None


def test_a_retryable_answer_leaves_the_batch_to_be_sent_again_as_it_was(
        frt: Runtime, respx_mock: respx.MockRouter) -> None:
    start(frt)
    pend(frt, r1=5)
    route = respx_mock.post(SET_SCORE).mock(
        side_effect=[httpx.Response(502), scored(), scored()])
    assert flusher.flush_battle(frt, "b1") == "retry_later"
    assert frt.redis.hget(BK.inflight, "state") == "unsent"
    assert frt.redis.hget(BK.inflight, "r:r1") == "5" and not frt.redis.exists(BK.applied)
    assert frt.redis.zscore(keys.FLUSH_DUE, "b1") == T0 + flusher.RETRY_SOON
    pend(frt, r1=1)  # a gift lands meanwhile: it waits for its own batch
    assert flusher.flush_battle(frt, "b1") == "ok"
    assert flusher.flush_battle(frt, "b1") == "ok"
    assert [scores_of(b) for b in sent(route)] == [{"r1": 5}, {"r1": 5}, {"r1": 1}]
    assert [b["OpType"] for b in sent(route)] == [1, 1, 1]
    assert ints(frt, BK.applied) == {"r1": 6}


def test_an_ambiguous_answer_is_settled_with_optype_2_of_the_totals_never_a_second_optype_1(
        frt: Runtime, respx_mock: respx.MockRouter) -> None:
    start(frt)
    frt.redis.hset(BK.applied, mapping={"r1": 10, "r2": 3})
    pend(frt, r1=5)
    route = respx_mock.post(SET_SCORE).mock(
        side_effect=[httpx.ReadTimeout("no answer"), scored()])
    assert flusher.flush_battle(frt, "b1") == "unresolved"
    assert frt.redis.hget(BK.inflight, "state") == "ambiguous"
    assert frt.redis.zscore(keys.FLUSH_DUE, "b1") == T0 + AFTER_ERROR
    # Before it can be judged, a flush makes no call at all.
    assert flusher.flush_battle(frt, "b1") == "unsettled"
    assert route.call_count == 1
    # Then the read-back says it did not land: the total is set, idempotently.
    frt.clock = lambda: T0 + AFTER_ERROR + 0.1
    respx_mock.post(BATTLE_INFO).mock(return_value=info("b1", {"r1": 10, "r2": 3}))
    assert flusher.flush_battle(frt, "b1") == "ok"
    assert [(b["OpType"], scores_of(b)) for b in sent(route)] == [(1, {"r1": 5}),
                                                                   (2, {"r1": 15})]
    assert ints(frt, BK.applied) == {"r1": 15, "r2": 3}
    assert not frt.redis.exists(BK.inflight)
    # A late landing of the first request is looked for: an audit, and a last write.
    assert frt.redis.zscore(keys.AUDIT_DUE, "b1") is not None
    assert frt.redis.zscore(keys.FINAL_DUE, "b1") is not None


def test_a_negative_delta_goes_as_optype_2_of_the_totals_clamped_at_zero(
        frt: Runtime, respx_mock: respx.MockRouter) -> None:
    start(frt)
    frt.redis.hset(BK.applied, mapping={"r1": 10, "r2": 4})
    pend(frt, r1=-3, r2=-9)  # reconcile takes back gifts never counted
    route = respx_mock.post(SET_SCORE).mock(return_value=scored())
    assert flusher.flush_battle(frt, "b1") == "ok"
    (body,) = sent(route)
    assert body["OpType"] == 2 and scores_of(body) == {"r1": 7, "r2": 0}
    assert ints(frt, BK.applied) == {"r1": 7, "r2": 0}


@pytest.mark.parametrize("told", [False, True], ids=["past_its_end", "tencent_said_ended"])
def test_no_call_once_the_battle_has_ended_the_value_is_kept_unapplied(
        frt: Runtime, respx_mock: respx.MockRouter, told: bool) -> None:
    battle = start(frt)
    pend(frt, r1=5)
    if told:  # the end webhook (or a 100006) came before the planned end
        frt.redis.hset(BK.meta, "ended_at", T0)
    else:  # surely past the end by Tencent's clock (+-0.5 s) and the margin
        frt.clock = lambda: battle.end + 0.6
    # No route is mocked: any call would fail the test.
    assert flusher.flush_battle(frt, "b1") == "after_end"
    assert ints(frt, BK.unapplied) == {"r1": 5} and not frt.redis.exists(BK.applied)
    assert flushes(frt)[0]["outcome"] == "after_end"
    assert read(frt.redis)["unapplied"] == 5
    assert not respx_mock.calls


def test_100006_after_the_start_is_final_and_marks_the_battle_ended(
        frt: Runtime, respx_mock: respx.MockRouter) -> None:
    start(frt, at=T0 - flusher.START_SKEW - 1)
    pend(frt, r1=5)
    respx_mock.post(SET_SCORE).mock(return_value=answer(code=100006))
    assert flusher.flush_battle(frt, "b1") == "refused"
    assert ints(frt, BK.unapplied) == {"r1": 5}
    assert flushes(frt)[0]["outcome"] == "refused:100006"
    assert float(frt.redis.hget(BK.meta, "ended_at")) == T0
    pend(frt, r1=2)  # later value: recorded without a call
    assert flusher.flush_battle(frt, "b1") == "after_end"
    assert len(respx_mock.calls) == 1


def test_100006_right_after_the_start_may_be_our_clock_ahead_and_is_retried(
        frt: Runtime, respx_mock: respx.MockRouter) -> None:
    start(frt, at=T0 - 1)
    pend(frt, r1=5)
    respx_mock.post(SET_SCORE).mock(return_value=answer(code=100006))
    assert flusher.flush_battle(frt, "b1") == "retry_later"
    assert frt.redis.hget(BK.inflight, "state") == "unsent"
    assert not frt.redis.exists(BK.unapplied) and not frt.redis.hexists(BK.meta, "ended_at")


def test_a_room_tencent_does_not_know_is_kept_unapplied_the_others_applied(
        frt: Runtime, respx_mock: respx.MockRouter) -> None:
    start(frt)
    pend(frt, r1=5, r2=7)
    respx_mock.post(SET_SCORE).mock(return_value=scored({"r1": 0, "r2": 1}))
    assert flusher.flush_battle(frt, "b1") == "ok"
    assert ints(frt, BK.applied) == {"r1": 5} and ints(frt, BK.unapplied) == {"r2": 7}


def test_near_the_end_every_room_gets_its_total_and_the_call_waits_less(
        frt: Runtime, respx_mock: respx.MockRouter) -> None:
    start(frt, at=T0 - 55)  # ends at T0 + 5: within NEAR_END
    frt.redis.hset(BK.applied, mapping={"r1": 10, "r2": 3})
    pend(frt, r1=5)
    route = respx_mock.post(SET_SCORE).mock(return_value=scored())
    assert flusher.flush_battle(frt, "b1") == "ok"
    (body,) = sent(route)
    assert body["OpType"] == 2 and scores_of(body) == {"r1": 15, "r2": 3}
    assert route.calls[0].request.extensions["timeout"]["read"] == NEAR_END_READ
    assert ints(frt, BK.applied) == {"r1": 15, "r2": 3}


def test_a_refusal_by_our_configuration_keeps_the_value_and_retries_it_slowly(
        frt: Runtime, respx_mock: respx.MockRouter) -> None:
    start(frt)
    pend(frt, r1=5)
    respx_mock.post(SET_SCORE).mock(return_value=httpx.Response(403))
    assert flusher.flush_battle(frt, "b1") == "refused_later"
    assert frt.redis.hget(BK.inflight, "state") == "unsent"
    assert frt.redis.zscore(keys.FLUSH_DUE, "b1") == T0 + flusher.REFUSED_RETRY


def test_without_a_call_slot_or_with_the_lock_held_nothing_is_sent(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    start(frt)
    pend(frt, r1=5)
    frt.redis.zadd(keys.FLUSH_DUE, {"other": T0 - 3})

    def no_slot(api: str, max_wait: float | None = None, lane: str = "high") -> float:
        raise RateLimitTimeout(api, max_wait or 0.0)

    with monkeypatch.context() as m:
        m.setattr(frt.client.limiter, "acquire", no_slot)
        assert flusher.flush_battle(frt, "b1") == "rate_limited"
    # It keeps its turn: ahead of every battle already waiting.
    assert frt.redis.zrange(keys.FLUSH_DUE, 0, 0) == ["b1"]
    monkeypatch.setattr(flusher, "TIMERS",
                        replace(TIMERS, flush=replace(TIMERS.flush, lock_wait=0.03)))
    with RedisLock(frt.redis, BK.lock) as other:
        assert other.held
        assert flusher.flush_battle(frt, "b1") == "busy"
    assert frt.redis.zscore(keys.FLUSH_DUE, "b1") == T0 + flusher.RETRY_SOON
    assert frt.redis.hget(BK.pending, "r1") == "5"  # not even claimed


def test_a_commit_after_the_battles_keys_expired_leaves_no_key_without_an_expiry(
        frt: Runtime) -> None:
    """A late flush of a battle whose keys had expired made `flushes` and `unapplied` afresh
    with no expiry: bench.soak found 34,000 of them after 30 simulated days."""
    from worker.engine.flush.inflight import Claim
    from worker.engine.state.lock import RedisLock

    bk = BattleKeys("gone")
    frt.redis.hset(bk.pending, "r1", 5)
    with RedisLock(frt.redis, bk.lock) as lock:
        claim = Claim(frt, "gone", lock)
        inf = claim.claim()
        assert inf is not None
        claim.commit(inf, {}, dict(inf.scores), "after_end")
    for key in (bk.unapplied, bk.flushes):
        assert frt.redis.exists(key) and frt.redis.ttl(key) > 0, key
    # With the meta still there, they expire with it.
    frt.redis.hset(BattleKeys("kept").meta, "status", "running")
    frt.redis.expireat(BattleKeys("kept").meta, int(T0) + 500)
    frt.redis.hset(BattleKeys("kept").pending, "r1", 5)
    with RedisLock(frt.redis, BattleKeys("kept").lock) as lock:
        claim = Claim(frt, "kept", lock)
        inf = claim.claim()
        assert inf is not None
        claim.commit(inf, {"r1": 5}, {}, "ok")
    assert frt.redis.expiretime(BattleKeys("kept").applied) == int(T0) + 500
