"""Ingest tasks, the public input of the worker: `scorer.webhook[s]`, and `scorer.drain`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery.exceptions import Reject
from celery.worker.request import Request

from worker.doors.app import app
from worker.engine.ingest import drain, intake
from worker.engine.ingest.gifts import REDIS_OUTAGE
from worker.engine.runtime import get_runtime
from worker.engine.state import keys


class SummaryRequest(Request):
    """A request whose argument reprs (sent in task events to Flower) are summaries."""

    @property
    def argsrepr(self) -> str:
        return "()"

    @property
    def kwargsrepr(self) -> str:
        return intake.summarize(self.kwargs)


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


def _send_drain(token: str) -> None:
    drain_task.apply_async((token,), queue=keys.DRAIN_QUEUE, expires=drain.SLOT_LEASE)


@app.task(name="scorer.webhook", ignore_result=True, Request=SummaryRequest)
def webhook(body: dict, event_id: str | None = None) -> dict[str, int]:
    """One Tencent Live callback body (and the app's ledger id of the gift, if it has one)."""
    rt = get_runtime()
    with _requeue_on_outage():
        return intake.store(rt, [(body, event_id)], _send_drain)


@app.task(name="scorer.webhooks", ignore_result=True, Request=SummaryRequest)
def webhooks(items: list[dict[str, Any]]) -> dict[str, int]:
    """Many callbacks in one message: `[{"body": {...}, "event_id": "..."}]`, one Redis round trip
    for all their gifts."""
    rt = get_runtime()
    with _requeue_on_outage():
        return intake.store_items(rt, items, _send_drain)


@app.task(name="scorer.drain", ignore_result=True)
def drain_task(token: str) -> dict[str, int]:
    """Ingest queued webhook messages in batches while the ingest queue is backed up; returns
    the counts (messages, batches, ingested, duplicate, ...) that Flower shows."""
    rt = get_runtime()
    counts = drain.drain(rt, token, known=lambda name: name in app.tasks)
    if counts.pop("more", 0):
        _send_drain(drain.take_slot(rt))
    return counts
