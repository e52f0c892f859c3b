"""Unit tests of worker/engine/tick/schedule.py: the tick's budget arithmetic and its choice."""

from __future__ import annotations

import pytest

from worker.engine.tencent.limiter import HEADROOM, WINDOW_MS
from worker.engine.tick import schedule


def test_beat_ticks_four_times_a_flush_interval_at_most_every_quarter_second() -> None:
    assert schedule.tick_seconds(1.0) == 0.25
    assert schedule.tick_seconds(0.2) == 0.05
    assert schedule.tick_seconds(60.0) == 0.25


def test_a_tick_covers_the_time_since_the_last_one_within_a_period_and_max_span() -> None:
    now = 1000.0
    assert schedule.tick_span(now, None, 1.0) == 0.25  # the first tick: one period
    assert schedule.tick_span(now, now - 0.1, 1.0) == 0.25  # never less than a period
    assert schedule.tick_span(now, now - 0.6, 1.0) == pytest.approx(0.6)  # a skipped tick
    assert schedule.tick_span(now, now - 30.0, 1.0) == schedule.MAX_SPAN  # a long stall


@pytest.mark.parametrize("rate", [10, 200, 400, 2000])
def test_the_budget_scales_with_scorer_api_rate(rate: int) -> None:
    # What the limiter admits (90 % of the rate per sliding second) over one 0.25 s tick.
    per_tick = schedule.per_tick_budget(rate, 1.0)
    assert per_tick == int(int(rate * HEADROOM) * 0.25)
    assert schedule.per_tick_budget(rate * 2, 1.0) in (2 * per_tick, 2 * per_tick + 1)
    assert schedule.per_tick_budget(rate, 1.0, share=0.5) == int(int(rate * HEADROOM) * 0.125)
    # A tick that covers a whole second dispatches a whole second's admissions.
    assert schedule.per_tick_budget(rate, 1.0, span=1.0) == int(rate * HEADROOM)


def test_the_end_games_reserve_comes_off_the_budget_which_never_drops_below_one() -> None:
    window = WINDOW_MS / 1000
    assert schedule.per_tick_budget(200, 1.0, reserved=round(100 * window)) == 20  # 80/s
    assert schedule.per_tick_budget(200, 1.0, reserved=180) == 1  # all of it kept: one still
    assert schedule.per_tick_budget(200, 1.0, reserved=10_000) == 1
    assert schedule.per_tick_budget(1, 0.2) == 1


def test_a_battle_whose_end_game_starts_within_a_flush_interval_leaves_its_value_to_it() -> None:
    assert schedule.skips_turn(0.5, 1.0) and schedule.skips_turn(0.0, 1.0)
    assert not schedule.skips_turn(1.0, 1.0) and not schedule.skips_turn(30.0, 1.0)
    assert not schedule.skips_turn(-0.1, 1.0)  # its window has started: the tick's if it holds it


def test_choose_takes_the_oldest_due_within_budget_and_urgent_ones_first_when_asked() -> None:
    now = 1000.0
    due = [("old", 900.0), ("new", 999.0), ("ending", 999.5), ("later", 998.0),
           ("unknown_end", 950.0)]
    ends: dict[str, float | None] = {"old": 5000.0, "new": 5000.0, "ending": 1004.0,
                                     "later": 1002.0, "unknown_end": None}
    assert schedule.choose(due, ends, now, budget=2) == ["old", "unknown_end"]
    # Urgent (ending within 5 s): soonest end first, then the rest oldest first.
    assert schedule.choose(due, ends, now, budget=3, urgent=5.0) == ["later", "ending", "old"]
    assert schedule.choose(due, ends, now, budget=0) == []
    assert schedule.urgent_window(1.0) == 5.0 and schedule.urgent_window(0.2) == pytest.approx(2.6)
