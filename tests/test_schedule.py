"""Flush scheduling under the API budget: near-end first, then oldest; nobody starves."""

from __future__ import annotations

import time

from worker import keys, schedule


def test_choose_prefers_near_end_then_oldest():
    now = 1000.0
    due = [("old", 900.0), ("new", 999.0), ("ending", 999.5), ("mid", 950.0)]
    ends = {"old": 2000.0, "new": 2000.0, "ending": 1003.0, "mid": None}
    assert schedule.choose(due, ends, now, budget=2, urgent=5) == ["ending", "old"]
    assert schedule.choose(due, ends, now, budget=10, urgent=5) == ["ending", "old", "mid",
                                                                    "new"]


def test_ended_battles_come_after_every_live_one():
    """A flush after the end is refused; serving those first would make live battles late."""
    now = 1000.0
    due = [("ended", 800.0), ("ending", 999.0), ("live", 999.5)]
    ends = {"ended": 999.9, "ending": 1001.0, "live": 5000.0}
    assert schedule.choose(due, ends, now, budget=2, urgent=5) == ["ending", "live"]
    assert schedule.choose(due, ends, now, budget=3, urgent=5)[-1] == "ended"


def test_budget_follows_rate_and_tick():
    assert schedule.tick_seconds(1.0) == 0.5 and schedule.tick_seconds(0.2) == 0.1
    assert schedule.per_tick_budget(200, 1.0) == 90  # the limiter admits 90 % of the rate
    assert schedule.per_tick_budget(200, 1.0, share=0.5) == 45
    assert schedule.per_tick_budget(1, 0.2) == 1


def test_tick_dispatches_within_budget_and_starves_nobody(rt):
    from tasks.control import flush, run_tick

    rt.settings.api_rate, rt.settings.flush_interval = 12, 1.0  # 5 flushes per 0.5 s tick
    now = time.time()
    n = 23
    rt.redis.zadd(keys.FLUSH_DUE, {f"b{i}": now - 100 + i for i in range(n)})
    rt.redis.zadd(keys.ACTIVE, {f"b{i}": now + 3600 for i in range(n)})
    rt.redis.zadd(keys.ACTIVE, {"b22": now + 1})  # the newest, but about to end
    sent: list[str] = []
    out = run_tick(rt, dispatch=lambda task, ids: sent.extend(ids) if task is flush else None)
    assert out["flush"] == 5 and sent[0] == "b22" and sent[1:] == ["b0", "b1", "b2", "b3"]
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
    rt.redis.zadd(keys.ACTIVE, {"b49": now + 2})  # newest due, 40 places past the window
    sent: list[str] = []
    run_tick(rt, dispatch=lambda task, ids: sent.extend(ids) if task is flush else None)
    assert sent[0] == "b49"


def test_safety_sweep_marks_only_unmarked_battles_with_value(rt):
    """An ingest that died between its two commands leaves value not marked due: the sweep
    finds it, in a few commands however many battles are active, and leaves due times alone."""
    from tasks.control import safety_sweep
    from worker.keys import BattleKeys

    now = time.time()
    rt.redis.zadd(keys.ACTIVE, {f"s{i}": now + 600 for i in range(500)})
    rt.redis.hset(BattleKeys("s1").pending, "room", 5)       # value, not marked: the lost mark
    rt.redis.hset(BattleKeys("s2").inflight, "flush_id", "f")  # a flush left in flight
    rt.redis.hset(BattleKeys("s3").pending, "room", 7)
    rt.redis.zadd(keys.FLUSH_DUE, {"s3": now + 30})           # already due later: untouched
    safety_sweep(rt)
    due = dict(rt.redis.zrange(keys.FLUSH_DUE, 0, -1, withscores=True))
    assert set(due) == {"s1", "s2", "s3"} and due["s3"] == now + 30
    assert due["s1"] <= time.time()


def test_a_tick_sheds_work_while_ingest_is_backlogged(rt):
    """With gifts waiting in the ingest queue, a tick sends only near-end flushes and no
    reconcile: those gifts would be lost to the score at the end, late flushes would not."""
    from tasks.control import SHED_BACKLOG, flush, reconcile, run_tick

    now = time.time()
    rt.redis.zadd(keys.FLUSH_DUE, {"far": now - 50, "near": now - 1})
    rt.redis.zadd(keys.RECONCILE_DUE, {"far": now - 50, "near": now - 1})
    rt.redis.zadd(keys.ACTIVE, {"far": now + 3600, "near": now + 2})
    rt.redis.rpush("celery", *["{}"] * (SHED_BACKLOG + 1))  # the broker is this Redis here
    sent: dict = {flush: [], reconcile: []}
    out = run_tick(rt, dispatch=lambda task, ids: sent[task].extend(ids))
    assert out["shed"] == 1 and sent == {flush: ["near"], reconcile: []}
    rt.redis.delete("celery")
    rt.redis.zadd(keys.FLUSH_DUE, {"far": now - 50})
    out = run_tick(rt, dispatch=lambda task, ids: sent[task].extend(ids))
    assert out["shed"] == 0 and "far" in sent[flush] and sent[reconcile]
