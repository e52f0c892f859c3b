"""Shared fixtures: a real redis-server on a free loopback port, the Tencent sandbox, settings."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parents[1]
SDKAPPID = 1400000001
SECRET = "test-secret-key-0123456789abcdef"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_bin() -> str:
    path = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(path):
        pytest.exit("redis-server is not installed (apt-get install redis-server)", 2)
    return path


class RedisServer:
    """A redis-server process this test session owns."""

    def __init__(self, port: int | None = None, appendonly: bool = False) -> None:
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="bs-redis-")
        self.appendonly = appendonly
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            [redis_server_bin(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "yes" if self.appendonly else "no",
             "--dir", self.dir, "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.time() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server():
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
    from worker.sandbox import Sandbox

    sb = Sandbox(SDKAPPID, SECRET, rate=200).start()
    yield sb
    sb.stop()


@pytest.fixture
def settings(redis_url, sandbox, monkeypatch):
    from worker.settings import Settings

    for k in list(os.environ):
        if k.startswith("SCORER_"):
            monkeypatch.delenv(k)
    return Settings(_env_file=None, sdkappid=SDKAPPID, secret_key=SECRET, api_url=sandbox.url,
                    redis_url=redis_url, flush_interval=0.2, reconcile_interval=2)


@pytest.fixture
def rt(settings):
    from worker.runtime import build_runtime, set_runtime

    runtime = build_runtime(settings)
    set_runtime(runtime)
    yield runtime
    set_runtime(None)
    runtime.client.close()


def worker_env(settings, **extra) -> dict[str, str]:
    """Environment for a worker/beat subprocess using `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    env.update({
        "SCORER_SDKAPPID": str(settings.sdkappid),
        "SCORER_SECRET_KEY": settings.secret_key.get_secret_value(),
        "SCORER_API_URL": settings.api_base_url,
        "SCORER_REDIS_URL": settings.redis_url,
        "SCORER_FLUSH_INTERVAL": str(settings.flush_interval),
        "SCORER_RECONCILE_INTERVAL": str(settings.reconcile_interval),
        "PYTHONPATH": str(ROOT),
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


def celery_cmd(*args: str) -> list[str]:
    """`celery -A worker ...` with this interpreter."""
    return [sys.executable, "-m", "celery", "-A", "worker", *args]
