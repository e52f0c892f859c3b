"""The unit tests' own guard and fixtures: no process, fakeredis with Lua, a runtime."""

from __future__ import annotations

import subprocess

import pytest

from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.counters import bump, read


def test_a_unit_test_cannot_start_a_process() -> None:
    with pytest.raises(AssertionError, match="a unit test started a process"):
        subprocess.run(["true"], check=False)


def test_the_runtime_runs_on_fakeredis_with_lua(frt: Runtime) -> None:
    assert frt.clock() == 1_800_000_000.0  # conftest.T0
    bump(frt.redis, "received", 2)
    assert read(frt.redis)["received"] == 2
    assert frt.redis.hget(keys.STATS, "received") == "2"
    assert frt.script("LOCK_RELEASE")(keys=["k"], args=["token"]) == 0
