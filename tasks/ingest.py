"""Ingest tasks, the public input of the worker: `scorer.webhook[s]`, and `scorer.drain`."""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from typing import Any, Iterator

from celery.exceptions import Reject
from celery.worker.request import Request

from worker.doors.app import app

from worker.engine import drain

from worker.engine.state import keys
from worker.engine.ingest import REDIS_OUTAGE, bulk_pairs, handle_durably
from worker.engine.runtime import Runtime, get_runtime

log = logging.getLogger("scorer.tasks")


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


@contextmanager
def _requeue_on_outage() -> Iterator[None]:
    """Give the message back to the queue when Redis stays down: never ack what is not stored.

    (Celery's autoretry would publish a retry message, and when the broker is down too, it
    rejects the task without requeue: the events would be gone.)
    """
    try:
        yield
    except REDIS_OUTAGE as err:
        raise Reject(f"state Redis unavailable: {type(err).__name__}", requeue=True) from None


def _ingest(rt: Runtime, pairs: list[tuple[Any, Any]]) -> dict[str, int]:
    """Store the events (waiting out an outage), then start a drain if the queue backed up."""
    with _requeue_on_outage():
        counts = handle_durably(rt, pairs)
    _maybe_drain(rt)
    return counts


def _maybe_drain(rt: Runtime) -> None:
    """Start a drain when the ingest queue has backed up (see worker/engine/drain.py)."""
    try:
        token = drain.request(rt)
        if token:
            _send_drain(token)  # the broker may be gone again: its slot's lease frees it
    except Exception as err:  # a drain is an optimization: ingest has already stored the events
        log.warning("could not ask for a drain: %s", type(err).__name__)


def _send_drain(token: str) -> None:
    drain_task.apply_async((token,), queue=keys.DRAIN_QUEUE, expires=drain.SLOT_LEASE)


@app.task(name="scorer.webhook", ignore_result=True, Request=SummaryRequest)
def webhook(body: dict, event_id: str | None = None) -> dict[str, int]:
    """One Tencent Live callback body (and the app's ledger id of the gift, if it has one)."""
    return _ingest(get_runtime(), [(body, event_id)])


@app.task(name="scorer.webhooks", ignore_result=True, Request=SummaryRequest)
def webhooks(items: list[dict[str, Any]]) -> dict[str, int]:
    """Many callbacks in one message: `[{"body": {...}, "event_id": "..."}]`, one Redis round trip
    for all their gifts."""
    rt = get_runtime()
    with _requeue_on_outage():
        pairs, bad = bulk_pairs(rt, items)
    counts = _ingest(rt, pairs) if pairs else {}
    if bad:
        counts["dead_lettered"] = counts.get("dead_lettered", 0) + bad
    return counts


@app.task(name="scorer.drain", ignore_result=True)
def drain_task(token: str) -> dict[str, int]:
    """Ingest queued webhook messages in batches while the ingest queue is backed up; returns
    the counts (messages, batches, ingested, duplicate, ...) that Flower shows."""
    rt = get_runtime()
    counts = drain.drain(rt, token, known=lambda name: name in app.tasks)
    if counts.pop("more", 0):
        _send_drain(drain.take_slot(rt))
    return counts
