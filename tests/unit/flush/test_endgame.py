"""Unit tests of worker/engine/flush/endgame.py: plan and reserve (the window: battles/)."""

from __future__ import annotations

import pytest

from tests.unit.conftest import T0
from worker.engine.flush import endgame
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.keys import BattleKeys
from worker.engine.timers import TIMERS

RESERVE = keys.rate_reserve_key("set_battle_score")


def no_flush(*args: object, **kwargs: object) -> str:
    """A flush that must not be called."""
    raise AssertionError("no end-game flush was due")


def test_the_reserve_is_every_decisive_write_to_come_within_the_next_window() -> None:
    # A battle's decisive write is due in its last DECISIVE s (by the latest Tencent's clock
    # may read: `lead` ahead of ours) unless a request of it left since they began.
    now, lead, window = T0, 0.2, 1.0
    by = now + window + TIMERS.endgame.plan_every  # the next plan renews it
    starts_by = by + endgame.DECISIVE + lead  # ends by then: its stretch begins in time
    assert endgame.reserve([], now, lead, window) == 0
    hundred = [(T0 + 1.0, 0.0)] * 100  # 100 battles ending in one second: 100 writes, not 40
    assert endgame.reserve(hundred, now, lead, window) == 100
    assert endgame.reserve([(starts_by - 0.01, 0.0), (starts_by + 0.01, 0.0)], now, lead,
                           window) == 1  # the second begins its stretch after the next plan
    # Its decisive write went (a request left within its last DECISIVE s): nothing to come.
    assert endgame.reserve([(T0 + 1.0, T0 + 1.0 - endgame.DECISIVE - lead + 0.01)], now,
                           lead, window) == 0
    # A request before the stretch is not the decisive one.
    assert endgame.reserve([(T0 + 1.0, T0 - 5.0)], now, lead, window) == 1


def test_plan_promotes_battles_entering_the_window_with_value_and_keeps_their_reserve(
        frt: Runtime) -> None:
    # By Tencent's clock (+-0.5 s with no sample): the window ends at T0 + 0.5 + 1.5.
    frt.redis.zadd(keys.ACTIVE, {"entering": T0 + 1.0, "not_due_yet": T0 + 1.2,
                                 "turn_later": T0 + 1.1, "horizon": T0 + 2.5, "idle": T0 + 1.0,
                                 "far": T0 + 60, "over": T0 - 5})
    frt.redis.zadd(keys.FLUSH_DUE, {"entering": T0 - 1, "not_due_yet": T0 + 5,
                                    "turn_later": T0 + 5, "horizon": T0 - 1, "far": T0 - 1,
                                    "over": T0 - 1})
    # Value waiting for a turn planned later (Tencent's clock moved since it was planned).
    frt.redis.hset(BattleKeys("turn_later").pending, "r1", 3)
    calls = endgame.plan(frt, T0)
    assert frt.redis.zrange(keys.ENDGAME_DUE, 0, -1, withscores=True) == [
        ("entering", T0), ("turn_later", T0)]
    # Four battles with value end within the window and horizon, and the decisive stretch of
    # each begins within the next window and plan (the last's at T0 + 2.5 - DECISIVE - 0.5).
    assert calls == 4 and frt.redis.get(RESERVE) == "4"
    assert 0 < frt.redis.pttl(RESERVE) <= 2000  # it lapses if the ticks stop
    frt.redis.delete(keys.ACTIVE)
    assert endgame.plan(frt, T0) == 0
    assert not frt.redis.exists(RESERVE)


def test_plan_promotes_a_battle_in_its_window_holding_value_even_off_the_due_list(
        frt: Runtime) -> None:
    # Value in the window is the end game's whatever the due list says (a safety net: ingest
    # stores value and makes its battle due in two commands).
    frt.redis.zadd(keys.ACTIVE, {"off_list": T0 + 1.0, "off_list_idle": T0 + 1.0})
    frt.redis.hset(BattleKeys("off_list").pending, "r1", 3)
    endgame.plan(frt, T0)
    assert frt.redis.zrange(keys.ENDGAME_DUE, 0, -1) == ["off_list"]


def test_the_runner_runs_only_while_it_holds_the_end_game_lock(frt: Runtime) -> None:
    asked: list[bool] = []

    def once() -> bool:
        asked.append(True)
        return len(asked) == 1

    frt.redis.set(keys.ENDGAME_LOCK, "another-runner")
    endgame._hold_and_run(frt, no_flush, once)
    assert asked == []  # another runner holds it: this one stands by
    frt.redis.delete(keys.ENDGAME_LOCK)
    frt.redis.zadd(keys.ACTIVE, {"b1": T0 + 1.0})
    frt.redis.zadd(keys.FLUSH_DUE, {"b1": T0 - 1})
    endgame._hold_and_run(frt, no_flush, once)
    assert asked == [True, True]  # one round, then `go` said stop
    assert frt.redis.zscore(keys.ENDGAME_DUE, "b1") == T0  # its plan ran
    assert not frt.redis.exists(keys.ENDGAME_LOCK)  # and it let the lock go


def test_a_thread_runner_outlives_redis_going_away(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Redis restart made the look for a dedicated process raise, which ended the thread
    and with it the process's fallback end game (bench.chaos: "Exception in thread
    endgame")."""
    import redis

    def away(*args: object, **kwargs: object) -> bool:
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(frt.redis, "exists", away)
    endgame._stand_by(frt, no_flush, lambda: False)  # does not raise
    monkeypatch.undo()
    frt.redis.set(keys.ENDGAME_LOCK, "another-runner")  # once Redis is back: it looks again
    asked: list[bool] = []
    endgame._stand_by(frt, no_flush, lambda: asked.append(True) or False)
    assert asked == []  # another runner holds the lock: stood by, no round
    frt.redis.delete(keys.ENDGAME_LOCK)
    endgame._stand_by(frt, no_flush, lambda: asked.append(True) or False)
    assert asked == [True] and not frt.redis.exists(keys.ENDGAME_LOCK)  # took it, let it go


def test_the_runner_thread_is_started_once_per_process(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[str] = []

    class Thread:
        """Records the thread instead of starting it."""

        def __init__(self, target: object, args: tuple[object, ...], daemon: bool,
                     name: str) -> None:
            self.name = name

        def start(self) -> None:
            started.append(self.name)

    monkeypatch.setattr(endgame.threading, "Thread", Thread)
    monkeypatch.setattr(endgame, "_runner_pid", 0)  # (as in a fresh or forked process)
    endgame.ensure_runner(frt, no_flush)
    endgame.ensure_runner(frt, no_flush)
    assert started == ["endgame"]
