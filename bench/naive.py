"""The naive integration, as a baseline: one OpType 1 call per gift, straight from the task.

No batching, no de-duplication, no rate limiter, retries of whatever failed: what a first
integration usually looks like. Also a no-op task, to measure Celery's own drain rate.
"""

from __future__ import annotations

from worker.doors.app import app
from worker.engine.settings import get_settings
from worker.engine.tencent.client import TencentClient

_client: TencentClient | None = None


def _tencent() -> TencentClient:
    global _client
    if _client is None:
        _client = TencentClient(get_settings())  # NoLimiter: the naive way has none
    return _client


@app.task(name="bench.noop", ignore_result=True)
def noop(*args, **kwargs) -> None:
    """Nothing: Celery's own cost per message."""


@app.task(name="bench.naive_gift", ignore_result=True)
def naive_gift(battle_id: str, room_id: str, value: int) -> str:
    """Add one gift's value to its room with OpType 1, right now."""
    try:
        _tencent().set_battle_score(battle_id, 1, {room_id: value})
        return "ok"
    except Exception as err:  # the naive way logs and moves on
        return f"failed: {err}"
