"""Unit tests of worker/engine/reconcile/reconciler.py: one reconcile pass over one battle."""

from __future__ import annotations

import json

import pytest
import respx

from tests.unit.conftest import T0
from tests.unit.flush.answers import BATTLE_INFO, GIFT_COUNT, answer, info, ints, sent, start
from worker.engine.battles import ending, registry
from worker.engine.battles.records import Battle
from worker.engine.flush.inflight import LockLost
from worker.engine.reconcile import reconciler
from worker.engine.reconcile.band import Read
from worker.engine.reconcile.cadence import JUDGE_DELAY, PAIR_GAP
from worker.engine.reconcile.reconciler import Reconciler, reconcile_battle
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.counters import read
from worker.engine.state.keys import BattleKeys
from worker.engine.state.lock import RedisLock
from worker.engine.tencent.clock import DEFAULT_SPREAD
from worker.engine.tencent.errors import RateLimitTimeout
from worker.engine.timers import TIMERS

BK = BattleKeys("b1")
#: The watermark that judges reads taken before T0 - 9 but lets no new read be taken (it lags
#: by more than READ_LAG).
LAGGING = T0 - 6.0
#: The watermark of an ingest that keeps up.
KEEPING_UP = T0 - 0.5


def a_read(at: float, total: int) -> Read:
    """A get_gift_count read taken at `at` (0.2 s long) that answered `total`."""
    return {"t0": at, "t1": at + 0.2, "R": total}


def running(rt: Runtime, mark: float, **recon: object) -> None:
    """Battle b1 (T0 - 100 to T0 + 300) with its reconcile state `recon` (lists as JSON) and
    the ingest watermark at `mark`."""
    start(rt, at=T0 - 100, seconds=400)
    if recon:
        rt.redis.hset(BK.recon, mapping={k.replace("_", ":"): v if isinstance(v, str)
                                         else json.dumps(v) for k, v in recon.items()})
    rt.redis.hset(keys.INGEST_WATERMARK, "w", mark)


def test_a_drift_two_reads_agree_on_is_decided_once_for_the_flush_path(frt: Runtime) -> None:
    reads = [a_read(T0 - 20, 110), a_read(T0 - 15, 110)]  # 10 more than the baseline, twice
    running(frt, LAGGING, base_r1="100", obs_r1=reads)
    assert reconcile_battle(frt, "b1") == "corrected"
    # Decided in one step: the room's corrections and its pending value; no write here.
    assert ints(frt, BK.pending) == {"r1": 10} and ints(frt, BK.corr) == {"r1": 10}
    assert frt.redis.zscore(keys.FLUSH_DUE, "b1") == T0
    assert read(frt.redis)["reconcile_corrections"] == 1
    assert frt.redis.hget(BK.recon, "obs:r1") == "[]"
    # The same reads judged again (a pass whose updates were lost) decide nothing twice.
    frt.redis.hset(BK.recon, mapping={"obs:r1": json.dumps(reads), "last:r1": ""})
    assert reconcile_battle(frt, "b1") == "ok"
    assert ints(frt, BK.pending) == {"r1": 10} and ints(frt, BK.corr) == {"r1": 10}


def test_the_first_read_is_the_baseline_and_a_lone_drift_waits_for_its_second(
        frt: Runtime) -> None:
    running(frt, LAGGING, obs_r1=[a_read(T0 - 20, 130)])
    frt.redis.hset(BK.secs, f"r1|{int(T0) - 50}", 30)  # ingested before the read's window
    assert reconcile_battle(frt, "b1") == "ok"
    assert frt.redis.hget(BK.recon, "base:r1") == "100,100"  # what the room held before, net
    frt.redis.hset(BK.recon, "obs:r1", json.dumps([a_read(T0 - 15, 140)]))
    assert reconcile_battle(frt, "b1") == "ok"
    assert frt.redis.hget(BK.recon, "last:r1") == "10@0"  # net of no correction yet
    assert not frt.redis.exists(BK.pending)
    assert frt.redis.zscore(keys.RECONCILE_DUE, "b1") == T0 + 1.0  # its second read, soon


