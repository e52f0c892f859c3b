"""Flush scheduling under the API budget: near-end first, then oldest; nobody starves."""

from __future__ import annotations

import time

from worker.keys import BattleKeys
from worker import keys, schedule


def test_choose_prefers_near_end_then_oldest():
    now = 1000.0
    due = [("old", 900.0), ("new", 999.0), ("ending", 999.5), ("mid", 950.0)]
    ends = {"old": 2000.0, "new": 2000.0, "ending": 1003.0, "mid": None}
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
    rt.redis.zadd(keys.ACTIVE, {"b22": now + 4})  # the newest, but near its end
    _with_value(rt, n)
    sent: list[str] = []
    out = run_tick(rt, dispatch=lambda task, ids: sent.extend(ids) if task is flush else None)
    assert out["flush"] == 4 and sent[0] == "b22" and sent[1:] == ["b0", "b1", "b2"]
    for _ in range(6):  # later ticks serve the rest, oldest first, each once per interval
        run_tick(rt, dispatch=lambda task, ids: sent.extend(ids) if task is flush else None)
    assert set(sent) == {f"b{i}" for i in range(n)}


def test_a_battle_about_to_end_is_served_even_behind_a_long_queue(rt, monkeypatch):
    import tasks.control as control
    from tasks.control import flush, run_tick

    monkeypatch.setattr(control, "MAX_DISPATCH", 10)
    rt.settings.api_rate, rt.settings.flush_interval = 12, 1.0
    now = time.time()
    rt.redis.zadd(keys.FLUSH_DUE, {f"b{i}": now - 100 + i for i in range(50)})
    rt.redis.zadd(keys.ACTIVE, {f"b{i}": now + 3600 for i in range(50)})
    rt.redis.zadd(keys.ACTIVE, {"b49": now + 4})  # newest due, 40 places past the window
    _with_value(rt, 50)
    sent: list[str] = []
    run_tick(rt, dispatch=lambda task, ids: sent.extend(ids) if task is flush else None)
    assert sent[0] == "b49"
