"""Unit tests of worker/engine/battles/records.py: a battle's meta hash and a held gift's JSON."""

from __future__ import annotations

import json

import pytest

from tests.unit.conftest import T0
from worker.engine.battles.records import Battle, Gift
from worker.engine.runtime import Runtime
from worker.engine.state.keys import BattleKeys


def test_a_held_gift_round_trips_through_json_with_its_deadline() -> None:
    gift = Gift("ev-1", "r1", ("o1", "guest"), 1_800_000_000, 25)
    raw = gift.to_json(T0 + 60.5)
    assert Gift.from_json(raw) == (gift, T0 + 60.5)
    # The held list's item format (the Lua ROUTE_OR_HOLD stores it as given).
    assert json.loads(raw) == {"e": "ev-1", "r": "r1", "to": ["o1", "guest"],
                               "t": 1_800_000_000, "v": 25, "d": T0 + 60.5}


def test_a_battle_is_read_from_its_meta_hash(frt: Runtime) -> None:
    assert Battle.load(frt, "b1") is None
    assert Battle.from_meta("b1", {}) is None
    frt.redis.hset(BattleKeys("b1").meta, mapping={
        "start": T0, "end": T0 + 60, "duration_ms": 60_000,
        "rooms": json.dumps({"r1": "o1", "r2": None}), "status": "created"})
    battle = Battle.load(frt, "b1")
    assert battle == Battle("b1", T0, T0 + 60, {"r1": "o1", "r2": None}, "created", 0.0)


def test_meta_without_status_is_running_and_an_end_webhook_of_old_counts_as_ended() -> None:
    battle = Battle.from_meta("b1", {"start": "1", "end": "2", "rooms": "{}"})
    assert battle is not None and (battle.status, battle.ended_at) == ("running", 0.0)
    old = Battle.from_meta("b1", {"start": "1", "end": "2", "ended_by_webhook": "7.5"})
    assert old is not None and old.ended_at == 7.5 and old.rooms == {}
    both = Battle.from_meta("b1", {"ended_at": "8", "ended_by_webhook": "7.5"})
    assert both is not None and both.ended_at == 8.0


def test_a_battle_has_ended_margin_seconds_after_its_end_or_once_tencent_said_so() -> None:
    battle = Battle("b1", T0, T0 + 60, {"r1": "o1"})
    assert not battle.has_ended(T0 + 60, margin=0.05)
    assert not battle.has_ended(T0 + 60.04, margin=0.05)
    assert battle.has_ended(T0 + 60.05, margin=0.05)
    told = Battle("b1", T0, T0 + 60, {"r1": "o1"}, ended_at=T0 + 10)
    assert told.has_ended(T0 + 11, margin=0.05)  # an early end webhook, or a 100006


def test_a_battle_whose_start_is_unknown_never_ends_by_the_clock() -> None:
    created = Battle("b1", 0.0, 0.0, {"r1": None}, "created")
    assert not created.has_ended(T0 + 10**6, margin=0.05)
    odd = Battle("b1", 0.0, T0, {"r1": None}, "created")  # an end but no start
    assert not odd.has_ended(T0 + 10**6, margin=0.05)


def test_a_battle_starts_in_the_time_to_its_start_and_zero_once_started() -> None:
    battle = Battle("b1", T0, T0 + 60, {"r1": "o1"})
    assert battle.starts_in(T0 - 0.3) == pytest.approx(0.3)
    assert battle.starts_in(T0) == 0.0 and battle.starts_in(T0 + 5) == 0.0
    assert Battle("b1", 0.0, 0.0, {"r1": None}, "created").starts_in(T0) == 0.0  # unknown
