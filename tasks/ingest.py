"""Ingest tasks, the public input of the worker: `scorer.webhook` and `scorer.webhooks`."""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
from celery.worker.request import Request

from worker import app
from worker.ingest import dead_letter, handle
from worker.runtime import get_runtime

log = logging.getLogger("scorer.tasks")

#: Redis outages are retried (the events are not lost: acks_late keeps the message); bad
#: bodies never are (they go to the dead-letter store at once).
_RETRY = dict(autoretry_for=(redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError),
              retry_backoff=True, retry_backoff_max=30, retry_jitter=True, max_retries=200)


def summarize(kwargs: Any) -> str:
    """What Flower and the worker's log show of an ingest task: ids, never the body."""
    if not isinstance(kwargs, dict):
        return "{}"
    if "items" in kwargs:
        items = kwargs["items"]
        return json.dumps({"items": len(items) if isinstance(items, list) else "invalid"})
    body = kwargs.get("body")
    body = body if isinstance(body, dict) else {}
    out = {"command": body.get("CallbackCommand"), "battle_id": body.get("BattleId"),
           "room_id": body.get("RoomId"), "event_id": kwargs.get("event_id")}
    return json.dumps({k: str(v)[:128] for k, v in out.items() if v is not None})


class SummaryRequest(Request):
    """A request whose argument reprs (sent in task events to Flower) are summaries."""

    @property
    def argsrepr(self) -> str:
        return "()"

    @property
    def kwargsrepr(self) -> str:
        return summarize(self.kwargs)


@app.task(name="scorer.webhook", ignore_result=True, Request=SummaryRequest, **_RETRY)
def webhook(body: dict, event_id: str | None = None) -> dict[str, int]:
    """One Tencent Live callback body (and the app's ledger id of the gift, if it has one)."""
    return handle(get_runtime(), [(body, event_id)])


@app.task(name="scorer.webhooks", ignore_result=True, Request=SummaryRequest, **_RETRY)
def webhooks(items: list[dict[str, Any]]) -> dict[str, int]:
    """Many callbacks in one message: `[{"body": {...}, "event_id": "..."}]`, one Redis round trip
    for all their gifts."""
    rt = get_runtime()
    if not isinstance(items, list):
        dead_letter(rt, items, None, "scorer.webhooks: items must be a list")
        return {"dead_lettered": 1}
    pairs: list[tuple[Any, Any]] = []
    bad = 0
    for item in items:
        if isinstance(item, dict) and "body" in item:
            pairs.append((item["body"], item.get("event_id")))
        else:
            bad += 1
            dead_letter(rt, item, None, "scorer.webhooks: item must be {body, event_id}")
    counts = handle(rt, pairs)
    if bad:
        counts["dead_lettered"] = counts.get("dead_lettered", 0) + bad
    return counts
