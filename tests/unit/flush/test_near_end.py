"""Unit tests of worker/engine/flush/near_end.py: when a battle is near its end (Tencent clock)."""

from __future__ import annotations

import pytest

from tests.unit.conftest import T0
from worker.engine.battles.records import Battle
from worker.engine.flush.near_end import (
    NEAR_END,
    NEAR_END_READ,
    NEAR_END_READ_MIN,
    SETTLE_LEAD,
    near_end,
    read_timeout,
)
from worker.engine.runtime import Runtime
from worker.engine.tencent.clock import DEFAULT_SPREAD


def ending_at(end: float) -> Battle:
    """A running battle that ends at `end`."""
    return Battle("b1", end - 60, end, {"r1": "o1"})


def test_near_its_end_within_near_end_seconds_of_the_latest_tencent_may_read(
        frt: Runtime) -> None:
    # Tencent's clock may read up to DEFAULT_SPREAD ahead of ours (no sample yet).
    edge = T0 + DEFAULT_SPREAD + NEAR_END
    assert near_end(frt, ending_at(edge))
    assert not near_end(frt, ending_at(edge + 0.01))
    assert near_end(frt, ending_at(T0 - 100))  # past its end too


def test_no_battle_or_no_known_end_is_never_near_its_end(frt: Runtime) -> None:
    assert not near_end(frt, None)
    assert not near_end(frt, Battle("b1", 0.0, 0.0, {"r1": None}, "created"))


def test_a_tencent_clock_known_to_run_ahead_brings_the_end_nearer(frt: Runtime) -> None:
    battle = ending_at(T0 + NEAR_END + 3)
    assert not near_end(frt, battle)
    frt.tclock.observe(2.9, 3.1)  # answers' Date headers: Tencent is 3 s ahead of us
    assert near_end(frt, battle)


def test_a_call_near_the_end_waits_near_end_read_for_its_answer_else_the_default(
        frt: Runtime) -> None:
    assert read_timeout(frt, ending_at(T0 + 4)) == NEAR_END_READ
    assert read_timeout(frt, ending_at(T0 + 600)) is None
    assert read_timeout(frt, None) is None


def test_in_its_last_seconds_a_call_gives_up_its_answer_in_time_to_settle_it(
        frt: Runtime) -> None:
    # A write left without an answer must leave time before the end to read it back and
    # overwrite it: the wait ends SETTLE_LEAD before the end (the latest Tencent may read),
    # but a real answer is never cut below NEAR_END_READ_MIN.
    latest = T0 + DEFAULT_SPREAD
    assert read_timeout(frt, ending_at(latest + SETTLE_LEAD + NEAR_END_READ + 1)) == NEAR_END_READ
    assert read_timeout(frt, ending_at(latest + SETTLE_LEAD + 0.8)) == pytest.approx(0.8)
    assert read_timeout(frt, ending_at(latest + SETTLE_LEAD + 0.1)) == NEAR_END_READ_MIN
    assert read_timeout(frt, ending_at(T0 - 5)) == NEAR_END_READ_MIN  # past its end
