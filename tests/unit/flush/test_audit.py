"""Unit tests of worker/engine/flush/audit.py: Tencent's score read, a difference healed."""

from __future__ import annotations

import json

import httpx
import pytest
import respx

from tests.unit.conftest import T0
from tests.unit.flush.answers import BATTLE_INFO, SET_SCORE, info, scored, scores_of, sent, start
from worker.engine.battles.records import Battle
from worker.engine.flush import audit
from worker.engine.flush.near_end import FINAL_LEAD
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.counters import read
from worker.engine.state.keys import BattleKeys
from worker.engine.tick.schedule import AUDIT_INTERVAL

BK = BattleKeys("b1")


def written(rt: Runtime, **applied: int) -> Battle:
    """Battle b1 (T0 - 10 to T0 + 50), its audit due now, `applied` what we wrote."""
    battle = start(rt)
    if applied:
        rt.redis.hset(BK.applied, mapping=applied)
    rt.redis.zadd(keys.AUDIT_DUE, {"b1": T0})
    return battle


def test_a_score_that_differs_from_the_ledger_is_overwritten_and_recorded(
        frt: Runtime, respx_mock: respx.MockRouter) -> None:
    written(frt, r1=10, r2=3)
    respx_mock.post(BATTLE_INFO).mock(return_value=info("b1", {"r1": 15, "r2": 3}))
    route = respx_mock.post(SET_SCORE).mock(return_value=scored())
    assert audit.audit_battle(frt, "b1") == "corrected"
    (body,) = sent(route)
    assert body["OpType"] == 2 and scores_of(body) == {"r1": 10}  # only the room that differs
    record = json.loads(frt.redis.lindex(BK.flushes, 0))
    assert (record["outcome"], record["scores"], record["held_before"]) == (
        "audit", {"r1": 10}, {"r1": 15})
    assert read(frt.redis)["audit_corrections"] == 1
    assert frt.redis.hget(BK.applied, "r1") == "10"  # the ledger is the truth: unchanged
    assert frt.redis.zscore(keys.AUDIT_DUE, "b1") == T0 + AUDIT_INTERVAL


def test_a_score_that_matches_is_left_alone_and_audited_again_later(
        frt: Runtime, respx_mock: respx.MockRouter) -> None:
    written(frt, r1=10, r2=3)
    respx_mock.post(BATTLE_INFO).mock(return_value=info("b1", {"r1": 10, "r2": 3}))
    assert audit.audit_battle(frt, "b1") == "ok"  # (no set_battle_score route: no write)
    assert frt.redis.zscore(keys.AUDIT_DUE, "b1") == T0 + AUDIT_INTERVAL
    frt.clock = lambda: T0 + 40  # the last one comes just before the buzzer
    assert audit.audit_battle(frt, "b1") == "ok"
    assert frt.redis.zscore(keys.AUDIT_DUE, "b1") == T0 + 50 - audit.END_LEAD
    frt.clock = lambda: T0 + 48
    assert audit.audit_battle(frt, "b1") == "ok"
    assert frt.redis.zscore(keys.AUDIT_DUE, "b1") is None


def test_nothing_written_is_not_read_unless_redis_may_have_lost_a_commit(
        frt: Runtime, respx_mock: respx.MockRouter) -> None:
    written(frt)
    assert audit.audit_battle(frt, "b1") == "nothing"  # no route mocked: no call
    # After a Redis restart the only commit may be gone: Tencent holds 7, we know of nothing.
    frt.redis.sadd(keys.AUDIT_FORCED, "b1")
    respx_mock.post(BATTLE_INFO).mock(return_value=info("b1", {"r1": 7, "r2": 0}))
    route = respx_mock.post(SET_SCORE).mock(return_value=scored())
    assert audit.audit_battle(frt, "b1") == "corrected"
    assert scores_of(sent(route)[0]) == {"r1": 0}
    assert not frt.redis.sismember(keys.AUDIT_FORCED, "b1")


def test_no_audit_while_a_batch_is_in_flight_or_the_lock_is_held_or_the_read_fails(
        frt: Runtime, respx_mock: respx.MockRouter) -> None:
    written(frt, r1=10)
    frt.redis.hset(BK.inflight, mapping={"id": "f1", "r:r1": 5})
    assert audit.audit_battle(frt, "b1") == "inflight"  # the flush settles it first
    assert frt.redis.zscore(keys.AUDIT_DUE, "b1") == T0 + audit.RETRY
    frt.redis.delete(BK.inflight)
    frt.redis.set(BK.lock, "a-flush")
    assert audit.audit_battle(frt, "b1") == "busy"
    frt.redis.delete(BK.lock)
    respx_mock.post(BATTLE_INFO).mock(return_value=httpx.Response(502))
    assert audit.audit_battle(frt, "b1") == "failed"
    assert frt.redis.zscore(keys.AUDIT_DUE, "b1") == T0 + audit.RETRY


