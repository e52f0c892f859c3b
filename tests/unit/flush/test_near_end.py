"""Unit tests of worker/engine/flush/near_end.py: when a battle is near its end (Tencent clock)."""

from __future__ import annotations

from tests.unit.conftest import T0
from worker.engine.battles.records import Battle
from worker.engine.flush.near_end import NEAR_END, NEAR_END_READ, near_end, read_timeout
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
    assert read_timeout(frt, ending_at(T0 + 2)) == NEAR_END_READ
    assert read_timeout(frt, ending_at(T0 + 600)) is None
    assert read_timeout(frt, None) is None
