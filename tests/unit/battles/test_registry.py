"""Unit tests of worker/engine/battles/registry.py: registering battles, routing, holding gifts."""

from __future__ import annotations

import json

import pytest

from tests.unit.conftest import T0
from tests.unit.flush.answers import ints, start
from worker.engine.battles import final_window, registry, turns
from worker.engine.battles.records import Battle, Gift
from worker.engine.battles.roomindex import index_value, parse_index_value
from worker.engine.flush import endgame
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.counters import read
from worker.engine.state.keys import BattleKeys, RoomKeys
from worker.engine.tencent.models import MAX_SCORE
from worker.engine.tick.schedule import AUDIT_INTERVAL

BK = BattleKeys("b1")
NOW = int(T0)  # a gift's second, inside b1 (T0 - 10 to T0 + 50)


def gift(event_id: str, value: int = 5, room: str = "r1", to: str = "o1",
         second: int = NOW) -> Gift:
    """A gift to `to` in `room`."""
    return Gift(event_id, room, (to,), second, value)


def zscores(rt: Runtime, battle_id: str) -> dict[str, float | None]:
    """The battle's score in each schedule."""
    return {name: rt.redis.zscore(zkey, battle_id) for name, zkey in [
        ("active", keys.ACTIVE), ("reconcile", keys.RECONCILE_DUE),
        ("audit", keys.AUDIT_DUE), ("unresolved", keys.UNRESOLVED)]}


def test_a_started_battle_is_running_indexed_and_scheduled(frt: Runtime) -> None:
    battle = start(frt)
    assert battle == Battle("b1", T0 - 10, T0 + 50, {"r1": "o1", "r2": "o2"}, "running")
    assert Battle.load(frt, "b1") == battle
    assert frt.redis.hget(BK.meta, "source") == "unit"
    assert frt.redis.hget(RoomKeys("r2").battles, "b1") == index_value(T0 - 10, T0 + 50, "o2")
    assert zscores(frt, "b1") == {"active": T0 + 50, "reconcile": T0,
                                  "audit": T0 + AUDIT_INTERVAL, "unresolved": None}
    # Its keys outlive it by a day (and its length again), no longer.
    assert frt.redis.expiretime(BK.meta) == int(T0 + 50 + registry.KEEP_AFTER_END + 60)


def test_a_created_battle_waits_unresolved_until_its_start_webhook(frt: Runtime) -> None:
    created = registry.register(frt, "b1", 0, 300_000, {"r1": None, "r2": None}, "create")
    assert created.status == "created" and created.end == 0.0
    assert zscores(frt, "b1") == {"active": None, "reconcile": None, "audit": None,
                                  "unresolved": T0}
    # start and end 0, owner unknown: the index routes nothing to it
    assert parse_index_value(frt.redis.hget(RoomKeys("r1").battles, "b1")) == (0.0, 0.0, None)
    running = start(frt)
    assert running.status == "running"
    assert zscores(frt, "b1")["unresolved"] is None
    assert zscores(frt, "b1")["active"] == T0 + 50


def test_a_late_create_keeps_the_timing_and_a_duplicate_start_changes_nothing(
        frt: Runtime) -> None:
    start(frt, rooms={"r1": "o1", "r2": None})  # owners not all known: still created
    late = registry.register(frt, "b1", 0, 999_000, {"r1": None, "r2": "o2"}, "create")
    assert (late.start, late.end, late.status) == (T0 - 10, T0 + 50, "running")
    assert late.rooms == {"r1": "o1", "r2": "o2"}  # owners merged, none forgotten
    frt.clock = lambda: T0 + 5
    again = start(frt, at=T0 + 999)
    assert again == late and float(frt.redis.hget(BK.meta, "registered_at")) == T0


def test_a_given_up_battle_ignores_a_redelivered_create_but_a_start_revives_it(
        frt: Runtime) -> None:
    registry.register(frt, "b1", 0, 60_000, {"r1": None}, "create")
    frt.redis.hset(BK.meta, "status", "given_up")
    assert registry.register(frt, "b1", 0, 60_000, {"r1": None}, "create").status == "given_up"
    assert start(frt, rooms={"r1": "o1"}).status == "running"


def test_a_gift_to_the_owner_is_counted_once_in_pending_ledger_and_seconds(
        frt: Runtime) -> None:
    start(frt)
    counts = registry.route(frt, [gift("e1", 5), gift("e2", 7, room="r2", to="o2"),
                                  gift("e1", 5)])
    assert counts == {"ingested": 2, "duplicate": 1, "held": 0, "not_to_owner": 0}
    assert ints(frt, BK.pending) == ints(frt, BK.ledger) == {"r1": 5, "r2": 7}
    assert ints(frt, BK.secs) == {f"r1|{NOW}": 5, f"r2|{NOW}": 7}
    assert frt.redis.zscore(keys.FLUSH_DUE, "b1") == T0
    assert frt.redis.zscore(keys.ENDGAME_DUE, "b1") is None  # 50 s from its end
    assert registry.route(frt, []) == {"ingested": 0, "duplicate": 0, "held": 0,
                                       "not_to_owner": 0}


