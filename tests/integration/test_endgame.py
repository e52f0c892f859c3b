"""The end game: the last second counts, on Tencent's clock, whatever its offset from ours."""

from __future__ import annotations

import threading
import time

import pytest

from worker.engine.flush import endgame
from worker.engine.state import keys
from worker.engine.state.keys import BattleKeys
from worker.engine.tencent.limiter import RedisRateLimiter


def test_deadlines_compete_soonest_end_first(rt):
    """Three battles with value in their end game, a budget of two calls: the two that end
    first get them; the third keeps its place for the next round."""
    now = rt.clock()
    rt.client.limiter = RedisRateLimiter(rt.redis, 2, headroom=1.0)
    rt.redis.zadd(keys.ACTIVE, {"late": now + 1.4, "first": now + 0.6, "second": now + 0.9})
    rt.redis.zadd(keys.ENDGAME_DUE, {b: now - 1 for b in ("late", "first", "second", "idle")})
    for b in ("late", "first", "second"):
        rt.redis.hset(BattleKeys(b).pending, "room", 5)
    flushed, done = [], threading.Event()

    def flush(rt_, bid, lane, admitted):
        assert lane == "high" and admitted
        flushed.append(bid)
        if len(flushed) == 2:
            done.set()
        return "ok"

    assert endgame.run_round(rt, flush) == 2
    assert done.wait(5)
    assert sorted(flushed) == ["first", "second"]
    assert rt.redis.zrange(keys.ENDGAME_DUE, 0, -1) == ["late"]  # "idle" took no slot


def test_peek_reads_what_the_rounds_and_the_last_writes_would_in_one_round_trip(rt):
    now = rt.clock()
    assert endgame.peek(rt) == ([], [])
    rt.redis.zadd(keys.ENDGAME_DUE, {"ready": now - 1, "coalescing": now})
    rt.redis.zadd(keys.FINAL_DUE, {"last": now - 1, "later": now + 60})
    assert endgame.peek(rt) == (["ready"], ["last"])
    rt.redis.zadd(keys.ACTIVE, {"ready": now + 1.0})
    rt.redis.hset(BattleKeys("ready").pending, "room", 5)
    calls = []
    assert endgame.run_round(rt, lambda *a, **k: calls.append(a) or "ok", ["ready"]) == 1


def test_value_waits_to_coalesce_then_goes_at_once(rt):
    now = rt.clock()
    rt.redis.zadd(keys.ACTIVE, {"b": now + 1.0})
    rt.redis.zadd(keys.ENDGAME_DUE, {"b": now})  # just landed: a few ms for its neighbours
    rt.redis.hset(BattleKeys("b").pending, "room", 5)
    calls = []
    assert endgame.run_round(rt, lambda *a, **k: calls.append(a) or "ok") == 0
    time.sleep(endgame.COALESCE)
    assert endgame.run_round(rt, lambda *a, **k: calls.append(a) or "ok") == 1


def test_the_reserve_keeps_the_decisive_writes_to_come_free_of_low_calls(rt):
    """The finale: the battles that ended a moment ago filled the window with HIGH calls, the
    limiter then let LOW calls take the rest (it holds back the reserve less the window's HIGH
    calls), and the last battles of the next second got no write. The reserve now keeps the
    writes to come free whatever HIGH calls the window already holds."""
    from worker.engine.tencent.limiter import HIGH, LOW, RedisRateLimiter

    limiter = RedisRateLimiter(rt.redis, 20, headroom=1.0)
    rt.client.limiter = limiter
    for _ in range(10):  # the writes of the battles that just ended
        assert limiter.try_acquire("set_battle_score", HIGH) == 0
    now = rt.clock()
    rt.redis.zadd(keys.ACTIVE, {f"b{i}": now + 0.5 for i in range(6)})
    rt.redis.zadd(keys.FLUSH_DUE, {f"b{i}": now for i in range(6)})
    assert endgame.plan(rt, now) == 6
    low = 0
    while limiter.try_acquire("set_battle_score", LOW) == 0:
        low += 1
    assert low == 20 - 10 - 6  # what the window has left after the six to come
    for _ in range(6):
        assert limiter.try_acquire("set_battle_score", HIGH) == 0


@pytest.mark.parametrize("offset", [-0.5, 0.5])
def test_every_gift_a_second_before_the_end_counts_whatever_tencents_clock(offset):
    """The README's "In time" guarantee, with the stack as a user starts it (one worker at
    the default concurrency, beat), gifts at 10/s per battle, marks at end-1.0 s and -0.5 s."""
    from bench.edge import run_edge
    from bench.run import Bench

    bench = Bench(workers=1, concurrency=None, prefix="bs-test-edge-")
    try:
        run = run_edge(bench, "scorer", 4, duration=8.0, rate=10.0, offset=offset)
    finally:
        bench.close()
    assert run.right == 4, run.wrong
    assert run.counted_1s == 4 and run.over == 0


def test_a_battle_whose_batch_is_in_flight_under_its_lock_takes_no_slot(rt):
    """Another flush is sending its batch: the round leaves it due and spends no call slot."""
    now = rt.clock()
    bk = BattleKeys("b")
    rt.redis.zadd(keys.ACTIVE, {"b": now + 1.0})
    rt.redis.zadd(keys.ENDGAME_DUE, {"b": now - 1})
    rt.redis.hset(bk.pending, "room", 5)
    rt.redis.hset(bk.inflight, mapping={"id": "other", "state": "sending"})
    rt.redis.set(bk.lock, "live-owner")
    calls = []
    assert endgame.run_round(rt, lambda *a, **k: calls.append(a) or "ok") == 0
    assert rt.redis.zscore(keys.ENDGAME_DUE, "b") is not None and not calls
    rt.redis.delete(bk.lock)  # settled and released: now it goes
    assert endgame.run_round(rt, lambda *a, **k: calls.append(a) or "ok") == 1


def test_near_the_end_a_call_waits_less_for_its_answer():
    """Within NEAR_END s of its end (the latest Tencent's clock may read) a call under the
    battle's lock waits NEAR_END_READ s; further off, or unregistered, the client's default."""
    from types import SimpleNamespace

    from worker.engine.battles.registry import Battle

    rt = SimpleNamespace(tclock=SimpleNamespace(latest=lambda: 1000.0))
    soon = Battle("b", 900.0, 1000.0 + endgame.NEAR_END, {})
    later = Battle("b", 900.0, 1000.1 + endgame.NEAR_END, {})
    assert endgame.near_end(rt, soon) and endgame.read_timeout(rt, soon) == endgame.NEAR_END_READ
    assert not endgame.near_end(rt, later) and endgame.read_timeout(rt, later) is None
    assert not endgame.near_end(rt, None) and endgame.read_timeout(rt, None) is None
