"""Unit tests: no process is started (a test that tries fails), Redis is fakeredis with Lua.

`fake_redis` is an in-memory Redis that runs the project's Lua scripts (fakeredis[lua]);
`frt` is a Runtime over it whose Tencent client talks to nothing unless a test mocks it with
respx (`respx_mock` routes on `API`), and whose clock the test moves (`frt.clock = ...`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

from tests.unit.state.server_clock import ServerClock, freeze_server_time
from worker.engine.runtime import Runtime, set_runtime
from worker.engine.settings import Settings
from worker.engine.tencent import TencentClient
from worker.engine.tencent.limiter import RedisRateLimiter

#: The base URL of the unit tests' Tencent: nothing listens there; respx answers.
API = "http://tencent.unit.invalid"
T0 = 1_800_000_000.0  # a wall time on a whole second, for tests that set the clock


class ProcessStarted(AssertionError):
    """A unit test tried to start a process."""


@pytest.fixture(autouse=True)
def _no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests start no process: Popen (and so subprocess.run) fails at once."""

    def refuse(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
        raise ProcessStarted(f"a unit test started a process: {args[:1]}")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ServerClock:
    """Redis's own clock (TIME, key expiry, Lua's TIME) in fakeredis, frozen at T0 until the
    test moves it: the limiter, the drain's leases and the watermark run on it."""
    return freeze_server_time(monkeypatch, T0)


@pytest.fixture
def fake_redis() -> fakeredis.FakeRedis:
    """An empty in-memory Redis, replies decoded as str, that runs Lua."""
    return fakeredis.FakeRedis(decode_responses=True)


@pytest.fixture
def unit_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings for the unit tests (no environment, no .env)."""
    for name in ("SCORER_API_URL", "SCORER_REDIS_URL", "SCORER_STATE_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    return Settings(_env_file=None, sdkappid=1400000001, secret_key="unit-test-key",
                    api_url=API, redis_url="redis://unit.invalid:6379/0", flush_interval=0.2,
                    reconcile_interval=2)


@pytest.fixture
def frt(fake_redis: fakeredis.FakeRedis, unit_settings: Settings) -> Iterator[Runtime]:
    """A Runtime over `fake_redis`, its clock fixed at T0 (set `frt.clock` to move it)."""
    client = TencentClient(unit_settings, RedisRateLimiter(fake_redis, unit_settings.api_rate))
    rt = Runtime(settings=unit_settings, redis=fake_redis, client=client, clock=lambda: T0)
    set_runtime(rt)
    yield rt
    set_runtime(None)
    client.close()
