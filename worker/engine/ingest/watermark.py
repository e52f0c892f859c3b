"""The ingest watermark: a time W such that every webhook queued before W has been ingested.

Reconcile judges a `get_gift_count` read only when every webhook that could be in it has been
ingested, so it needs more than "the queue is empty now": messages also sit in kombu's unacked
set while a process works on them, in drain claims, and in retries. The tick advances W
(WATERMARK, one Lua call on the broker):

1. A checkpoint notes the newest queued message at time cp. The queue is FIFO, so once that
   message has left it, every message queued before cp has been taken (noticed at time p).
2. Once no ingest message delivered before p is unacknowledged, no drain claim taken before
   p is held, and every live ingest consumer has checked in since p (a frozen one may hold a
   popped message kombu has not recorded yet: consumers.py), everything queued before cp has
   been ingested: W = cp. Then a new checkpoint.

Under a steady flow W trails the present by one to two ticks; under a backlog it stops, so
reconcile reads nothing it could not judge. Times are Redis's clock (kombu stamps unacked
messages with the worker host's clock: keep hosts in NTP sync, as for the rest).

A worker process that dies (SIGKILL, OOM) leaves the messages it had taken in kombu's unacked
set, and kombu gives them back only after its visibility timeout, by a sweep that runs about
every 100 s: a gift could come back minutes late, after its battle, and the watermark would
stand still all that time. Ingest tasks take milliseconds, so an ingest message unacknowledged
for STUCK_SECONDS has lost its consumer: the tick gives it back to the queue's consuming end
(`give_back_stuck`), where it is taken next. If its consumer was only slow, it runs twice:
harmless, ingest is idempotent by event id. A consumer known dead sooner (its pid gone on the
host that advances W: consumers.forget_dead) has what it took before its last check-in given
back at once.

Limits: kombu's own restores (its visibility-timeout sweep, a channel closed with messages
held) put a message back at the consuming end but, unlike `give_back_stuck` and the drain's
recovery, do not restart the checkpoint, so W may pass it before it is ingested; a rejected
task is requeued at the newest end, newer than its gift (tests/integration/
test_kombu_contract.py pins where each lands). Reconcile's rules for such a rare straggler:
a correction needs a second agreeing read, and a narrower baseline is judged again once the
watermark has moved on 2 s (worker/engine/reconcile/judge.py).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import cast

import redis

from worker.engine.ingest import consumers
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.redisclock import redis_now
from worker.engine.timers import TIMERS

log = logging.getLogger("scorer.watermark")

#: An ingest message unacknowledged this long has lost its consumer (see the module docstring).
STUCK_SECONDS = TIMERS.ingest.stuck


@dataclass(frozen=True)
class Watermark:
    """W, the Redis time it was computed at, and the ingest queue's length then."""

    w: float
    now: float
    queue: int

    @property
    def lag(self) -> float:
        """How far W trails the present, in seconds."""
        return self.now - self.w


def advance(rt: Runtime) -> Watermark:
    """Move the watermark forward as far as the queue, unacked messages and claims allow."""
    _, dead_seen = consumers.forget_dead(rt, rt.clock())
    if dead_seen is not None:
        # A consumer died on this host: what it had popped goes back now, not STUCK_SECONDS
        # on (a worker SIGKILLed just after a burst held W, and every read, for 10 s:
        # bench.chaos). A message of a live consumer taken meanwhile may run twice: harmless.
        give_back_stuck(rt, before=dead_seen + consumers.CHECK_IN + consumers.MARGIN)
    w, now, n = rt.script("WATERMARK", broker=True)(
        keys=[rt.settings.queue, keys.KOMBU_UNACKED_INDEX, keys.KOMBU_UNACKED,
              keys.DRAIN_CLAIMS, keys.INGEST_WATERMARK, keys.INGEST_CONSUMERS],
        args=[rt.settings.queue, consumers.DEAD_AFTER, consumers.MARGIN])
    return Watermark(float(w), float(now), int(n))


def current(rt: Runtime) -> float:
    """W as last advanced (0 when unknown: then nothing is judged)."""
    try:
        return float(rt.broker.hget(keys.INGEST_WATERMARK, "w") or 0.0)
    except (redis.RedisError, ValueError):
        return 0.0


def restart(rt: Runtime) -> None:
    """Drop the checkpoint: after messages went back to the queue's consuming end (ahead of the
    checkpoint's message), W may move only past a checkpoint taken after them."""
    rt.broker.hdel(keys.INGEST_WATERMARK, "cp_at", "cp_msg", "popped_at", "popped_through")


def give_back_stuck(rt: Runtime, limit: int = 1000, before: float | None = None) -> int:
    """Put ingest messages held past STUCK_SECONDS (or taken before `before`, Redis's clock)
    back at the queue's consuming end.

    Warning: an ingest message sent with an ETA (producers have no reason to) is held by Celery
    until then, and would be given back every STUCK_SECONDS meanwhile: harmless, ingest is
    idempotent, but wasteful.
    """
    broker = rt.broker
    # delivery tags, as str (decode_responses; no scores asked)
    tags = cast("list[str]", broker.zrangebyscore(keys.KOMBU_UNACKED_INDEX, "-inf",
                                                  redis_now(broker) - STUCK_SECONDS
                                                  if before is None else before,
                                                  start=0, num=limit))
    moved = 0
    for tag in tags:
        raw = broker.hget(keys.KOMBU_UNACKED, tag)
        if raw is None:
            continue
        try:
            message, _exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            continue
        if routing_key != rt.settings.queue:
            continue  # control and drain tasks run long: kombu's own timeout is theirs
        # Queue first, then forget: a crash in between leaves a duplicate, never a loss.
        broker.rpush(rt.settings.queue, json.dumps(message))
        pipe = broker.pipeline(transaction=False)
        pipe.hdel(keys.KOMBU_UNACKED, tag)
        pipe.zrem(keys.KOMBU_UNACKED_INDEX, tag)
        pipe.execute()
        moved += 1
    if moved:
        restart(rt)
        log.warning("gave %d ingest messages of a lost consumer back to the queue", moved)
    return moved
