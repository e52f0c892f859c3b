"""Ingest consumers check in, so that the watermark never passes a message one of them holds
unseen.

kombu's Redis transport pops a message (BRPOP) and only then records it as unacknowledged
(`unacked_index`); and an idle consumer has a BRPOP pending, so Redis pops the next message into
its socket as soon as one comes. A process frozen (SIGSTOP, a VM pause) at either point holds a
message that is neither queued nor unacknowledged: the ingest watermark (watermark.py) passed
it, and reconcile took Tencent's count of that gift for a lost webhook (a false correction,
taken back once the webhook was ingested; issue 27, bench/RESULTS.md).

So every process that consumes the ingest queue checks in (bs:ingest:consumers, its time on
Redis's clock) every CHECK_IN s from a thread of its own, and the watermark moves past a pop
only once every live consumer has checked in more than MARGIN s after it: a consumer that was
running then has recorded what it popped (the pop and the record are microseconds apart), and a
frozen one holds W until it wakes. A consumer is dead, and no longer waited for, once it
leaves (worker shutdown), once its pid is gone on the host that looks (the lock's test:
worker/engine/state/lock.py), or after DEAD_AFTER s of silence (another host's crash: what
it had popped is lost with it, as kombu loses it).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import cast

import redis

from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.lock import holder_is_dead_here, process_token
from worker.engine.timers import TIMERS

log = logging.getLogger("scorer.consumers")

#: A consumer checks in this often (s).
CHECK_IN = TIMERS.ingest.check_in
#: The watermark waits for check-ins this long after a pop (s).
MARGIN = TIMERS.ingest.check_in_margin
#: A consumer silent this long is dead (s).
DEAD_AFTER = TIMERS.ingest.consumer_dead_after

_member: str | None = None
_pid = 0
_stop = threading.Event()


def member() -> str:
    """This process's name in bs:ingest:consumers: the lock's token form (host identity|pid|
    uuid), so that a dead pid of this host is recognised."""
    global _member, _pid
    if _member is None or _pid != os.getpid():
        _member, _pid = process_token(), os.getpid()
    return _member


def check_in(rt: Runtime) -> None:
    """Record that this consumer is running now."""
    rt.broker.zadd(keys.INGEST_CONSUMERS, {member(): rt.clock()})


def start(get_runtime: Callable[[], Runtime]) -> None:
    """Check in now and then every CHECK_IN s from a daemon thread, until `leave()`."""
    _stop.clear()
    check_in(get_runtime())

    def run() -> None:
        while not _stop.wait(CHECK_IN):
            try:
                check_in(get_runtime())
            except (redis.RedisError, OSError):
                pass  # Redis away: W waits for the next check-in, as it should
            except Exception:  # the thread never dies of one bad check-in (W would wait 30 s)
                log.exception("ingest check-in failed")

    threading.Thread(target=run, daemon=True, name="ingest-check-in").start()


def leave(rt: Runtime) -> None:
    """This consumer stops (a warm shutdown): no longer waited for."""
    _stop.set()
    try:
        rt.broker.zrem(keys.INGEST_CONSUMERS, member())
    except (redis.RedisError, OSError):
        pass


def forget_dead(rt: Runtime, now: float) -> tuple[int, float | None]:
    """Drop consumers silent past DEAD_AFTER and those whose pid is gone on this host (one
    silent for a second or more); returns how many, and the newest last check-in of those
    whose pid is gone (None: none): what such a consumer had popped by then may still sit in
    kombu's unacked set, and can go back to the queue at once (watermark.advance)."""
    broker = rt.broker
    gone = int(broker.zremrangebyscore(keys.INGEST_CONSUMERS, "-inf", now - DEAD_AFTER))
    quiet = cast("list[tuple[str, float]]", broker.zrangebyscore(
        keys.INGEST_CONSUMERS, "-inf", now - 1.0, withscores=True))
    dead = [(m, seen) for m, seen in quiet if holder_is_dead_here(m)]
    if dead:
        gone += int(broker.zrem(keys.INGEST_CONSUMERS, *(m for m, _ in dead)))
    return gone, max((seen for _, seen in dead), default=None)