def test_under_a_long_round_a_battle_is_first_due_whole_rounds_before_its_end_game(
        frt: Runtime) -> None:
    """The tick published a 20 s round: a battle that starts (ending in 50 s) is first due a
    whole number of rounds before its end game starts, within a round: it counts in the round
    until a turn finds it idle. Value landing later in a battle not due is placed the same
    way; in one already due, it keeps the turn."""
    frt.settings.flush_interval = 1.0
    turns.publish_round(frt, 20.0)
    start(frt)  # ends at T0 + 50
    window_at = final_window.starts_at(T0 + 50, frt.tclock.latest(), T0)

    def on_the_plan() -> bool:
        first = frt.redis.zscore(keys.FLUSH_DUE, "b1")
        return T0 <= first < T0 + 20 and (window_at - first) / 20 == pytest.approx(2)

    assert on_the_plan()
    frt.redis.zrem(keys.FLUSH_DUE, "b1")  # its first turn found it idle
    registry.route(frt, [gift("e1", 5)])
    assert on_the_plan()
    frt.redis.zadd(keys.FLUSH_DUE, {"b1": T0 + 7})
    registry.route(frt, [gift("e2", 5)])
    assert frt.redis.zscore(keys.FLUSH_DUE, "b1") == T0 + 7


def test_a_gift_to_a_guest_is_no_battle_score_and_one_in_its_final_window_goes_at_once(
        frt: Runtime) -> None:
    start(frt, at=T0 - 59)  # ends at T0 + 1: in its final window
    assert endgame.in_window(T0 + 1, frt.tclock.latest())
    counts = registry.route(frt, [gift("e1", to="guest"), gift("e1", to="guest"),
                                  gift("e2", 3)])
    assert (counts["not_to_owner"], counts["duplicate"], counts["ingested"]) == (1, 1, 1)
    assert registry.outside_ids(frt, "r1") == {"e1"}
    assert ints(frt, BK.pending) == {"r1": 3}
    assert frt.redis.zscore(keys.ENDGAME_DUE, "b1") == T0


def test_a_gift_before_its_battle_is_known_is_held_then_routed_when_it_registers(
        frt: Runtime) -> None:
    assert registry.route(frt, [gift("e1", 5)])["held"] == 1
    held = frt.redis.lrange(RoomKeys("r1").held, 0, -1)
    assert [Gift.from_json(x) for x in held] == [(gift("e1", 5), T0 + registry.HOLD_SECONDS)]
    assert frt.redis.zscore(keys.HELD_ROOMS, "r1") == T0 + registry.HOLD_SECONDS
    start(frt)  # the start webhook: the held gift is scored for it
    assert ints(frt, BK.pending) == {"r1": 5}
    assert not frt.redis.exists(RoomKeys("r1").held)
    assert read(frt.redis)["ingested"] == 1


def test_a_held_gift_whose_battle_never_comes_is_counted_outside_at_its_deadline(
        frt: Runtime) -> None:
    registry.route(frt, [gift("e1", 5)])
    frt.clock = lambda: T0 + 30
    registry.route(frt, [gift("e2", 5)])  # held until T0 + 90
    frt.clock = lambda: T0 + registry.HOLD_SECONDS
    assert registry.drain_held(frt, "r1", sweep=True) == {"held": -1, "outside": 1,
                                                          "duplicate": 0}
    assert registry.outside_ids(frt, "r1") == {"e1"}
    assert [Gift.from_json(x)[0].event_id for x in frt.redis.lrange(RoomKeys("r1").held,
                                                                    0, -1)] == ["e2"]
    assert frt.redis.zscore(keys.HELD_ROOMS, "r1") == T0 + 30 + registry.HOLD_SECONDS


def test_a_gift_that_would_take_a_room_past_max_score_is_dead_lettered(frt: Runtime) -> None:
    start(frt)
    frt.redis.hset(BK.ledger, "r1", MAX_SCORE - 3)
    counts = registry.route(frt, [gift("big", 5), gift("fits", 3)])
    assert (counts["dead_lettered"], counts["ingested"]) == (1, 1)
    (letter,) = [json.loads(x) for x in frt.redis.lrange(keys.DEAD_LETTERS, 0, -1)]
    assert letter["event_id"] == "big" and "MAX_SCORE" in letter["reason"]
    assert ints(frt, BK.ledger) == {"r1": MAX_SCORE}  # exactly the bound: accepted
    assert registry.read_applied(frt, "b1") == {}
    frt.redis.hset(BK.applied, "r1", "12")
    assert registry.read_applied(frt, "b1") == {"r1": 12}


def test_a_gift_taking_a_room_one_past_max_score_is_refused_too(frt: Runtime) -> None:
    start(frt)
    frt.redis.hset(BK.ledger, "r1", MAX_SCORE - 3)
    counts = registry.route(frt, [gift("one-past", 4)])
    assert counts.get("dead_lettered") == 1
    assert ints(frt, BK.ledger) == {"r1": MAX_SCORE - 3}
