"""Ingest: validate callback bodies, keep the bad ones as dead letters, and apply the rest."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Iterable

import redis

from worker.engine.state.pipeline import pipeline
from worker.engine import battles, events
from worker.engine.state import keys
from worker.engine.battles import Gift
from worker.engine.runtime import Runtime
from worker.engine.state.counters import bump_many

log = logging.getLogger("scorer.ingest")

#: A dead letter keeps at most this much of the original body (a giant body is itself the bug).
MAX_DEAD_BODY = 64 * 1024
#: Dead letters kept; past this the oldest go and `dead_letters_dropped` counts them.
MAX_DEAD_LETTERS = 100_000
#: Redis errors that mean "not stored, try again": ingest waits them out rather than drop.
REDIS_OUTAGE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
#: How long one ingest keeps retrying a Redis outage before it gives the events back to the
#: queue (the task layer requeues them); shorter than the task time limit.
OUTAGE_RETRY_SECONDS = 60.0


def dead_letter(rt: Runtime, body: Any, event_id: Any, reason: str, pipe=None) -> None:
    """Keep an event that cannot be scored, with its reason, for listing and replay."""
    try:
        raw = json.dumps(body, default=repr)
    except (TypeError, ValueError, RecursionError):
        raw = json.dumps(repr(body)[:MAX_DEAD_BODY])
    if len(raw) > MAX_DEAD_BODY:
        raw = json.dumps({"truncated": raw[:MAX_DEAD_BODY]})
    entry = json.dumps({"reason": reason, "event_id": None if event_id is None else
                        str(event_id)[:200], "at": rt.clock(), "body": json.loads(raw)})
    p = pipe or pipeline(rt.redis)
    p.rpush(keys.DEAD_LETTERS, entry)
    p.ltrim(keys.DEAD_LETTERS, -MAX_DEAD_LETTERS, -1)
    if pipe is None:
        p.execute()
    log.warning("dead-lettered event: %s", reason,
                extra={"event_id": None if event_id is None else str(event_id)[:200]})


def handle(rt: Runtime, items: Iterable[tuple[Any, Any]]) -> dict[str, int]:
    """Apply (body, event_id) pairs: gifts in two Redis round trips, lifecycle events one by one.

    Never raises for bad input: every item ends ingested, duplicate, held, outside, ignored,
    a lifecycle change, or a dead letter.
    """
    counts = {"received": 0, "dead_lettered": 0, "ignored": 0, "lifecycle": 0}
    gifts: list[Gift] = []
    lifecycle: list[Any] = []
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


def apply_lifecycle(rt: Runtime, ev) -> None:
    """Register a created or started battle, or close an ended one."""
    if isinstance(ev, events.StartEvent):
        battles.register(rt, ev.BattleId, float(ev.StartTime), ev.Duration,
                         {r.RoomId: r.Owner_Account for r in ev.rooms}, "start_webhook")
    elif isinstance(ev, events.CreateEvent):
        rooms = {r: None for r in [ev.FromRoomId, *ev.ToRoomIdList]}
        battles.register(rt, ev.BattleId, 0.0, ev.Duration, rooms, "create_webhook")
    elif isinstance(ev, events.EndEvent):
        battles.record_end(rt, ev)


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
                   retry_for: float = OUTAGE_RETRY_SECONDS,
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
