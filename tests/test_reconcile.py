"""Reconcile against real Redis and the sandbox: it reads only what it can judge, and heals."""

from __future__ import annotations

import time

import pytest

from tests.helpers import gift_body, start_body
from worker import keys, watermark
from worker.ingest import handle
from worker.reconcile import PAIR_GAP, reconcile_battle

ROOMS = {"room_a": "owner_a", "room_b": "owner_b"}



@pytest.fixture
def battle(rt, ctl):
    info = ctl.create_battle(ROOMS, duration_ms=600_000, start=time.time() - 1)
    bid = info["BattleId"]
    handle(rt, [(start_body(bid, info["StartTime"], 600_000, ROOMS), None)])
    return bid


def _reads(ctl) -> int:
    return ctl.state()["calls_by_api"].get("get_gift_count", 0)


def _ingest_caught_up(rt, ahead: float = 100.0) -> None:
    """Every webhook is ingested (as the watermark would say after a quiet spell)."""
    rt.broker.hset(keys.INGEST_WATERMARK, "w", time.time() + ahead)


def test_no_read_while_ingest_lags(rt, ctl, battle):
    assert watermark.current(rt) == 0.0  # never advanced: nothing can be judged
    assert reconcile_battle(rt, battle) == "ok"
    assert _reads(ctl) == 0
    rt.broker.hset(keys.INGEST_WATERMARK, "w", time.time() - 30)  # a 30 s backlog
    reconcile_battle(rt, battle)
    assert _reads(ctl) == 0


def test_two_reads_per_room_until_they_are_judged(rt, ctl, battle):
    """A read and its confirming read PAIR_GAP later; then nothing until they are judged."""
    rt.broker.hset(keys.INGEST_WATERMARK, "w", time.time())  # fresh, but not past the reads
    reconcile_battle(rt, battle)
    reconcile_battle(rt, battle)
    assert _reads(ctl) == 2  # one per room; the confirming read waits PAIR_GAP
    real = rt.clock
    rt.clock = lambda: real() + PAIR_GAP
    for _ in range(3):
        reconcile_battle(rt, battle)
    assert _reads(ctl) == 4  # two per room, never more, until they are judged


def test_no_read_of_a_room_with_a_gift_in_the_uncertain_window(rt, ctl, battle):
    handle(rt, [(gift_body("room_a", "owner_a", 5), "busy1")])
    _ingest_caught_up(rt)
    reconcile_battle(rt, battle)
    calls = ctl.http.get("/sandbox/calls").json()["calls"]
    assert [c["body"]["RoomId"] for c in calls if c["api"] == "get_gift_count"] == ["room_b"]


def test_a_lost_webhook_is_corrected_after_two_agreeing_reads(rt, ctl, battle):
    _ingest_caught_up(rt)
    reconcile_battle(rt, battle)  # reads
    reconcile_battle(rt, battle)  # judges: baselines; reads again
    ctl.count_gifts([{"RoomId": "room_a", "To_Account": ["owner_a"], "From_Account": "v",
                      "Coins": 50, "Count": 1}])  # Tencent counted it; its webhook is lost
    assert reconcile_battle(rt, battle) == "ok"  # judges the read taken before it
    assert reconcile_battle(rt, battle) == "ok"  # the first read of the drift: not yet
    assert ctl.scores(battle).get("room_a", 0) == 0
    assert reconcile_battle(rt, battle) == "corrected"  # the second agrees: OpType 2
    assert ctl.scores(battle)["room_a"] == 50
    reconcile_battle(rt, battle)
    reconcile_battle(rt, battle)
    assert ctl.scores(battle)["room_a"] == 50  # corrected once


def test_a_failed_correction_keeps_its_confirmation(rt, ctl, battle):
    """The OpType 2 fails (502): the next agreeing read corrects, not two more reads."""
    _ingest_caught_up(rt)
    reconcile_battle(rt, battle)
    reconcile_battle(rt, battle)
    ctl.count_gifts([{"RoomId": "room_b", "To_Account": ["owner_b"], "From_Account": "v",
                      "Coins": 20, "Count": 1}])
    reconcile_battle(rt, battle)
    reconcile_battle(rt, battle)
    ctl.inject("http502", api="set_battle_score")  # one attempt: no sleeping under the lock
    assert reconcile_battle(rt, battle) == "ok"  # confirmed, but the write failed
    assert ctl.scores(battle).get("room_b", 0) == 0
    assert reconcile_battle(rt, battle) == "corrected"  # the next agreeing read
    assert ctl.scores(battle)["room_b"] == 20


def _writes(ctl) -> int:
    return ctl.state()["calls_by_api"].get("set_battle_score", 0)


def test_a_failed_correction_is_written_again_once_and_never_twice(rt, ctl, battle):
    """A confirmed correction whose write failed is kept as the correction total to reach
    (`fix:<room>`): the next pass writes it without waiting for two more reads, and a pass
    that finds it already reached (its record lost after it landed) writes nothing."""
    from worker.keys import BattleKeys

    bk = BattleKeys(battle)
    rt.redis.hset(bk.recon, mapping={"base:room_a": 0, "base:room_b": 0, "fix:room_a": 7})
    reconcile_battle(rt, battle)  # corr 0: the correction of 7 goes now
    assert _writes(ctl) == 1 and ctl.scores(battle)["room_a"] == 7
    assert rt.redis.hget(bk.corr, "room_a") == "7"
    assert not rt.redis.hget(bk.recon, "fix:room_a")
    rt.redis.hset(bk.recon, "fix:room_a", 7)  # its clear lost (a crash after SETTLE)
    reconcile_battle(rt, battle)
    assert _writes(ctl) == 1 and ctl.scores(battle)["room_a"] == 7  # not written twice
    assert not rt.redis.hget(bk.recon, "fix:room_a")
