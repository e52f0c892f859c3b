"""Unit tests of worker/engine/battles/turns.py: flush turns planned back from the end game."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.conftest import T0
from worker.engine.battles import turns
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.tencent.limiter import admitted_per_second

EVERY = 1.0  # the flush interval
rounds = st.floats(min_value=2 * EVERY, max_value=600.0)
lefts = st.floats(min_value=0.001, max_value=7200.0)


def test_a_round_is_the_battles_over_what_the_limiter_admits_in_both_lanes() -> None:
    assert turns.round_seconds(360, 200) == pytest.approx(360 / admitted_per_second(200))
    assert turns.round_seconds(360, 200) == pytest.approx(2.0)  # 180 admitted a second
    assert turns.round_seconds(360, 400) == pytest.approx(1.0)
    assert turns.round_seconds(0, 200) == 0.0


def test_while_the_budget_keeps_up_value_goes_at_once_and_then_each_interval() -> None:
    assert not turns.planned(1.9, EVERY) and turns.planned(2.0, EVERY)
    for round_s in (0.0, 1.0, 1.9):
        assert turns.first_turn(T0, T0 + 100, round_s, EVERY) == T0
        assert turns.next_turn(T0, T0 + 100, round_s, EVERY) == T0 + EVERY
    # No end known, or its end game already started: the same.
    assert turns.first_turn(T0, None, 50.0, EVERY) == T0
    assert turns.next_turn(T0, None, 50.0, EVERY) == T0 + EVERY
    assert turns.first_turn(T0, T0 - 1, 50.0, EVERY) == T0
    assert turns.next_turn(T0, T0 - 1, 50.0, EVERY) == T0 + EVERY


@given(round_s=rounds, left=lefts)
def test_the_first_turn_is_within_a_round_and_whole_rounds_before_the_end_game(
        round_s: float, left: float) -> None:
    first = turns.first_turn(T0, T0 + left, round_s, EVERY)
    assert T0 <= first < T0 + round_s + 1e-6
    whole = (T0 + left - first) / round_s
    assert abs(whole - round(whole)) < 1e-6


@given(round_s=rounds, left=lefts)
def test_turns_are_never_a_round_apart_nor_closer_than_half_and_the_last_is_the_end_game(
        round_s: float, left: float) -> None:
    """From any turn, the turns left divide the time to the end game evenly: the fewest that
    keep every gap within a round, the last being the end game's own flush."""
    window_at, now, n = T0 + left, T0, 0
    while now < window_at:
        nxt = turns.next_turn(now, window_at, round_s, EVERY)
        assert nxt - now <= round_s + 1e-6
        if nxt < window_at:
            assert nxt - now >= round_s / 2 - 1e-6 >= EVERY - 1e-6
        now, n = nxt, n + 1
    assert now == pytest.approx(window_at)
    rounds_left = (window_at - T0) / round_s
    # The fewest turns; a whole number of rounds may round up to one more in floats.
    assert n == max(1, math.ceil(rounds_left)) or (
        abs(rounds_left - round(rounds_left)) < 1e-6 and n == round(rounds_left) + 1)


def test_battles_that_all_get_value_at_once_spread_their_turns_over_the_round() -> None:
    """10,000 battles ending 40 a second, all with value from the start: their first turns
    fall evenly over the round (the budget is used at its rate from the first second), and
    each battle's end-game flush is its last turn, so a round stays N / rate."""
    round_s = turns.round_seconds(10_000, 200)
    ends = [T0 + 20 + i / 40 for i in range(10_000)]
    firsts = [turns.first_turn(T0, end - 1.5, round_s, EVERY) for end in ends]
    per_tenth = Counter(int((f - T0) / (round_s / 10)) for f in firsts)
    assert sorted(per_tenth) == list(range(10))
    # Even within what 250 s of endings over a 55.6 s round allows (4.5 rounds: +-11 %).
    assert max(per_tenth.values()) <= 1.15 * 1000 and min(per_tenth.values()) >= 0.85 * 1000


def test_the_turn_after_the_last_is_planned_with_the_round_as_it_is_now() -> None:
    window_at = T0 + 1000
    assert turns.turn_after(None, None, window_at, 40.0, EVERY) == -math.inf  # nothing to go by
    assert turns.turn_after("garbage", "0", window_at, 40.0, EVERY) == -math.inf
    assert turns.turn_after("nan", "inf", window_at, 40.0, EVERY) == -math.inf
    assert turns.turn_after(T0, T0, window_at, 1.0, EVERY) == -math.inf  # short round: unplanned
    assert turns.turn_after(str(T0), T0 - 100, window_at, 40.0, EVERY) == turns.next_turn(
        T0, window_at, 40.0, EVERY)
    assert turns.turn_after(T0, T0, T0 + 30, 40.0, EVERY) == T0 + 30  # its end game is its turn
    # No turn yet: its first, counted from its start, whole rounds before its end game.
    first = turns.turn_after(None, str(T0), window_at, 40.0, EVERY)
    assert first == turns.first_turn(T0, window_at, 40.0, EVERY) and T0 <= first < T0 + 40


def test_ingest_reads_the_round_the_tick_published_once_a_second(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(turns.time, "monotonic", lambda: now[0])
    assert turns.current_round(frt) == 0.0  # none published: value goes at once
    turns.publish_round(frt, 55.5)
    assert turns.current_round(frt) == 0.0  # read a moment ago
    now[0] += 1.0
    assert turns.current_round(frt) == 55.5
    assert 0 < frt.redis.pttl(keys.FLUSH_ROUND) <= 5000  # gone when ticks stop
    frt.redis.set(keys.FLUSH_ROUND, "garbage")
    now[0] += 1.0
    assert turns.current_round(frt) == 0.0
