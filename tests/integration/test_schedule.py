"""Flush scheduling under the API budget: oldest first, nobody starves; the end game has deadlines
(worker/engine/tick/schedule.py, and the tick that applies it, worker/engine/tick/dispatch.py)."""

from __future__ import annotations

import time
from dataclasses import replace

from worker.engine.state import keys
from worker.engine.state.keys import BattleKeys
from worker.engine.tick import schedule
from worker.engine.timers import TIMERS


def test_choose_is_oldest_first_or_near_end_first_when_asked():
    now = 1000.0
    due = [("old", 900.0), ("new", 999.0), ("ending", 999.5), ("mid", 950.0)]
    ends = {"old": 2000.0, "new": 2000.0, "ending": 1003.0, "mid": None}
    assert schedule.choose(due, ends, now, budget=2) == ["old", "mid"]
    # Reconciles ask for battles near their end first.
    assert schedule.choose(due, ends, now, budget=2, urgent=5) == ["ending", "old"]
    assert schedule.choose(due, ends, now, budget=10, urgent=5) == ["ending", "old", "mid",
                                                                    "new"]


def test_budget_follows_rate_and_tick():
    assert schedule.tick_seconds(1.0) == 0.25 and schedule.tick_seconds(0.2) == 0.05
    # The limiter admits 90 % of the rate per sliding second: 180/s, 45 a 0.25 s tick.
    assert schedule.per_tick_budget(200, 1.0) == 45
    assert schedule.per_tick_budget(200, 1.0, share=0.5) == 22
    assert schedule.per_tick_budget(1, 0.2) == 1
    # What the end game keeps (calls per window) comes off the top; every figure scales.
    assert schedule.per_tick_budget(200, 1.0, reserved=100) == 20
    assert schedule.per_tick_budget(400, 1.0, reserved=200) == 40
    assert schedule.per_tick_budget(200, 1.0, reserved=180) == 1


def _with_value(rt, n: int) -> None:
    """Battles b0..b(n-1) each have value waiting (the tick dispatches no idle flush)."""
    for i in range(n):
        rt.redis.hset(BattleKeys(f"b{i}").pending, "room", 1)


def test_tick_dispatches_within_budget_and_starves_nobody(rt):
    from tasks.control import flush, run_tick

    rt.settings.api_rate, rt.settings.flush_interval = 20, 1.0  # 4 flushes per 0.25 s tick
    now = time.time()
    n = 23
    rt.redis.zadd(keys.FLUSH_DUE, {f"b{i}": now - 100 + i for i in range(n)})
    rt.redis.zadd(keys.ACTIVE, {f"b{i}": now + 3600 for i in range(n)})
    rt.redis.zadd(keys.ACTIVE, {"b22": now + 4})  # the newest, near its end: no queue jump
    _with_value(rt, n)
    sent: list[str] = []
    out = run_tick(rt, dispatch=lambda task, ids: sent.extend(ids) if task is flush else None)
    assert out["flush"] == 4 and sent == ["b0", "b1", "b2", "b3"]
    for _ in range(6):  # later ticks serve the rest, oldest first, each once per interval
        run_tick(rt, dispatch=lambda task, ids: sent.extend(ids) if task is flush else None)
    assert set(sent) == {f"b{i}" for i in range(n)}


def test_a_battle_entering_its_end_game_is_served_even_behind_a_long_queue(rt, monkeypatch):
    """Deadlines are the end game's: a battle entering its final window with value waiting
    is promoted to it, however many battles wait for a freshness flush."""
    from tasks.control import flush, run_tick
    from worker.engine.flush import endgame
    from worker.engine.tick import dispatch as tick

    monkeypatch.setattr(tick, "TIMERS",
                        replace(TIMERS, tick=replace(TIMERS.tick, max_dispatch=10)))
    rt.settings.api_rate, rt.settings.flush_interval = 12, 1.0
    now = rt.clock()
    rt.redis.zadd(keys.FLUSH_DUE, {f"b{i}": now - 100 + i for i in range(50)})
    rt.redis.zadd(keys.ACTIVE, {f"b{i}": now + 3600 for i in range(50)})
    # newest due, 40 places past the dispatch window, inside its final window
    rt.redis.zadd(keys.ACTIVE, {"b49": now + endgame.FINAL_WINDOW - 0.6})
    _with_value(rt, 50)
    sent: list[str] = []
    out = run_tick(rt, dispatch=lambda task, ids: sent.extend(ids) if task is flush else None)
    assert rt.redis.zscore(keys.ENDGAME_DUE, "b49") is not None
    assert "b49" not in sent and out["reserve"] >= 1
    calls = []
    time.sleep(endgame.COALESCE)
    assert endgame.run_round(rt, lambda r, bid, **k: calls.append(bid) or "ok") == 1
    deadline = time.time() + 5  # the round's flushes run on the end game's threads
    while not calls and time.time() < deadline:
        time.sleep(0.01)
    assert calls == ["b49"]


def test_tick_plans_turns_back_from_the_end_game_and_leaves_a_battle_to_it_at_the_last(rt):
    """With a 10 s round: the oldest battle, its end game 0.5 s away, is not flushed now (due
    when its end game starts); the next, its end game 4 s away, is flushed and due again then
    (its end-game flush is its next turn); one an hour from its end is due again within a
    round, on the equal turns left to its end game."""
    from tasks.control import flush, run_tick
    from worker.engine.battles import final_window, turns

    rt.settings.api_rate, rt.settings.flush_interval = 20, 1.0  # 18/s: 180 battles = 10 s
    now = rt.clock()
    n = 180
    rt.redis.zadd(keys.FLUSH_DUE, {f"b{i}": now - 100 + i for i in range(n)})
    rt.redis.zadd(keys.ACTIVE, {f"b{i}": now + 3600 for i in range(n)})
    ahead = rt.tclock.latest() - now
    rt.redis.zadd(keys.ACTIVE, {"b0": now + 0.5 + final_window.FINAL_WINDOW + ahead,
                                "b1": now + 4 + final_window.FINAL_WINDOW + ahead})
    _with_value(rt, n)
    sent: list[str] = []
    run_tick(rt, dispatch=lambda task, ids: sent.extend(ids) if task is flush else None)
    assert sent == ["b1", "b2", "b3", "b4"]
    assert turns.round_seconds(n, 20) == 10.0
    assert abs(rt.redis.zscore(keys.FLUSH_DUE, "b0") - (now + 0.5)) < 0.05
    assert abs(rt.redis.zscore(keys.FLUSH_DUE, "b1") - (now + 4)) < 0.05
    assert now + 5 <= rt.redis.zscore(keys.FLUSH_DUE, "b2") <= now + 10.05