def test_rooms_without_a_baseline_and_the_time_to_heal_are_recorded(frt: Runtime) -> None:
    """The metrics of healing: a room without a baseline stays in bs:recon:unbased (by its
    battle's start) until it has one; a correction adds the time since its drift was first
    proved to `reconcile_heal_ms`."""
    running(frt, LAGGING, obs_r1=[a_read(T0 - 20, 100)])
    frt.clock = lambda: T0 - 5
    reconcile_battle(frt, "b1")  # r1: baseline; r2: none yet
    assert frt.redis.zrange(keys.RECON_UNBASED, 0, -1, withscores=True) == [("b1|r2", T0 - 100)]
    frt.redis.hset(BK.recon, "obs:r1", json.dumps([a_read(T0 - 19, 110)]))
    reconcile_battle(frt, "b1")  # a drift of 10, proved at T0 - 5
    frt.clock = lambda: T0 - 2
    frt.redis.hset(BK.recon, "obs:r1", json.dumps([a_read(T0 - 18, 110)]))
    assert reconcile_battle(frt, "b1") == "corrected"
    assert read(frt.redis)["reconcile_heal_ms"] == 3000
    frt.clock = lambda: T0 + 301  # ended: the pass after its end forgets the battle's rooms
    reconcile_battle(frt, "b1")
    assert frt.redis.zcard(keys.RECON_UNBASED) == 0


def test_a_battle_finalized_before_its_last_pass_leaves_no_room_without_a_baseline(
        frt: Runtime) -> None:
    running(frt, LAGGING)
    frt.clock = lambda: T0 - 5
    reconcile_battle(frt, "b1")  # no read yet: both rooms without a baseline
    assert frt.redis.zcard(keys.RECON_UNBASED) == 2
    frt.clock = lambda: T0 + 320
    ending.finalize(frt, ["b1"])  # (ended early, or its passes held back)
    assert frt.redis.zcard(keys.RECON_UNBASED) == 0


def test_a_drift_confirmed_after_the_end_is_only_reported(frt: Runtime) -> None:
    running(frt, T0 + 294, base_r1="100",
            obs_r1=[a_read(T0 + 280, 110), a_read(T0 + 285, 110)])
    frt.clock = lambda: T0 + 301  # surely ended, whatever Tencent's clock
    assert reconcile_battle(frt, "b1") == "ok"
    assert not frt.redis.exists(BK.pending) and not frt.redis.exists(BK.corr)
    assert read(frt.redis)["late_drift"] == 1
    assert frt.redis.zscore(keys.RECONCILE_DUE, "b1") is None  # no pass after the end


def test_fresh_reads_are_taken_while_ingest_keeps_up_and_judged_soon(
        frt: Runtime, respx_mock: respx.MockRouter) -> None:
    running(frt, KEEPING_UP)
    route = respx_mock.post(GIFT_COUNT).mock(return_value=answer({"TotalCoins": 120}))
    assert reconcile_battle(frt, "b1") == "ok"
    assert sorted((b["RoomId"], b["From_Account"]) for b in sent(route)) == [("r1", "o1"),
                                                                             ("r2", "o2")]
    [stored] = json.loads(frt.redis.hget(BK.recon, "obs:r2"))
    # Taken at T0 on our clock; on Tencent's, within the estimate's bounds (no sample yet).
    assert stored == {"t0": T0, "t1": T0, "R": 120, "lo": T0 - DEFAULT_SPREAD,
                      "hi": T0 + DEFAULT_SPREAD}
    # Every room waits on a read: the next pass when the confirming reads are due.
    assert frt.redis.zscore(keys.RECONCILE_DUE, "b1") == T0 + 1.0


def test_reads_give_way_to_a_crowded_ending(frt: Runtime, respx_mock: respx.MockRouter) -> None:
    """The end game keeps calls for the last writes of battles ending now: no read meanwhile
    (it would take the control plane's CPU from them); the pass comes back a pair's gap on."""
    running(frt, KEEPING_UP)
    route = respx_mock.post(GIFT_COUNT).mock(return_value=answer({"TotalCoins": 120}))
    frt.client.limiter.set_reserve("set_battle_score", TIMERS.reconcile.yield_reserve)
    assert reconcile_battle(frt, "b1") == "ok"
    assert not route.called and read(frt.redis)["reconcile_reads_yielded"] == 1
    assert frt.redis.zscore(keys.RECONCILE_DUE, "b1") == T0 + PAIR_GAP
    frt.client.limiter.set_reserve("set_battle_score", TIMERS.reconcile.yield_reserve - 1)
    assert reconcile_battle(frt, "b1") == "ok"
    assert route.call_count == 2  # a few writes to come: reads go on


