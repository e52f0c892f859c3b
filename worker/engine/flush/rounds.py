"""The end game's rounds: due end-game flushes and last writes on a thread pool, soonest first."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from worker.engine.flush.due import holding_value
from worker.engine.flush.near_end import END_MARGIN
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.keys import BattleKeys
from worker.engine.state.pipeline import pipeline
from worker.engine.tencent.limiter import HIGH, LOW
from worker.engine.timers import TIMERS

log = logging.getLogger("scorer.endgame")

#: Value waits COALESCE s for more of the same moment before an end-game flush, on
#: TIMERS.endgame.threads threads, TIMERS.endgame.round_max battles looked at per round
#: (worker/engine/timers.py, EndGameTimers). COALESCE is bound here because tests read it.
COALESCE = TIMERS.endgame.coalesce
#: A battle's decisive write leaves within its last DECISIVE s (see `decided`).
DECISIVE = TIMERS.endgame.decisive

#: flush(rt, battle_id, lane=..., admitted=...) -> outcome: worker.engine.flush.flusher.flush_battle
Flush = Callable[..., str]

_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_running: set[str] = set()
_mu = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():
        _pool = ThreadPoolExecutor(TIMERS.endgame.threads, thread_name_prefix="endgame")
        _pool_pid = os.getpid()
        _running.clear()
    return _pool


def peek(rt: Runtime) -> tuple[list[str], list[str]]:
    """(end-game flushes due, last writes due): what `run_round` and `run_finals` would read
    first, in one round trip. The runner asks 50 times a second, and mostly both are empty:
    two round trips each time were a third of the end-game process's CPU outside its ends."""
    pipe = pipeline(rt.redis)
    _rounds_due(pipe, rt.clock())
    _finals_due(rt, pipe)
    rounds, finals = pipe.execute()
    return rounds, finals


def _rounds_due(r: Any, now: float) -> Any:
    """End-game flushes whose value has coalesced, soonest due first (on `r`: the state Redis
    or a batch of it)."""
    return r.zrangebyscore(keys.ENDGAME_DUE, "-inf", now - COALESCE, start=0,
                           num=TIMERS.endgame.round_max)


def _finals_due(rt: Runtime, r: Any) -> Any:
    """Last absolute writes due by the latest Tencent's clock may read (on `r`, as above)."""
    return r.zrangebyscore(keys.FINAL_DUE, "-inf", rt.tclock.latest(), start=0,
                           num=TIMERS.endgame.round_max)


def run_finals(rt: Runtime, flush: Flush, due: list[str] | None = None) -> int:
    """Start the last absolute writes that are due (keys.FINAL_DUE; `due`: as `peek` just
    read them); returns how many. One whose battle is surely over is dropped: it could only
    be refused (100006)."""
    if due is None:
        due = _finals_due(rt, rt.redis)
    if not due:
        return 0
    over = rt.tclock.earliest() - END_MARGIN
    late = {b for b, e in zip(due, rt.redis.zmscore(keys.ACTIVE, due), strict=True)
            if e is not None and e <= over}
    if late:
        rt.redis.zrem(keys.FINAL_DUE, *late)
    started = 0
    for bid in (b for b in due if b not in late):
        if rt.client.limiter.try_acquire("set_battle_score", HIGH) > 0:
            break  # next round
        rt.redis.zrem(keys.FINAL_DUE, bid)
        _executor().submit(_flush, rt, bid, flush, True)
        started += 1
    return started


