"""Ingest messages (`scorer.webhook[s]`): their events stored durably, then a drain if backed up."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from worker.engine.ingest import drain
from worker.engine.ingest.gifts import bulk_pairs, handle_durably
from worker.engine.runtime import Runtime

log = logging.getLogger("scorer.tasks")

#: Sends a `scorer.drain` message holding a drain slot's token (the task layer's).
SendDrain = Callable[[str], None]


def summarize(kwargs: Any) -> str:
    """What Flower and the worker's log show of an ingest message's kwargs: ids, never the
    body."""
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


def store(rt: Runtime, pairs: list[tuple[Any, Any]], send_drain: SendDrain) -> dict[str, int]:
    """Store (body, event_id) pairs, waiting out a Redis outage (one that lasts raises:
    ingest.REDIS_OUTAGE, for the caller to give the message back), then start a drain if the
    ingest queue has backed up."""
    counts = handle_durably(rt, pairs)
    _maybe_drain(rt, send_drain)
    return counts


def store_items(rt: Runtime, items: Any, send_drain: SendDrain) -> dict[str, int]:
    """`store` for the items of a `scorer.webhooks` message: `[{"body": {...}, "event_id":
    "..."}]`; bad items are dead-lettered and counted."""
    pairs, bad = bulk_pairs(rt, items)
    counts = store(rt, pairs, send_drain) if pairs else {}
    if bad:
        counts["dead_lettered"] = counts.get("dead_lettered", 0) + bad
    return counts


def _maybe_drain(rt: Runtime, send_drain: SendDrain) -> None:
    """Start a drain when the ingest queue has backed up (see worker/engine/ingest/drain.py)."""
    try:
        token = drain.request(rt)
        if token:
            send_drain(token)  # the broker may be gone again: its slot's lease frees it
    except Exception as err:  # a drain is an optimization: ingest has already stored the events
        log.warning("could not ask for a drain: %s", type(err).__name__)
