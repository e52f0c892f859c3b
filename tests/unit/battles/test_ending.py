"""Unit tests of worker/engine/battles/ending.py: the end webhook's scores, then finalize."""

from __future__ import annotations

import json

import pytest

from tests.unit.conftest import T0
from tests.unit.flush.answers import ROOMS, start
from worker.engine.battles import ending
from worker.engine.battles.records import Battle
from worker.engine.battles.registry import KEEP_AFTER_END
from worker.engine.battles.roomindex import parse_index_value
from worker.engine.events import END, EndEvent, RoomInfo
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.counters import read
from worker.engine.state.keys import BattleKeys, RoomKeys

BK = BattleKeys("b1")
SCHEDULES = (keys.ACTIVE, keys.FLUSH_DUE, keys.ENDGAME_DUE, keys.RECONCILE_DUE,
             keys.UNRESOLVED, keys.AUDIT_DUE, keys.FINAL_DUE)


def end_event(scores: dict[str, int], *, start_time: float | None = None,
              end_time: float | None = None, duration_ms: int | None = None) -> EndEvent:
    """The end webhook of battle b1 with Tencent's final `scores`."""
    rooms = [RoomInfo(RoomId=r, Owner_Account=ROOMS.get(r), Score=s) for r, s in scores.items()]
    return EndEvent(CallbackCommand=END, BattleId="b1",
                    StartTime=None if start_time is None else int(start_time),
                    EndTime=None if end_time is None else int(end_time), Duration=duration_ms,
                    FromRoomInfo=rooms[0], ToRoomList=rooms[1:])


def test_the_end_webhook_keeps_tencents_scores_and_ends_the_battle_for_us(
        frt: Runtime) -> None:
    start(frt)
    ending.record_end(frt, end_event({"r1": 15, "r2": 3}, end_time=T0 + 50))
    assert json.loads(frt.redis.hget(BK.meta, "end_scores")) == {"r1": 15, "r2": 3}
    battle = Battle.load(frt, "b1")
    assert battle is not None and battle.end == T0 + 50  # the planned end: unchanged
    assert battle.ended_at == T0 and battle.has_ended(T0, margin=0.05)


def test_an_early_end_closes_the_window_in_the_index_and_the_schedule(frt: Runtime) -> None:
    start(frt)
    ending.record_end(frt, end_event({"r1": 15, "r2": 3}, end_time=T0))
    assert float(frt.redis.hget(BK.meta, "end")) == T0
    for room in ROOMS:
        assert parse_index_value(frt.redis.hget(RoomKeys(room).battles, "b1")) == (
            T0 - 10, T0, ROOMS[room])
    assert frt.redis.zscore(keys.ACTIVE, "b1") == T0


def test_an_end_first_heard_of_registers_its_battle_or_is_kept_a_day(frt: Runtime) -> None:
    ending.record_end(frt, end_event({"r1": 15, "r2": 3}, start_time=T0 - 60,
                                     end_time=T0, duration_ms=60_000))
    battle = Battle.load(frt, "b1")
    assert battle is not None and (battle.start, battle.end) == (T0 - 60, T0)
    assert battle.rooms == ROOMS and frt.redis.hget(BK.meta, "source") == "end_webhook"
    # Without its timing it cannot be placed: kept, but not forever.
    other = BattleKeys("b2")
    ending.record_end(frt, EndEvent(CallbackCommand=END, BattleId="b2",
                                    FromRoomInfo=RoomInfo(RoomId="r9", Score=4)))
    assert frt.redis.hget(other.meta, "end_scores") == '{"r9": 4}'
    assert 0 < frt.redis.ttl(other.meta) <= KEEP_AFTER_END


@pytest.mark.parametrize("left", ["pending", "inflight"])
def test_finalize_waits_while_value_is_pending_or_in_flight(frt: Runtime, left: str) -> None:
    start(frt)
    frt.redis.hset(BK.pending if left == "pending" else BK.inflight, "r1", 5)
    frt.clock = lambda: T0 + 60
    assert ending.finalize(frt, ["b1"]) == 0
    assert frt.redis.zscore(keys.FLUSH_DUE, "b1") <= T0 + 60  # its flush records the rest
    assert frt.redis.hget(BK.meta, "status") == "running"


