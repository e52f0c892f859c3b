"""Unit tests of worker/engine/tick/dispatch.py: what one tick dispatches, in batches, in budget."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from tests.unit.conftest import T0
from tests.unit.flush.answers import start
from worker.engine.battles import registry, turns
from worker.engine.battles.records import Gift
from worker.engine.battles.registry import HOLD_SECONDS, route
from worker.engine.flush import endgame
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.keys import BattleKeys
from worker.engine.tick import dispatch, schedule
from worker.engine.timers import TIMERS

Sent = list[tuple[str, list[str]]]


@pytest.fixture(autouse=True)
def _quiet(frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """No end-game runner thread, and a Redis that answers INFO (fakeredis does not)."""
    monkeypatch.setattr(dispatch.endgame, "ensure_runner", lambda rt, flush: None)
    monkeypatch.setattr(frt.redis, "info", lambda section: {"run_id": "unit"})


def with_value(rt: Runtime, due: dict[str, float], end: float = T0 + 3600) -> None:
    """Battles due for a flush at `due`, ending at `end`, each with value pending."""
    for bid in due:
        rt.redis.hset(BattleKeys(bid).pending, "r1", 1)
        rt.redis.zadd(keys.ACTIVE, {bid: end})
    rt.redis.zadd(keys.FLUSH_DUE, due)


def tick(rt: Runtime) -> tuple[dict[str, int], Sent]:
    """One tick; returns its counts and the control messages it sent."""
    sent: Sent = []
    out = dispatch.run_tick(rt, lambda kind, ids: sent.append((kind, ids)))
    return out, sent


def test_flushes_go_oldest_first_within_the_budget_in_batches(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "TIMERS", replace(TIMERS, tick=replace(TIMERS.tick, batch=4)))
    with_value(frt, {f"b{i:02}": T0 - 100 + i for i in range(30)})
    frt.redis.zadd(keys.FLUSH_DUE, {"idle": T0 - 200})  # nothing to send: forgotten
    budget = schedule.per_tick_budget(frt.settings.api_rate, frt.settings.flush_interval)
    out, sent = tick(frt)
    flushed = [ids for kind, ids in sent if kind == "flush"]
    assert [len(ids) for ids in flushed] == [4, 4, 1] and out["flush"] == budget == 9
    assert [b for ids in flushed for b in ids] == [f"b{i:02}" for i in range(9)]
    assert frt.redis.zscore(keys.FLUSH_DUE, "idle") is None
    # Dispatched: due again a flush interval on; the rest keep their place in the line.
    assert frt.redis.zscore(keys.FLUSH_DUE, "b00") == T0 + frt.settings.flush_interval
    assert frt.redis.zscore(keys.FLUSH_DUE, "b09") == T0 - 91


def test_reconciles_pick_battles_near_their_end_first_within_their_budget(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frt.settings, "api_rate", 20)  # one reconcile a tick
    frt.redis.zadd(keys.ACTIVE, {"old": T0 + 3600, "ending": T0 + 2})
    frt.redis.zadd(keys.RECONCILE_DUE, {"old": T0 - 30, "ending": T0 - 1})
    out, sent = tick(frt)
    assert ("reconcile", ["ending"]) in sent and out["reconcile"] == 1
    assert frt.redis.zscore(keys.RECONCILE_DUE, "ending") == T0 + max(
        1.0, min(5.0, frt.settings.reconcile_interval))  # provisional: the task sets its own
    assert frt.redis.zscore(keys.RECONCILE_DUE, "old") == T0 - 30


def test_a_battle_about_to_end_is_picked_even_past_the_oldest_max_dispatch(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "TIMERS",
                        replace(TIMERS, tick=replace(TIMERS.tick, max_dispatch=3)))
    frt.redis.zadd(keys.ACTIVE, {f"b{i}": T0 + 3600 for i in range(5)})
    frt.redis.zadd(keys.ACTIVE, {"ending": T0 + 1})
    frt.redis.zadd(keys.AUDIT_DUE, {**{f"b{i}": T0 - 50 + i for i in range(5)},
                                    "ending": T0 - 1})
    assert dispatch._pick(frt, keys.AUDIT_DUE, T0, budget=2) == ["ending", "b0"]


def test_oldest_first_pages_past_battles_that_need_no_call_and_over_equal_times(
        frt: Runtime) -> None:
    ids = [f"b{i:02}" for i in range(12)]
    frt.redis.zadd(keys.FLUSH_DUE, dict.fromkeys(ids, T0 - 5))  # all due the same instant

    def even_only(batch: list[str]) -> list[str]:
        return [b for b in batch if int(b[1:]) % 2 == 0]

    chosen = dispatch._pick(frt, keys.FLUSH_DUE, T0, budget=4, keep=even_only,
                            near_end_first=False)
    assert chosen == ["b00", "b02", "b04", "b06"]
    assert dispatch._pick(frt, keys.FLUSH_DUE, T0 - 10, budget=4, near_end_first=False) == []


def test_no_freshness_flush_for_battles_the_end_game_has_or_will_have(frt: Runtime) -> None:
    with_value(frt, {"far": T0 - 9})
    with_value(frt, {"soon": T0 - 9}, end=T0 + 2)  # its end game starts within a flush interval
    with_value(frt, {"marked": T0 - 9}, end=T0 + 1)
    frt.redis.zadd(keys.ENDGAME_DUE, {"marked": T0 - 1})
    frt.redis.zadd(keys.FLUSH_DUE, {"idle": T0 - 9})
    frt.settings.flush_interval = 1.0
    windows: dict[str, float] = {}
    assert dispatch._with_value(frt, ["far", "soon", "marked", "idle"],
                                windows=windows) == ["far"]
    window_at = T0 + 2 - endgame.FINAL_WINDOW - (frt.tclock.latest() - T0)
    assert frt.redis.zscore(keys.FLUSH_DUE, "soon") == window_at  # the end game promotes it
    assert frt.redis.zscore(keys.FLUSH_DUE, "idle") is None
    far_window = T0 + 3600 - endgame.FINAL_WINDOW - (frt.tclock.latest() - T0)
    assert windows == {"far": pytest.approx(far_window)}  # plans its next turn


def test_a_turn_planned_when_the_round_was_shorter_is_put_off_to_the_round_as_it_is(
        frt: Runtime) -> None:
    """A battle flushed 10 s ago, due again now by a plan made with a 10 s round: with the
    round at 40 s, its turn is 40 s after its last one; one flushed 50 s ago goes now, as does
    a battle never flushed that started long ago. One that started 5 s ago and was never
    flushed is due at its first turn counted from its start in a 40 s round (the first
    battles to get value had their first turns packed into the first seconds)."""
    frt.settings.flush_interval = 1.0
    for bid, turned, started in (("recent", T0 - 10, T0 - 100), ("long_ago", T0 - 50, T0 - 100),
                                 ("never", None, T0 - 100), ("new", None, T0 - 5)):
        with_value(frt, {bid: T0 - 1}, end=T0 + (1020 if bid == "new" else 1000))
        frt.redis.hset(BattleKeys(bid).meta, "start", started)
        if turned is not None:
            frt.redis.hset(BattleKeys(bid).meta, "turned_at", turned)
    windows: dict[str, float] = {}
    kept = dispatch._with_value(frt, ["recent", "long_ago", "never", "new"], 40.0, windows)
    assert kept == ["long_ago", "never"]
    ahead = frt.tclock.latest() - T0
    first = turns.first_turn(T0 - 5, T0 + 1020 - endgame.FINAL_WINDOW - ahead, 40.0, 1.0)
    assert first > T0 + 10 and frt.redis.zscore(keys.FLUSH_DUE, "new") == pytest.approx(first)
    window_at = T0 + 1000 - endgame.FINAL_WINDOW - (frt.tclock.latest() - T0)
    assert frt.redis.zscore(keys.FLUSH_DUE, "recent") == pytest.approx(
        turns.next_turn(T0 - 10, window_at, 40.0, 1.0))
    assert T0 + 20 <= frt.redis.zscore(keys.FLUSH_DUE, "recent") <= T0 + 30
    # Under a short round (not planned), nothing is put off.
    assert dispatch._with_value(frt, ["recent"], 1.5) == ["recent"]


def test_a_battle_past_its_window_the_end_game_does_not_hold_is_the_ticks_again(
        frt: Runtime) -> None:
    """Under a long round: a battle whose end has passed (an end-game flush left its batch to
    settle) and one in its window with value but not in the end game are dispatched (the
    flush settles or records what is left), not put off to a window that has started."""
    frt.settings.flush_interval = 1.0
    with_value(frt, {"ended": T0 - 1}, end=T0 - 3)
    with_value(frt, {"in_window": T0 - 1}, end=T0 + 1)
    assert dispatch._with_value(frt, ["ended", "in_window"], 40.0) == ["ended", "in_window"]
    assert frt.redis.zscore(keys.FLUSH_DUE, "ended") == T0 - 1


def test_budget_the_due_battles_leave_goes_to_the_turns_that_come_soonest(
        frt: Runtime) -> None:
    """A 20 s round, 4 battles due now, a budget of 18 (a second since the last tick): the
    rest of the budget takes battles with value whose turns are planned soonest; not an idle
    one (it keeps its turn), one with a batch in flight, or one whose request left within
    the refusal backoff."""
    frt.settings.api_rate, frt.settings.flush_interval = 20, 1.0
    with_value(frt, {f"b{i:03}": T0 + 1 + i for i in range(356)}, end=T0 + 3600)
    with_value(frt, {f"now{i}": T0 - 1 for i in range(4)}, end=T0 + 3600)
    frt.redis.delete(BattleKeys("b000").pending)  # planned soonest, but nothing to send
    frt.redis.hset(BattleKeys("b001").inflight, "state", "ambiguous")  # settles first
    frt.redis.hset(BattleKeys("b002").meta, "turned_at", T0 - 2)  # a refusal 2 s ago
    frt.redis.set(keys.TICK_AT, T0 - 1)
    budget = schedule.per_tick_budget(20, 1.0, span=1.0)
    assert budget == 18
    _, sent = tick(frt)
    chosen = [b for kind, ids in sent if kind == "flush" for b in ids]
    assert chosen[:4] == [f"now{i}" for i in range(4)]
    assert chosen[4:] == [f"b{i:03}" for i in range(3, 3 + budget - 4)]
    assert frt.redis.zscore(keys.FLUSH_DUE, "b000") == T0 + 1


def test_under_a_long_round_each_flushed_battle_is_due_again_at_its_planned_turn(
        frt: Runtime) -> None:
    """360 battles with value, 18 calls a second admitted: a 20 s round. A battle flushed now
    is due again at the first of the equal turns left to its end game; the round is published
    for ingest."""
    frt.settings.api_rate, frt.settings.flush_interval = 20, 1.0
    with_value(frt, {f"b{i:03}": T0 - 400 + i for i in range(360)}, end=T0 + 101.5)
    out, sent = tick(frt)
    chosen = [b for kind, ids in sent if kind == "flush" for b in ids]
    assert chosen and out["flush"] == len(chosen)
    round_s = turns.round_seconds(360, 20)
    assert round_s == pytest.approx(20.0)
    assert float(frt.redis.get(keys.FLUSH_ROUND)) == pytest.approx(round_s)
    window_at = T0 + 101.5 - endgame.FINAL_WINDOW - (frt.tclock.latest() - T0)
    left = window_at - T0  # ~100 s: 5 turns of ~20 s
    for b in chosen:
        assert frt.redis.zscore(keys.FLUSH_DUE, b) == pytest.approx(
            T0 + left / math.ceil(left / round_s))


def test_the_tick_finalizes_ended_battles_sweeps_held_gifts_and_marks_forgotten_value(
        frt: Runtime) -> None:
    start(frt, "ended", at=T0 - 100, seconds=60)  # ended T0 - 40
    start(frt, "b1", seconds=600)
    route(frt, [Gift("e1", "r9", ("o9",), int(T0), 5)])  # held: no battle in room r9
    frt.redis.zrem(keys.FLUSH_DUE, "b1")  # its first turn found it idle
    frt.redis.hset(BattleKeys("b1").pending, "r1", 3)  # an ingest died before its ZADD
    frt.clock = lambda: T0 + HOLD_SECONDS
    out, _ = tick(frt)
    assert out["finalized"] == 1 and frt.redis.hget(BattleKeys("ended").meta,
                                                    "status") == "finished"
    assert out["held_rooms"] == 1 and registry.outside_ids(frt, "r9") == {"e1"}
    assert frt.redis.zscore(keys.FLUSH_DUE, "b1") == T0 + HOLD_SECONDS  # the safety sweep
    assert float(frt.redis.get(keys.SAFETY_SWEEP)) == T0 + HOLD_SECONDS


def test_one_tick_at_a_time_and_one_failing_battle_does_not_stop_the_others(
        frt: Runtime) -> None:
    frt.redis.set(keys.TICK_LOCK, "another-tick")
    assert dispatch.run(frt, lambda kind, ids: None) == {}

    def work(rt: Runtime, battle_id: str) -> str:
        if battle_id == "bad":
            raise RuntimeError("boom")
        return f"done {battle_id}"

    assert dispatch.run_many(frt, work, ["b1"]) == {"b1": "done b1"}
    assert dispatch.run_many(frt, work, ["b1", "bad", "b2"]) == {
        "b1": "done b1", "bad": "error", "b2": "done b2"}