def test_an_ended_battle_is_not_audited(frt: Runtime, respx_mock: respx.MockRouter) -> None:
    written(frt, r1=10)
    respx_mock.post(BATTLE_INFO).mock(return_value=info("b1", {"r1": 99}, end=T0 - 1))
    assert audit.audit_battle(frt, "b1") == "ended"  # its EndTime has passed: no write lands
    frt.clock = lambda: T0 + 51  # surely past its end: not even read
    assert audit.audit_battle(frt, "b1") == "ended"
    assert frt.redis.zscore(keys.AUDIT_DUE, "b1") is None
    assert audit.audit_battle(frt, "unknown") == "ended"


def test_status_is_no_proof_of_an_end(frt: Runtime, respx_mock: respx.MockRouter) -> None:
    # Status's values are undocumented; the referee's Tencent answers 2 while a battle runs.
    written(frt, r1=10)
    respx_mock.post(BATTLE_INFO).mock(return_value=info("b1", {"r1": 99}, status=2))
    route = respx_mock.post(SET_SCORE).mock(return_value=scored())
    assert audit.audit_battle(frt, "b1") == "corrected"
    assert [scores_of(b) for b in sent(route)] == [{"r1": 10}]  # corrected: it runs


def test_a_settled_ambiguity_is_audited_after_a_late_landing_and_written_last_before_the_end(
        frt: Runtime) -> None:
    battle = written(frt)
    frt.redis.zadd(keys.AUDIT_DUE, {"b1": T0 + 100})
    audit.after_ambiguity(frt, battle, "b1")
    assert frt.redis.zscore(keys.AUDIT_DUE, "b1") == T0 + audit.AFTER_AMBIGUITY
    assert frt.redis.zscore(keys.FINAL_DUE, "b1") == T0 + 50 - FINAL_LEAD
    frt.redis.zrem(keys.AUDIT_DUE, "b1")  # (audited meanwhile)
    frt.clock = lambda: T0 + 45  # no later than END_LEAD before the end
    audit.after_ambiguity(frt, battle, "b1")
    assert frt.redis.zscore(keys.AUDIT_DUE, "b1") == T0 + 50 - audit.END_LEAD
    audit.schedule(frt, ["b1"], T0 + 3600)  # an audit due sooner stays sooner
    assert frt.redis.zscore(keys.AUDIT_DUE, "b1") == T0 + 50 - audit.END_LEAD


def test_a_redis_restart_makes_every_active_battle_due_for_a_forced_audit(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = ["first"]
    monkeypatch.setattr(frt.redis, "info", lambda section: {"run_id": run_id[0]})
    frt.redis.zadd(keys.ACTIVE, {"b1": T0 + 50, "b2": T0 + 80})
    assert not audit.check_restart(frt)  # first seen
    assert not audit.check_restart(frt)  # the same server
    run_id[0] = "restarted"
    assert audit.check_restart(frt)
    assert frt.redis.zrange(keys.AUDIT_DUE, 0, -1, withscores=True) == [("b1", T0), ("b2", T0)]
    assert frt.redis.smembers(keys.AUDIT_FORCED) == {"b1", "b2"}
    assert 0 < frt.redis.ttl(keys.AUDIT_FORCED) <= AUDIT_INTERVAL * 4


def test_the_last_write_sets_every_room_to_the_ledger_unread(
        frt: Runtime, respx_mock: respx.MockRouter) -> None:
    battle = written(frt, r1=10)
    frt.redis.hset(BK.inflight, "id", "f1")
    assert audit.last_write(frt, battle) == "busy"  # the end game's flush instead
    frt.redis.delete(BK.inflight)
    route = respx_mock.post(SET_SCORE).mock(return_value=scored())
    assert audit.last_write(frt, battle) == "final"
    (body,) = sent(route)
    assert body["OpType"] == 2 and scores_of(body) == {"r1": 10, "r2": 0}
    frt.clock = lambda: T0 + 51
    assert audit.last_write(frt, battle) == "ended"
    assert audit.last_write(frt, None) == "ended"
