"""The dead-letter store: events that could not be scored, with their reason, and their replay."""

from __future__ import annotations

import json

from worker.engine.state import keys
from worker.engine.ingest import bulk_pairs, handle
from worker.engine.runtime import Runtime
from worker.engine.state.counters import bump


def list_entries(rt: Runtime, limit: int = 100) -> list[dict]:
    """The oldest `limit` dead letters."""
    return [json.loads(x) for x in rt.redis.lrange(keys.DEAD_LETTERS, 0, limit - 1)]


def replay(rt: Runtime, limit: int = 10_000) -> dict[str, int]:
    """Run dead letters through ingest again (after a fix); those still bad are kept again.

    Each entry is handled before it is removed (a crash in between replays it again, which
    ingest's de-duplication makes harmless); one that still fails is appended anew by
    handle() with its current reason. Only as many entries as were there at the start are
    replayed, so a still-bad entry is not retried in a loop.
    """
    total: dict[str, int] = {}
    for _ in range(min(limit, rt.redis.llen(keys.DEAD_LETTERS))):
        raw = rt.redis.lindex(keys.DEAD_LETTERS, 0)
        if raw is None:
            break
        entry = json.loads(raw)
        pairs = _pairs(rt, entry)
        if pairs is None:  # a task message with no webhook in it: kept as it is, at the end
            rt.redis.lmove(keys.DEAD_LETTERS, keys.DEAD_LETTERS, "LEFT", "RIGHT")
            total["kept"] = total.get("kept", 0) + 1
            continue
        for k, v in handle(rt, pairs).items():
            total[k] = total.get(k, 0) + v
        rt.redis.lpop(keys.DEAD_LETTERS)
        bump(rt.redis, "replayed")
    return total


def _pairs(rt: Runtime, entry: dict) -> list | None:
    """The webhooks an entry holds. A whole task message (an unknown task name, such as a
    producer's typo of `scorer.webhook`, kept by worker/doors/unknown_tasks.py or a drain) is
    replayed by its kwargs: `body` as one webhook, `items` as a bulk; with neither it holds
    no webhook (None)."""
    body = entry.get("body")
    if not (isinstance(body, dict) and "task" in body and "CallbackCommand" not in body):
        return [(body, entry.get("event_id"))]
    kwargs = body.get("kwargs") if isinstance(body.get("kwargs"), dict) else {}
    if isinstance(kwargs.get("body"), dict):
        return [(kwargs["body"], kwargs.get("event_id"))]
    if isinstance(kwargs.get("items"), list):
        return bulk_pairs(rt, kwargs["items"])[0]
    return None
