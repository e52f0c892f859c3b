"""The control pool's supervisor: restart delays, on a hand-moved clock and a fake child."""

from __future__ import annotations

from worker.doors import control_pool
from worker.doors.control_pool import ControlPool
from worker.engine.timers import TIMERS


class _Clock:
    """The supervisor's monotonic clock and stop event: `wait(t)` moves time on by `t`."""

    def __init__(self, runs: list[float]) -> None:
        self.now = 0.0
        self.runs = runs  # how long each child lives, in order; the supervisor stops with the last
        self.restarts: list[float] = []  # the delay before each restart

    def monotonic(self) -> float:
        return self.now

    def is_set(self) -> bool:
        return not self.runs and self.now > 0

    def wait(self, seconds: float) -> bool:
        if seconds != 0.5:  # the poll period; anything else is a restart delay
            self.restarts.append(seconds)
        self.now += seconds
        return self.is_set()


def _supervise(monkeypatch, runs: list[float]) -> list[float]:
    clock = _Clock(list(runs))

    class Child:
        def __init__(self, cmd, env):
            self.dies_at = clock.now + clock.runs.pop(0)
            self.returncode = None
            self.pid = 1

        def poll(self):
            if clock.now >= self.dies_at:
                self.returncode = -9
            return self.returncode

    monkeypatch.setattr(control_pool.subprocess, "Popen", Child)
    monkeypatch.setattr(control_pool.time, "monotonic", clock.monotonic)
    pool = ControlPool.__new__(ControlPool)
    pool.procs, pool.cmds = {}, [["child"]]
    pool._stopping = clock  # type: ignore[assignment]
    pool._supervise(0)
    return clock.restarts


def test_a_child_that_dies_at_once_is_restarted_later_each_time(monkeypatch):
    first, cap = TIMERS.control.restart_delay
    assert _supervise(monkeypatch, [1, 1, 1, 1, 1, 1, 1, 1]) == [
        min(cap, first * 2 ** k) for k in range(7)]


def test_a_child_that_ran_well_is_restarted_after_the_first_delay(monkeypatch):
    """The delay doubles in a crash loop, but a child that ran past the cap died afresh: a
    worker up for weeks restarted every lost child only after the cap."""
    first, cap = TIMERS.control.restart_delay
    assert _supervise(monkeypatch, [1, 1, 1, cap + 1, 1, 1]) == [
        first, first * 2, first * 4, first, first * 2]


def test_the_control_pool_starts_after_the_prefork_pool_has_forked() -> None:
    """A pool process forked while a supervisor is inside Popen keeps Popen's exec-status pipe
    open for its life, and that supervisor hangs for good: the control pool starts after. The
    boot order as a worker computes it (Blueprint.apply sorts the steps with _finalize_steps)."""
    from celery.worker.components import Pool
    from celery.worker.worker import WorkController

    blueprint = WorkController.Blueprint(steps=[ControlPool])
    order = blueprint._finalize_steps(blueprint.claim_steps())
    assert order.index(ControlPool) > order.index(Pool)