def run_round(rt: Runtime, flush: Flush, due: list[str] | None = None) -> int:
    """Flush end-game battles whose value has coalesced (`due`: as `peek` just read them),
    decisive writes first (`decided`), soonest end first, while the HIGH lane admits calls;
    returns how many flushes started."""
    now = rt.clock()
    if due is None:
        due = _rounds_due(rt.redis, now)
    if not due:
        return 0
    pipe = pipeline(rt.redis)
    pipe.zmscore(keys.ACTIVE, due)
    for bid in due:
        bk = BattleKeys(bid)
        pipe.hlen(bk.pending)
        pipe.exists(bk.inflight)
        pipe.exists(bk.lock)
        pipe.hget(bk.meta, "turned_at")
    ends, *flat = pipe.execute()
    res = [x for k, x in enumerate(flat) if k % 4 != 3]  # pending, in flight, locked
    turned = {b: float(flat[4 * k + 3] or 0) for k, b in enumerate(due)}
    # A battle surely over makes no call: its flush only records what is left. It goes after
    # every live one, with no slot: soonest end first put the battles that had just ended at
    # the head, each round spent its slots and threads on them, and the battles still ending
    # were reached after their end in turn (the finale: no call at all for the last 2 s of
    # endings, 100 battles a second, each found over when its turn came).
    over = rt.tclock.earliest() - END_MARGIN
    lead = rt.tclock.latest() - now  # Tencent's clock at the latest, less ours
    idle = [b for k, b in enumerate(due) if not res[3 * k] and not res[3 * k + 1]]
    if idle:  # flushed meanwhile by the tick's flushes: no slot for them
        rt.redis.zrem(keys.ENDGAME_DUE, *idle)
        # An ingest that stored value after our read met its battle still marked (ZADD NX),
        # and our ZREM took the mark off: mark those again, as forget_idle does the due list.
        back = holding_value(rt, idle)
        if back:
            rt.redis.zadd(keys.ENDGAME_DUE, {b: now for b in back}, nx=True)
    # A batch in flight under a held lock: its flush settles it in a moment, and a flush now
    # would only find it busy. It stays due, and takes no slot until the lock is free.
    held = {b for k, b in enumerate(due) if res[3 * k + 1] and res[3 * k + 2]}
    ended = [b for b, e in zip(due, ends, strict=True)
             if e is not None and e <= over and b not in idle and b not in held]
    order = sorted((decided(e, turned[b], now, lead), e if e is not None else 0.0, b)
                   for b, e in zip(due, ends, strict=True)
                   if b not in idle and b not in held and (e is None or e > over))
    started = 0
    pool = _executor()
    for done, _, bid in order:
        with _mu:
            if bid in _running:
                continue  # its flush is on its way; the value that came since waits for it
        # Any other flush takes what the decisive writes leave: the LOW lane, below the
        # reserve `plan` keeps for the battles ending next (on HIGH, the extra writes of one
        # second's battles took the slots the next second's decisive writes needed).
        if rt.client.limiter.try_acquire("set_battle_score", LOW if done else HIGH) > 0:
            break  # the budget is full this instant: next round, soonest end still first
        rt.redis.zrem(keys.ENDGAME_DUE, bid)
        with _mu:
            _running.add(bid)
        pool.submit(_flush, rt, bid, flush)
        started += 1
    for bid in ended[:TIMERS.endgame.threads]:  # the rest: next round, still after the live
        with _mu:
            if bid in _running:
                continue
            _running.add(bid)
        rt.redis.zrem(keys.ENDGAME_DUE, bid)
        pool.submit(_flush, rt, bid, flush)
    return started


def decided(end: float | None, turned_at: float, now: float, lead: float) -> bool:
    """False while a battle is in its last DECISIVE s (by the latest Tencent's clock may read)
    and no request of it left since they began: its decisive write is still to come.

    Rounds serve those first, soonest end first, then any other flush (value before those last
    seconds, or landing after the decisive write): when 100 battles end in a second, each gets
    its one write that carries everything delivered a second before its end, before any gets a
    second (by soonest end alone, the first battles of each second took two or three writes
    and the last ones, by BattleId, none: 115 of 600 in the finale)."""
    if end is None:
        return True
    starts = end - DECISIVE - lead  # by our clock
    return now < starts or turned_at >= starts


def _flush(rt: Runtime, battle_id: str, flush: Flush, final: bool = False) -> None:
    try:
        if final:
            outcome = flush(rt, battle_id, lane=HIGH, admitted=True, final=True)
            if outcome in ("busy", "failed", "rate_limited", "retry_later", "lock_lost"):
                rt.redis.zadd(keys.FINAL_DUE, {battle_id: 0}, nx=True)  # next round
            log.info("last absolute write of %s: %s", battle_id, outcome)
            return
        outcome = flush(rt, battle_id, lane=HIGH, admitted=True)
        if outcome in ("busy", "rate_limited", "retry_later", "lock_lost"):
            rt.redis.zadd(keys.ENDGAME_DUE, {battle_id: rt.clock()}, nx=True)
    except Exception:  # the battle stays in FLUSH_DUE: the tick brings it back
        log.exception("end-game flush failed", extra={"battle_id": battle_id})
    finally:
        with _mu:
            _running.discard(battle_id)