def test_finalize_closes_compares_and_lets_every_key_expire_a_day_later(frt: Runtime) -> None:
    start(frt)
    frt.redis.hset(BK.applied, mapping={"r1": 15, "r2": 2})
    frt.redis.set(BK.lock, "a-flush", px=6000)
    ending.record_end(frt, end_event({"r1": 15, "r2": 3, "r9": 1}))
    for zkey in SCHEDULES:
        frt.redis.zadd(zkey, {"b1": T0})
    frt.clock = lambda: T0 + 60
    assert ending.finalize(frt, ["b1"]) == 1
    meta = frt.redis.hgetall(BK.meta)
    assert meta["status"] == "finished"
    assert json.loads(meta["final_applied"]) == {"r1": 15, "r2": 2}
    # Tencent's r2 differs from the ledger (r9 is not a room of the battle): kept, counted.
    assert json.loads(meta["end_mismatch"]) == {"r2": [2, 3]}
    assert read(frt.redis)["end_mismatch"] == 1
    assert all(frt.redis.zscore(zkey, "b1") is None for zkey in SCHEDULES)
    assert frt.redis.expiretime(BK.meta) == frt.redis.expiretime(BK.applied) == int(
        T0 + 60 + KEEP_AFTER_END)
    assert 0 < frt.redis.pttl(BK.lock) <= 6000  # a lock keeps its own short ttl


def test_finalize_with_matching_scores_records_no_mismatch(frt: Runtime) -> None:
    assert ending.finalize(frt, []) == 0
    start(frt)
    frt.redis.hset(BK.applied, mapping={"r1": 15, "r2": 3})
    ending.record_end(frt, end_event({"r1": 15, "r2": 3}))
    assert ending.finalize(frt, ["b1"]) == 1
    assert not frt.redis.hexists(BK.meta, "end_mismatch")
    assert read(frt.redis)["end_mismatch"] == 0


def test_a_battle_that_cannot_close_goes_to_the_back_of_the_line_and_is_overdue_at_the_bound(
        frt: Runtime) -> None:
    """The tick closes the first 200 ended battles a tick: one still holding value is scored
    now - FINAL_GRACE in ACTIVE, behind every battle that ended before, so battles that cannot
    close never hold the line; past GIVE_UP_AFTER_END it is overdue (the tick gives it up)."""
    for bid, end in (("old", T0 - 50), ("new", T0 - 20)):
        start(frt, bid, at=end - 60, rooms={f"{bid}-r": "o"})
        frt.redis.hset(BattleKeys(bid).inflight, "r:r", 5)
    overdue: list[str] = []
    assert ending.finalize(frt, ["old", "new"], overdue) == 0 and overdue == []
    assert frt.redis.zrange(keys.ACTIVE, 0, -1, withscores=True) == [
        ("new", T0 - ending.FINAL_GRACE), ("old", T0 - ending.FINAL_GRACE)]
    assert frt.redis.zscore(keys.FLUSH_DUE, "old") <= T0  # its flush settles or records it
    frt.clock = lambda: T0 - 50 + ending.GIVE_UP_AFTER_END
    assert ending.finalize(frt, ["old", "new"], overdue) == 0 and overdue == ["old"]


def test_the_give_up_bound_counts_from_the_end_or_when_tencent_said_it_ended() -> None:
    assert ending.end_of(None) == 0.0
    assert ending.end_of(Battle("b1", T0 - 60, T0, {})) == T0
    assert ending.end_of(Battle("b1", T0 - 60, T0, {}, ended_at=T0 - 30)) == T0 - 30
    assert ending.end_of(Battle("b1", 0, 0, {}, ended_at=T0 - 30)) == T0 - 30
