"""Drain: take queued ingest messages off the broker in claimed batches, ingest each in bulk.

One Celery task per gift costs Celery about 1.5 ms of CPU, which caps one-message-per-gift
ingest near 600/s on 2 cores however cheap the Redis side is. So when the ingest queue backs
up, an ingest task asks for a drain (`request`), and the `scorer.drain` task that follows
takes up to TIMERS.drain.batch messages at a time straight off kombu's list and ingests them as one
`scorer.webhooks` message would be (one Redis call per battle per batch).

Crash safety: a batch moves from the queue into a claim list in one Lua step (DRAIN_CLAIM),
so every message is always in the queue or in exactly one claim. The claim is deleted only
after its events are stored. A claim older than CLAIM_LEASE (its drain died or stalled) goes
back to the queue's consuming end (`recover`), and ingest is idempotent by event id, so a
batch ingested twice counts once. Messages that are not webhooks (another task of the app, a
message with an ETA) go back to the queue for Celery; unknown ones are dead-lettered.

Trade-off: a drain bypasses Celery's per-message machinery, so Flower shows the drain task
with its counts rather than one task per gift; at low traffic gifts flow as ordinary tasks.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worker.engine.deadletters import dead_letter
from worker.engine.ingest import watermark
from worker.engine.ingest.gifts import bulk_pairs, handle_durably
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.redisclock import redis_now
from worker.engine.timers import TIMERS

log = logging.getLogger("scorer.drain")

#: The drain's timers are TIMERS.drain (worker/engine/timers.py, DrainTimers, each with its
#: reason). Bound here, those that tests and tasks/ingest.py read: the queue length at which an
#: ingest task asks for a drain, the pause after a partial claim, the drains at once, the
#: leases of a slot and of a claim.
THRESHOLD = TIMERS.drain.threshold
PAUSE = TIMERS.drain.pause
MAX_SLOTS = TIMERS.drain.max_slots
SLOT_LEASE = TIMERS.drain.slot_lease
CLAIM_LEASE = TIMERS.drain.claim_lease

#: The ingest tasks whose messages a drain takes.
WEBHOOK = "scorer.webhook"
WEBHOOKS = "scorer.webhooks"


class BadMessage(ValueError):
    """A broker message the drain cannot read."""


@dataclass
class Message:
    """The parts of a Celery message the drain needs."""

    task: str | None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    eta: Any = None
    readable: bool = True  # False: not JSON protocol 1/2 (left to Celery or dead-lettered)


def decode(raw: str | bytes) -> Message:
    """Parse a kombu Redis message (Celery protocol 2, or 1) carrying JSON."""
    try:
        env = json.loads(raw)
    except ValueError:
        raise BadMessage("not a JSON envelope") from None
    if not isinstance(env, dict):
        raise BadMessage("envelope is not an object")
    headers = env.get("headers") or {}
    props = env.get("properties") or {}
    if not isinstance(headers, dict) or not isinstance(props, dict):
        raise BadMessage("headers and properties must be objects")
    task = headers.get("task")
    if env.get("content-type") != "application/json" or headers.get("compression"):
        return Message(task, readable=False)
    body: Any = env.get("body")
    try:
        if props.get("body_encoding") == "base64":
            body = base64.b64decode(body)
        payload = json.loads(body)
    except (TypeError, ValueError):
        raise BadMessage("body is not base64 JSON") from None
    if task is not None:  # protocol 2: [args, kwargs, embed]
        if not (isinstance(payload, list) and len(payload) >= 2):
            raise BadMessage("protocol 2 body must be [args, kwargs, embed]")
        args, kwargs = payload[0], payload[1]
        eta = headers.get("eta")
    elif isinstance(payload, dict):  # protocol 1
        task, args, kwargs, eta = (payload.get("task"), payload.get("args"),
                                   payload.get("kwargs"), payload.get("eta"))
    else:
        raise BadMessage("no task name")
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise BadMessage("args must be a list and kwargs an object")
    return Message(task, args, kwargs, eta)


def webhook_args(msg: Message) -> tuple[Any, Any]:
    """(body, event_id) of a `scorer.webhook(body, event_id=None)` message."""
    args, kwargs = msg.args, msg.kwargs
    if "body" in kwargs:
        body = kwargs["body"]
    elif args:
        body = args[0]
    else:
        raise BadMessage("scorer.webhook without a body")
    event_id = kwargs.get("event_id", args[1] if len(args) > 1 else None)
    return body, event_id


def ingest_messages(rt: Runtime, raws: list[str], known: Callable[[str], bool]) -> Counter[str]:
    """Ingest the webhooks among `raws`; give other tasks back to the queue; keep bad ones."""
    counts: Counter[str] = Counter(messages=len(raws))
    pairs: list[tuple[Any, Any]] = []
    back: list[str] = []
    for raw in raws:
        try:
            msg = decode(raw)
        except BadMessage as err:
            dead_letter(rt, {"message": str(raw)[:2000]}, None, f"ingest queue: {err}")
            counts["dead_lettered"] += 1
            continue
        ours = msg.task in (WEBHOOK, WEBHOOKS)
        if msg.eta is not None or (not ours and msg.task and known(msg.task)) or (
                ours and not msg.readable):
            back.append(raw)  # Celery's to run: a task of the app, or one due later
            continue
        if not ours or not msg.readable:
            dead_letter(rt, {"task": msg.task, "args": msg.args, "kwargs": msg.kwargs}, None,
                        f"ingest queue: unknown task {str(msg.task)[:100]!r}")
            counts["dead_lettered"] += 1
            continue
        try:
            if msg.task == WEBHOOK:
                pairs.append(webhook_args(msg))
            else:
                items = msg.kwargs.get("items", msg.args[0] if msg.args else None)
                more, bad = bulk_pairs(rt, items)
                pairs += more
                counts["dead_lettered"] += bad
        except BadMessage as err:
            dead_letter(rt, {"args": msg.args, "kwargs": msg.kwargs}, None, str(err))
            counts["dead_lettered"] += 1
    if pairs:
        counts.update(handle_durably(rt, pairs))
    if back:
        rt.broker.lpush(rt.settings.queue, *back)
        counts["returned"] += len(back)
    return counts


def request(rt: Runtime) -> str | None:
    """A slot token if the ingest queue is long enough for a drain and a slot is free."""
    token = uuid.uuid4().hex
    got = rt.script("DRAIN_REQUEST", broker=True)(
        keys=[rt.settings.queue, keys.DRAIN_SLOTS],
        args=[THRESHOLD, MAX_SLOTS, SLOT_LEASE, token])
    return token if int(got) else None


def take_slot(rt: Runtime) -> str:
    """A slot token for a successor drain, whatever the queue length: it replaces the slot
    its predecessor has just released, so drains stay within MAX_SLOTS."""
    token = uuid.uuid4().hex
    rt.broker.zadd(keys.DRAIN_SLOTS, {token: redis_now(rt.broker) + SLOT_LEASE})
    return token


def recover(rt: Runtime, max_claims: int = 20) -> int:
    """Put the messages of claims held past CLAIM_LEASE back on the queue; returns how many."""
    moved = int(rt.script("DRAIN_RECOVER", broker=True)(
        keys=[rt.settings.queue, keys.DRAIN_CLAIMS], args=[max_claims, CLAIM_LEASE]))
    if moved:
        watermark.restart(rt)  # they are older than the checkpoint's message
        log.warning("gave %d messages of stale drain claims back to the ingest queue", moved)
    return moved


def drain(rt: Runtime, token: str, known: Callable[[str], bool],
          run_for: float = TIMERS.drain.run_seconds, clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> dict[str, int]:
    """Claim and ingest batches until the queue runs dry or `run_for` has passed.

    Returns the counts, with `more` = 1 when the flood goes on (the caller starts a
    successor). The slot `token` is released on the way out.
    """
    totals: Counter[str] = Counter(batches=0, messages=0)
    started = clock()
    more = False
    try:
        recover(rt)
        while True:
            # A fresh key per claim: a drain task redelivered after its process died runs
            # again with the same token, and must never reuse (and release) a dead claim.
            claim = keys.drain_claim_key(uuid.uuid4().hex)
            raws = rt.script("DRAIN_CLAIM", broker=True)(
                keys=[rt.settings.queue, keys.DRAIN_CLAIMS, claim], args=[TIMERS.drain.batch])
            if not raws:
                break
            totals.update(ingest_messages(rt, raws, known))
            totals["batches"] += 1
            pipe = rt.broker.pipeline(transaction=False)
            pipe.delete(claim)
            pipe.zrem(keys.DRAIN_CLAIMS, claim)
            pipe.execute()
            if clock() - started >= run_for:
                more = len(raws) >= TIMERS.drain.min_batch
                break
            if len(raws) < TIMERS.drain.batch:
                if len(raws) < TIMERS.drain.min_batch:
                    break  # a trickle: ordinary tasks carry it
                sleep(PAUSE)
    finally:
        try:
            rt.broker.zrem(keys.DRAIN_SLOTS, token)
        except Exception:  # the slot's lease frees it
            pass
    out = dict(totals)
    out["more"] = int(more)
    return out
