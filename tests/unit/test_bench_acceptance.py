"""Unit test of bench/acceptance.py's figure of the ending seconds (no referee run)."""

from __future__ import annotations

from bench.acceptance import ending_rates


def test_the_ending_seconds_are_the_seconds_before_each_crowded_end() -> None:
    # 100 battles end at 11 and 12 (EndTime is a whole second), one at 13: a battle ending at
    # E takes its last writes in [E - 1, E); the lone end at 13 is no crowded second.
    battles = {f"b{i}": {"EndTime": 11 + i // 100} for i in range(200)} | {"x": {"EndTime": 13}}
    calls = ([[0.0, 10.5, "set_battle_score"]] * 97 + [[0.0, 11.2, "set_battle_score"]] * 101
             + [[0.0, 11.3, "get_gift_count"]] * 5 + [[0.0, 12.5, "set_battle_score"]] * 3)
    assert ending_rates({"battles": battles, "calls": calls}) == [97, 101]
    assert ending_rates({"battles": {"x": {"EndTime": 13}}, "calls": calls}) == []
