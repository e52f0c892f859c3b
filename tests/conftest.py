"""Shared fixtures: a real redis-server on a free loopback port, the Tencent sandbox, settings."""

from __future__ import annotations

import os

import pytest
import redis

from scorer_local.stack import ROOT, RedisServer, celery_cmd, redis_server_bin, scorer_env

__all__ = ["ROOT", "SDKAPPID", "SECRET", "celery_cmd", "worker_env"]

SDKAPPID = 1400000001
SECRET = "test-secret-key-0123456789abcdef"

# The Celery app reads its configuration lazily from SCORER_*; give this test process a valid
# one (its broker URL is never used in-process: tests that need a broker start real workers).
os.environ.setdefault("SCORER_SDKAPPID", str(SDKAPPID))
os.environ.setdefault("SCORER_SECRET_KEY", SECRET)


@pytest.fixture(scope="session")
def redis_server():
    if redis_server_bin() is None:
        pytest.exit("redis-server is not installed (apt-get install redis-server)", 2)
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server):
    """A clean database of the session's redis-server."""
    r = redis.Redis.from_url(redis_server.url)
    r.flushall()
    r.close()
    return redis_server.url


@pytest.fixture
def sandbox():
    from scorer_local.sandbox import Sandbox

    sb = Sandbox(SDKAPPID, SECRET, rate=200).start()
    yield sb
    sb.stop()


@pytest.fixture
def ctl(sandbox):
    """A client of the sandbox's control endpoints."""
    from scorer_local.sandbox_control import SandboxControl

    c = SandboxControl(sandbox.url)
    yield c
    c.close()


@pytest.fixture
def settings(redis_url, sandbox, monkeypatch):
    from worker.engine.settings import Settings

    for k in list(os.environ):
        if k.startswith("SCORER_") and k not in ("SCORER_SDKAPPID", "SCORER_SECRET_KEY"):
            monkeypatch.delenv(k)
    return Settings(_env_file=None, sdkappid=SDKAPPID, secret_key=SECRET, api_url=sandbox.url,
                    redis_url=redis_url, flush_interval=0.2, reconcile_interval=2)


@pytest.fixture
def rt(settings):
    from worker.engine.runtime import build_runtime, set_runtime

    runtime = build_runtime(settings)
    set_runtime(runtime)
    yield runtime
    set_runtime(None)
    if runtime.calls is not None:  # its timer must not write into the next test's Redis
        runtime.calls.close()
    runtime.client.close()


def worker_env(settings, **extra) -> dict[str, str]:
    """Environment for a worker/beat subprocess using `settings`."""
    return scorer_env(settings.sdkappid, settings.secret_key.get_secret_value(),
                      settings.api_base_url, settings.redis_url,
                      flush_interval=settings.flush_interval,
                      reconcile_interval=settings.reconcile_interval, **extra)
