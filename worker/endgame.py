"""The end game: in a battle's last seconds, value is flushed as soon as it lands, soonest end first.

A battle is decided in its last seconds, and after its end nothing can be corrected. So once a
battle is within FINAL_WINDOW of its end (on Tencent's clock, worker/tclock.py), value that
lands is not left for the next tick:
- ingest marks the battle in ENDGAME_DUE the moment it stores the value (`mark`), and the tick
  promotes battles that entered the window with value already waiting (`promote`);
- the tick's holder runs rounds every POLL seconds between ticks (`run_until`): value that has
  waited COALESCE (more gifts of the same moment ride along) is flushed on the HIGH lane of the
  limiter, soonest end first (deadline-first: when deadlines compete for the budget, the battle
  that ends first goes first, and the others coalesce meanwhile);
- a battle's last flush goes as late as its value lands, up to the moment Tencent's clock is
  surely past the end; no flush goes after that (`flush.needs` records the rest unapplied).

The guarantee this buys (README, "In time"): a gift whose webhook reaches the worker 1 s or more
before the end, by Tencent's clock, is in the final score, as long as the budget can carry one
flush per ending battle (SCORER_API_RATE x 0.9 endings a second) and ingest keeps up.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from typing import Callable

from worker import keys
from worker.ratelimit import HIGH
from worker.runtime import Runtime

log = logging.getLogger("scorer.endgame")

#: Seconds before its end (Tencent's clock) from which a battle's value is flushed at once.
FINAL_WINDOW = 1.5
#: Value waits this long for more of the same moment before an end-game flush.
COALESCE = 0.03
#: The rounds' period between ticks.
POLL = 0.02
#: Threads of the end-game flushes (each waits on one Tencent round trip at a time).
THREADS = 16
#: End-game battles looked at per round, soonest end first.
ROUND_MAX = 200

_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_running: set[str] = set()
_mu = threading.Lock()


def in_window(rt: Runtime, end: float) -> bool:
    """True when a battle ending at `end` (Tencent's clock) is in its final window."""
    return 0 < end and end - rt.tclock.latest() <= FINAL_WINDOW


def mark(pipe, battle_ids: list[str], now: float) -> None:
    """Queue (in `pipe`) end-game flushes of battles that just got value."""
    if battle_ids:
        pipe.zadd(keys.ENDGAME_DUE, {b: now for b in battle_ids}, nx=True)


def promote(rt: Runtime, ending: list[str]) -> int:
    """Mark end-game battles among `ending` whose value was waiting before they entered it."""
    if not ending:
        return 0
    since = rt.redis.zmscore(keys.FLUSH_DUE, ending)
    waiting = [b for b, s in zip(ending, since) if s is not None]
    if not waiting:
        return 0
    return int(rt.redis.zadd(keys.ENDGAME_DUE, {b: rt.clock() for b in waiting}, nx=True))


def reserve(rt: Runtime, ending_with_value: int, window: float) -> int:
    """Calls per limiter window to keep for end-game flushes: two per battle ending within the
    next FINAL_WINDOW + 1 s with value (its last flushes), spread over that time."""
    if not ending_with_value:
        return 0
    return math.ceil(2 * ending_with_value * window / (FINAL_WINDOW + 1.0))


def _executor() -> ThreadPoolExecutor:
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():
        _pool = ThreadPoolExecutor(THREADS, thread_name_prefix="endgame")
        _pool_pid = os.getpid()
        _running.clear()
    return _pool


#: flush(rt, battle_id, lane=..., admitted=...) -> outcome: worker.flush.flush_battle
Flush = Callable[..., str]


def run_round(rt: Runtime, flush: Flush) -> int:
    """Flush end-game battles whose value has coalesced, soonest end first, while the HIGH lane
    admits calls; returns how many flushes started."""
    now = rt.clock()
    due = rt.redis.zrangebyscore(keys.ENDGAME_DUE, "-inf", now - COALESCE, start=0,
                                 num=ROUND_MAX)
    if not due:
        return 0
    ends = rt.redis.zmscore(keys.ACTIVE, due)
    order = sorted((e if e is not None else 0.0, b) for b, e in zip(due, ends))
    started = 0
    pool = _executor()
    for _, bid in order:
        with _mu:
            if bid in _running:
                continue  # its flush is on its way; the value that came since waits for it
        if rt.client.limiter.try_acquire("set_battle_score", HIGH) > 0:
            break  # the budget is full this instant: next round, soonest end still first
        rt.redis.zrem(keys.ENDGAME_DUE, bid)
        with _mu:
            _running.add(bid)
        pool.submit(_flush, rt, bid, flush)
        started += 1
    return started


def _flush(rt: Runtime, battle_id: str, flush: Flush) -> None:
    try:
        outcome = flush(rt, battle_id, lane=HIGH, admitted=True)
        if outcome in ("busy", "rate_limited", "retry_later", "lock_lost"):
            rt.redis.zadd(keys.ENDGAME_DUE, {battle_id: rt.clock()}, nx=True)
    except Exception:  # the battle stays in FLUSH_DUE: the tick brings it back
        log.exception("end-game flush failed", extra={"battle_id": battle_id})
    finally:
        with _mu:
            _running.discard(battle_id)


def run_until(rt: Runtime, until: float, flush: Flush) -> int:
    """Run rounds every POLL seconds until `until` (monotonic); returns flushes started."""
    started = 0
    while True:
        started += run_round(rt, flush)
        left = until - time.monotonic()
        if left <= 0:
            return started
        time.sleep(min(POLL, left))
