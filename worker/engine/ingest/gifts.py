"""Ingest: validate callback bodies, keep the bad ones as dead letters, and apply the rest."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

from worker.engine import events
from worker.engine.battles import ending
from worker.engine.battles import registry as battles
from worker.engine.battles.records import Gift
from worker.engine.deadletters import dead_letter
from worker.engine.runtime import Runtime
from worker.engine.state.counters import bump_many
from worker.engine.state.pipeline import pipeline
from worker.engine.timers import TIMERS

__all__ = ["REDIS_OUTAGE", "apply_lifecycle", "bulk_pairs", "handle", "handle_durably"]

log = logging.getLogger("scorer.ingest")

#: Redis errors that mean "not stored, try again": ingest waits them out rather than drop
#: (for TIMERS.ingest.outage_retry, then the task layer requeues the events).
REDIS_OUTAGE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)

def handle(rt: Runtime, items: Iterable[tuple[Any, Any]]) -> dict[str, int]:
    """Apply (body, event_id) pairs: gifts in two Redis round trips, lifecycle events one by one.

    Never raises for bad input: every item ends ingested, duplicate, held, outside, ignored,
    a lifecycle change, or a dead letter.
    """
    counts = {"received": 0, "dead_lettered": 0, "ignored": 0, "lifecycle": 0}
    gifts: list[Gift] = []
    lifecycle: list[events.Lifecycle] = []
    dead = pipeline(rt.redis)
    mode = rt.settings.gift_value.value
    for body, event_id in items:
        counts["received"] += 1
        try:
            ev = events.parse(body)
            if isinstance(ev, events.GiftEvent):
                eid = (events.valid_event_id(event_id) if event_id is not None
                       else events.derive_event_id(body))
                gw = ev.GiftWater
                gifts.append(Gift(eid, ev.RoomId, tuple(gw.To_Account), gw.Time,
                                  ev.value(mode)))
            elif ev is None:
                counts["ignored"] += 1
            else:
                lifecycle.append(ev)
        except events.InvalidEvent as err:
            counts["dead_lettered"] += 1
            dead_letter(rt, body, event_id, err.reason, pipe=dead)
    if counts["dead_lettered"]:
        dead.execute()
    for ev in lifecycle:
        apply_lifecycle(rt, ev)
        counts["lifecycle"] += 1
    counts.update({k: counts.get(k, 0) + v for k, v in battles.route(rt, gifts).items()})
    bump_many(rt.redis, counts)
    return counts


def apply_lifecycle(rt: Runtime, ev: events.Lifecycle) -> None:
    """Register a created or started battle, or close an ended one."""
    if isinstance(ev, events.StartEvent):
        battles.register(rt, ev.BattleId, float(ev.StartTime), ev.Duration,
                         {r.RoomId: r.Owner_Account for r in ev.rooms}, "start_webhook")
    elif isinstance(ev, events.CreateEvent):
        rooms: dict[str, str | None] = {r: None for r in [ev.FromRoomId, *ev.ToRoomIdList]}
        battles.register(rt, ev.BattleId, 0.0, ev.Duration, rooms, "create_webhook")
    elif isinstance(ev, events.EndEvent):
        ending.record_end(rt, ev)


def bulk_pairs(rt: Runtime, items: Any) -> tuple[list[tuple[Any, Any]], int]:
    """The (body, event_id) pairs of a `scorer.webhooks` items list; bad items dead-lettered.

    Returns the pairs and the number of items dead-lettered.
    """
    if not isinstance(items, list):
        dead_letter(rt, items, None, "scorer.webhooks: items must be a list")
        return [], 1
    pairs: list[tuple[Any, Any]] = []
    bad = 0
    for item in items:
        if isinstance(item, dict) and "body" in item:
            pairs.append((item["body"], item.get("event_id")))
        else:
            bad += 1
            dead_letter(rt, item, None, "scorer.webhooks: item must be {body, event_id}")
    return pairs, bad


def handle_durably(rt: Runtime, items: list[tuple[Any, Any]],
                   retry_for: float = TIMERS.ingest.outage_retry,
                   sleep: Callable[[float], None] = time.sleep) -> dict[str, int]:
    """`handle`, waiting out a Redis outage: the events are stored, or this raises the outage
    after `retry_for` seconds and the caller puts them back on the queue. Never drops them.

    A retry after a partial failure is safe: gifts are de-duplicated by event id (a dead
    letter of the same bad body may be kept twice).
    """
    deadline = time.monotonic() + retry_for
    delay = 0.05
    while True:
        try:
            return handle(rt, items)
        except REDIS_OUTAGE as err:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("state Redis unavailable (%s); ingest retries in %.2fs",
                        type(err).__name__, delay)
            sleep(delay)
            delay = min(2.0, delay * 2)
