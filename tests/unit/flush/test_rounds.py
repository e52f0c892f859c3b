"""Unit tests of worker/engine/flush/rounds.py: end-game rounds, soonest end first, HIGH lane."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.unit.conftest import T0
from worker.engine.flush import rounds
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.keys import BattleKeys
from worker.engine.tencent.limiter import HIGH, LOW


class Inline:
    """An executor that runs each task at once, in the caller's thread."""

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        fn(*args)


class Flushes:
    """A flush that records its calls and answers `outcomes` (else ok)."""

    def __init__(self, outcomes: dict[str, str] | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.outcomes = outcomes or {}

    def __call__(self, rt: Runtime, battle_id: str, **kwargs: Any) -> str:
        self.calls.append((battle_id, kwargs))
        outcome = self.outcomes.get(battle_id, "ok")
        if outcome == "raise":
            raise RuntimeError("flush failed")
        return outcome

    @property
    def battles(self) -> list[str]:
        """The battles flushed, in order."""
        return [b for b, _ in self.calls]


@pytest.fixture(autouse=True)
def inline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rounds' flushes run inline: the tests see them done when the round returns."""
    monkeypatch.setattr(rounds, "_executor", lambda: Inline())


def slots(rt: Runtime, monkeypatch: pytest.MonkeyPatch, n: int) -> list[str]:
    """Let the HIGH lane admit `n` calls, then none; returns the lanes asked, in order."""
    asked: list[str] = []

    def try_acquire(api: str, lane: str = HIGH) -> float:
        asked.append(lane)
        return 0.0 if len(asked) <= n else 0.25

    monkeypatch.setattr(rt.client.limiter, "try_acquire", try_acquire)
    return asked


def ending(rt: Runtime, ends: dict[str, float], marked: float = T0 - 1) -> None:
    """Battles ending at `ends`, value pending, in the end game since `marked`."""
    for bid, end in ends.items():
        rt.redis.hset(BattleKeys(bid).pending, "r1", 1)
        rt.redis.zadd(keys.ACTIVE, {bid: end})
        rt.redis.zadd(keys.ENDGAME_DUE, {bid: marked})


def test_value_waits_coalesce_seconds_then_goes_on_the_high_lane(frt: Runtime) -> None:
    ending(frt, {"b1": T0 + 1}, marked=T0)
    flush = Flushes()
    assert rounds.run_round(frt, flush) == 0  # more gifts of this moment may ride along
    frt.clock = lambda: T0 + rounds.COALESCE
    assert rounds.run_round(frt, flush) == 1
    assert flush.calls == [("b1", {"lane": HIGH, "admitted": True})]
    assert frt.redis.zscore(keys.ENDGAME_DUE, "b1") is None


def test_soonest_end_first_while_the_high_lane_admits_calls(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    ending(frt, {"late": T0 + 1.4, "first": T0 + 0.8, "second": T0 + 1.0})
    asked = slots(frt, monkeypatch, 2)
    flush = Flushes()
    assert rounds.run_round(frt, flush) == 2
    assert flush.battles == ["first", "second"]
    # The third (not yet in its last DECISIVE s) asked the LOW lane and found it full.
    assert asked == [HIGH, HIGH, LOW]
    assert frt.redis.zrange(keys.ENDGAME_DUE, 0, -1) == ["late"]


def test_idle_battles_and_batches_settling_under_a_lock_take_no_slot(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    ending(frt, {"b1": T0 + 1, "settling": T0 + 0.5})
    frt.redis.zadd(keys.ENDGAME_DUE, {"idle": T0 - 1})  # flushed meanwhile by the tick
    settling = BattleKeys("settling")
    frt.redis.hset(settling.inflight, "id", "f1")
    frt.redis.set(settling.lock, "a-live-flush")
    asked = slots(frt, monkeypatch, 10)
    flush = Flushes()
    assert rounds.run_round(frt, flush) == 1
    assert flush.battles == ["b1"] and len(asked) == 1
    assert frt.redis.zrange(keys.ENDGAME_DUE, 0, -1) == ["settling"]  # due once it is free


def test_value_stored_between_the_idle_read_and_its_removal_keeps_its_mark(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    # Ingest stores a gift right after the round read the battle idle: its ZADD NX met the
    # old mark, so the round's ZREM would leave the value with no end-game flush.
    frt.redis.zadd(keys.ACTIVE, {"b1": T0 + 1})
    frt.redis.zadd(keys.ENDGAME_DUE, {"b1": T0 - 1})
    zrem = frt.redis.zrem

    def ingest_lands_first(name: str, *values: str) -> int:
        frt.redis.hset(BattleKeys("b1").pending, "r1", 5)
        frt.redis.zadd(keys.ENDGAME_DUE, {"b1": T0}, nx=True)  # registry.route's mark
        return zrem(name, *values)

    monkeypatch.setattr(frt.redis, "zrem", ingest_lands_first)
    flush = Flushes()
    assert rounds.run_round(frt, flush) == 0
    assert frt.redis.zscore(keys.ENDGAME_DUE, "b1") == T0  # marked again, coalescing
    monkeypatch.setattr(frt.redis, "zrem", zrem)
    frt.clock = lambda: T0 + rounds.COALESCE
    assert rounds.run_round(frt, flush) == 1 and flush.battles == ["b1"]


def test_a_battle_whose_flush_is_on_its_way_is_not_flushed_twice(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    ending(frt, {"b1": T0 + 1})
    monkeypatch.setattr(rounds, "_running", {"b1"})
    flush = Flushes()
    assert rounds.run_round(frt, flush) == 0 and flush.calls == []
    assert frt.redis.zscore(keys.ENDGAME_DUE, "b1") == T0 - 1  # its value waits for it


@pytest.mark.parametrize("outcome,again", [("ok", False), ("busy", True),
                                           ("rate_limited", True), ("lock_lost", True),
                                           ("raise", False)])
def test_a_flush_that_could_not_run_is_back_in_the_end_game_at_once(
        frt: Runtime, outcome: str, again: bool) -> None:
    ending(frt, {"b1": T0 + 1})
    assert rounds.run_round(frt, Flushes({"b1": outcome})) == 1
    # (a flush that raised stays in the flush due list: the tick brings it back)
    assert frt.redis.zscore(keys.ENDGAME_DUE, "b1") == (T0 if again else None)
    assert "b1" not in rounds._running


def test_last_absolute_writes_start_when_due_by_tencents_latest_clock(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tencent's clock may read T0 + 0.5 already (no sample): b1 and b2 are due, b3 not yet.
    frt.redis.zadd(keys.FINAL_DUE, {"b1": T0 - 1, "b2": T0 + 0.4, "b3": T0 + 0.6})
    slots(frt, monkeypatch, 10)
    flush = Flushes({"b2": "busy"})
    assert rounds.run_finals(frt, flush) == 2
    assert flush.calls == [(b, {"lane": HIGH, "admitted": True, "final": True})
                           for b in ("b1", "b2")]
    # b2 found its battle busy: next round (due at once).
    assert frt.redis.zrange(keys.FINAL_DUE, 0, -1, withscores=True) == [("b2", 0.0),
                                                                         ("b3", T0 + 0.6)]
    slots(frt, monkeypatch, 0)
    assert rounds.run_finals(frt, flush) == 0  # no slot: it stays due
    assert frt.redis.zscore(keys.FINAL_DUE, "b2") == 0.0


def test_a_battle_surely_over_goes_after_a_live_one_with_no_slot(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """Soonest end first put battles that had just ended at the head of each round: their
    flushes make no call, yet took the slots and threads of battles still ending, which were
    reached after their end in turn (the finale's last 2 s of endings without a call)."""
    # Tencent's clock reads T0 - 0.5 at the earliest (no sample): "over" ended before that.
    ending(frt, {"over": T0 - 1.0, "live": T0 + 1.0})
    asked = slots(frt, monkeypatch, 1)
    flush = Flushes()
    assert rounds.run_round(frt, flush) == 1
    # Then its flush, which records what is left: no slot asked for it.
    assert flush.battles == ["live", "over"] and asked == [HIGH]
    assert frt.redis.zrange(keys.ENDGAME_DUE, 0, -1) == []


def test_a_last_write_for_a_battle_surely_over_is_dropped_not_sent(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    frt.redis.zadd(keys.ACTIVE, {"over": T0 - 1.0, "live": T0 + 0.5})
    frt.redis.zadd(keys.FINAL_DUE, {"over": 0, "live": T0 + 0.15})
    asked = slots(frt, monkeypatch, 10)
    flush = Flushes()
    assert rounds.run_finals(frt, flush) == 1
    assert flush.battles == ["live"] and asked == [HIGH]
    assert frt.redis.zrange(keys.FINAL_DUE, 0, -1) == []


def test_every_battle_gets_its_decisive_write_before_any_gets_another(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """Battles ending together, each in its last DECISIVE s: one that has written in them goes
    after every one that has not, whatever their ends and ids; one not yet in its last DECISIVE
    s (an early flush) waits for them too."""
    lead = frt.tclock.latest() - T0  # no sample: Tencent may read 0.5 s ahead
    soon = T0 + rounds.DECISIVE + lead - 0.1  # in its last DECISIVE s
    ending(frt, {"a_written": soon - 0.2, "b_none": soon, "c_none": soon,
                 "early": T0 + rounds.DECISIVE + lead + 0.3})
    frt.redis.hset(BattleKeys("a_written").meta, "turned_at", T0 - 0.05)
    slots(frt, monkeypatch, 2)
    flush = Flushes()
    assert rounds.run_round(frt, flush) == 2
    assert flush.battles == ["b_none", "c_none"]
    asked = slots(frt, monkeypatch, 2)
    assert rounds.run_round(frt, flush) == 2
    assert flush.battles[2:] == ["a_written", "early"]  # then soonest end first ...
    assert asked == [LOW, LOW]  # ... on what the decisive writes leave
