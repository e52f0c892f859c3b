"""Integration tests: a real redis-server, the Tencent sandbox, worker processes."""

from __future__ import annotations

import pytest
import redis
from celery import Celery

from scorer_local.stack import Processes
from tests.conftest import worker_env
from tests.helpers import wait_for


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this folder `integration`."""
    for item in items:
        if "/tests/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def stack(settings, tmp_path):
    """A worker (concurrency 2) and beat as processes, and a producer of webhook tasks."""
    env = worker_env(settings)
    procs = Processes(env, tmp_path)
    producer = Celery(broker=settings.redis_url)
    producer.conf.task_serializer = "json"
    # Ready: the control worker ticks (the ingest watermark moves), so reconcile can read.
    r = redis.Redis.from_url(settings.redis_url)
    try:  # processes are stopped even when start-up fails (a leak outlives the test run)
        procs.worker("worker", concurrency=2)
        procs.beat()
        wait_for(lambda: float(r.hget("bs:ingest:watermark", "w") or 0) > 0, timeout=60,
                 what="the control worker's first ticks")
        yield producer, tmp_path
    finally:
        r.close()
        procs.stop(30)