def test_a_read_waits_briefly_for_a_slot_and_a_pass_without_one_comes_back_soon(
        frt: Runtime, respx_mock: respx.MockRouter, monkeypatch: pytest.MonkeyPatch) -> None:
    # The get_gift_count budget is taken: a read must not hold the control thread for the
    # limiter's own 5 s, and the other room is not tried (it would wait as long).
    running(frt, KEEPING_UP)
    route = respx_mock.post(GIFT_COUNT).mock(return_value=answer({"TotalCoins": 120}))
    waits: list[float | None] = []

    def budget_taken(api: str, max_wait: float | None = None, lane: str = "high") -> float:
        waits.append(max_wait)
        raise RateLimitTimeout(api, max_wait or 0.0)

    monkeypatch.setattr(frt.client.limiter, "acquire", budget_taken)
    assert reconcile_battle(frt, "b1") == "ok"
    assert waits == [TIMERS.reconcile.slot_wait] and route.call_count == 0
    assert read(frt.redis)["reconcile_reads_deferred"] == 1
    assert frt.redis.zscore(keys.RECONCILE_DUE, "b1") == T0 + PAIR_GAP


def test_no_read_of_a_room_with_a_baseline_while_ingest_lags(frt: Runtime) -> None:
    # A backlog: a read now could not be judged (no route is mocked; a room's baseline read
    # would be taken: tests/integration/test_reconcile.py).
    running(frt, T0 - 10, base_r1="100", base_r2="100")
    assert reconcile_battle(frt, "b1") == "ok"
    assert frt.redis.zscore(keys.RECONCILE_DUE, "b1") == T0 + frt.settings.reconcile_interval


def test_a_battle_not_started_is_resolved_and_a_given_up_one_costs_no_call(
        frt: Runtime, respx_mock: respx.MockRouter) -> None:
    registry.register(frt, "b1", 0, 300_000, {"r1": None}, "create")
    route = respx_mock.post(BATTLE_INFO).mock(return_value=info("b1", {"r1": 0}))
    assert reconcile_battle(frt, "b1") == "unresolved"
    assert route.call_count == 1
    frt.redis.hset(BK.meta, "status", "given_up")
    frt.redis.zadd(keys.RECONCILE_DUE, {"b1": T0})
    assert reconcile_battle(frt, "b1") == "given_up"
    assert route.call_count == 1
    assert frt.redis.zscore(keys.RECONCILE_DUE, "b1") is None
    frt.redis.set(BK.rlock, "another-pass")
    assert reconcile_battle(frt, "b1") == "busy"


def test_a_pass_that_lost_its_lock_decides_nothing(frt: Runtime) -> None:
    running(frt, LAGGING, base_r1="100", obs_r1=[a_read(T0 - 20, 110), a_read(T0 - 15, 110)])
    battle = Battle.load(frt, "b1")
    assert battle is not None
    lost = RedisLock(frt.redis, BK.rlock)  # never taken: its token is not the lock's
    with pytest.raises(LockLost):
        Reconciler(frt, battle, lost).run()
    assert not frt.redis.exists(BK.pending) and not frt.redis.exists(BK.corr)


def test_a_pass_woken_past_its_lease_stores_nothing(frt: Runtime,
                                                    respx_mock: respx.MockRouter) -> None:
    """A pass frozen with the lock and woken after others ran wrote back what it saw before the
    freeze: the reads taken meanwhile were erased (bench.chaos)."""
    running(frt, KEEPING_UP, obs_r1=[a_read(T0 - 1, 100)])  # a read another pass took
    respx_mock.post(GIFT_COUNT).mock(return_value=answer({"TotalCoins": 120}))
    battle = Battle.load(frt, "b1")
    assert battle is not None
    frt.redis.set(BK.rlock, "the-pass-since")
    stale = RedisLock(frt.redis, BK.rlock)  # its lease lapsed; another pass holds it
    with pytest.raises(LockLost):
        Reconciler(frt, battle, stale).run()
    assert json.loads(frt.redis.hget(BK.recon, "obs:r1")) == [a_read(T0 - 1, 100)]


def test_passes_come_every_interval_then_every_judge_delay_near_the_end(frt: Runtime) -> None:
    battle = start(frt, at=T0 - 100, seconds=400)  # ends at T0 + 300
    interval = frt.settings.reconcile_interval
    assert reconciler.next_due(frt, battle) == T0 + interval
    frt.clock = lambda: T0 + 295
    assert reconciler.next_due(frt, battle) == T0 + 295 + min(interval, JUDGE_DELAY)
    frt.clock = lambda: T0 + 300
    assert reconciler.next_due(frt, battle) is None
