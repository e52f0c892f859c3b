"""Unit tests of worker/engine/battles/final_window.py: a battle's final seconds and its marks."""

from __future__ import annotations

from tests.unit.conftest import T0
from worker.engine.battles import final_window
from worker.engine.runtime import Runtime
from worker.engine.state import keys


def test_a_battle_is_in_its_final_window_from_final_window_before_its_end() -> None:
    latest = 1000.0
    assert final_window.in_window(latest + final_window.FINAL_WINDOW, latest)
    assert not final_window.in_window(latest + final_window.FINAL_WINDOW + 0.01, latest)
    assert final_window.in_window(latest - 5, latest)  # past its end: still flushed at once
    assert not final_window.in_window(0.0, latest)  # end unknown


def test_mark_queues_each_battle_once_at_the_time_its_value_first_waited(
        frt: Runtime) -> None:
    pipe = frt.redis.pipeline()
    final_window.mark(pipe, ["b1", "b2"], T0)
    final_window.mark(pipe, ["b1"], T0 + 1)  # more value: it keeps its place
    final_window.mark(pipe, [], T0 + 2)
    pipe.execute()
    assert frt.redis.zrange(keys.ENDGAME_DUE, 0, -1, withscores=True) == [("b1", T0),
                                                                          ("b2", T0)]
