"""The end game: in a battle's last seconds, value is flushed as it lands, soonest end first.

A battle is decided in its last seconds, and after its end nothing can be corrected. So once a
battle is within FINAL_WINDOW of its end (on Tencent's clock, worker/engine/tencent/clock.py),
value that lands is not left for the next tick:
- ingest marks the battle in ENDGAME_DUE the moment it stores the value (`mark`), and the tick
  promotes battles that entered the window with value already waiting (`plan`);
- one runner thread (`ensure_runner`: started in every process that runs ticks, one of them
  holding `bs:endgame:lock`) runs a round every TIMERS.endgame.poll s: value that has waited
  COALESCE (more gifts of the same moment ride along) is flushed on the HIGH lane of the limiter,
  soonest end first (deadline-first: when deadlines compete for the budget, the battle that
  ends first goes first, and the others coalesce meanwhile). It is a thread of its own, not a
  task: the end game never waits for a free worker thread, nor for beat's next tick;
- a battle's last flush goes as late as its value lands, up to the moment Tencent's clock is
  surely past the end; no flush goes after that (`flush.needs` records the rest unapplied).

The guarantee this buys (README, "In time"): a gift whose webhook reaches the worker 1 s or more
before the end, by Tencent's clock, is in the final score, as long as the budget can carry one
flush per ending battle (SCORER_API_RATE x 0.9 endings a second) and ingest keeps up.

The rounds themselves are in worker/engine/flush/rounds.py, and the timings every call
under a battle's lock keeps near its end in worker/engine/flush/near_end.py (both re-exported here).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import redis

from worker.engine.battles.final_window import (  # noqa: F401 (re-exported)
    FINAL_WINDOW,
    in_window,
    mark,
)
from worker.engine.flush.near_end import (  # noqa: F401 (re-exported: the end game's timings)
    END_MARGIN,
    FINAL_LEAD,
    NEAR_END,
    NEAR_END_READ,
    near_end,
    read_timeout,
)
from worker.engine.flush.rounds import (  # noqa: F401 (re-exported: the rounds)
    COALESCE,
    DECISIVE,
    Flush,
    decided,
    peek,
    run_finals,
    run_round,
)
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.keys import BattleKeys
from worker.engine.state.lock import RedisLock
from worker.engine.state.pipeline import pipeline
from worker.engine.timers import TIMERS

log = logging.getLogger("scorer.endgame")

#: The end game's timers are TIMERS.endgame (worker/engine/timers.py, EndGameTimers):
#: FINAL_WINDOW s before its end (Tencent's clock) a battle's value is flushed at once; rounds
#: run every `poll` s; the runner re-plans (promotes battles entering the window, renews the
#: reserve) every `plan_every` s; battles ending within HORIZON s past the window count toward
#: the reserve (bound here because tests read it).
HORIZON = TIMERS.endgame.horizon


def plan(rt: Runtime, now: float) -> int:
    """Promote battles entering their final window with value waiting, and keep the limiter's
    reserve for the decisive writes to come; returns how many come within the next window."""
    latest = rt.tclock.latest()
    ending = rt.redis.zrangebyscore(keys.ACTIVE, rt.tclock.earliest() - END_MARGIN,
                                    latest + FINAL_WINDOW + HORIZON, start=0, num=2000,
                                    withscores=True)
    ids = [b for b, _ in ending]
    to_come = 0
    limiter = rt.client.limiter
    if ids:
        pipe = pipeline(rt.redis)
        pipe.zmscore(keys.FLUSH_DUE, ids)
        pipe.zmscore(keys.ENDGAME_DUE, ids)
        for b in ids:
            pipe.hlen(BattleKeys(b).pending)
            pipe.hget(BattleKeys(b).meta, "turned_at")
        due, marked, *flat = pipe.execute()
        pending, turned = flat[0::2], [float(t or 0) for t in flat[1::2]]
        # Due, or holding value: for a turn planned later (worker/engine/battles/turns.py
        # plans the last one at the window's start by Tencent's clock as it was estimated
        # then), or not due at all. The last is a safety net (ingest stores the value, then
        # makes it due, in two commands; forget_idle re-adds what it races): value in the
        # window is the end game's whatever the due list says.
        promote = [b for (b, end), d, held in zip(ending, due, pending, strict=True)
                   if (held or (d is not None and d <= now)) and end - latest <= FINAL_WINDOW]
        if promote:
            rt.redis.zadd(keys.ENDGAME_DUE, {b: now for b in promote}, nx=True)
        with_value = [(end, t) for (_, end), d, m, held, t
                      in zip(ending, due, marked, pending, turned, strict=True)
                      if d is not None or m is not None or held]
        to_come = reserve(with_value, now, latest - now, limiter.window_ms / 1000.0)
    # The limiter holds back from LOW calls the reserve less the window's HIGH calls so far;
    # what must stay free is the writes to come, whoever made the window's HIGH calls (the
    # battles that ended a moment ago took it whole, and the LOW lane then the rest of the
    # window: the finale's last battles of a second got no write).
    limiter.set_reserve("set_battle_score",
                        to_come + limiter.high_in_window("set_battle_score") if to_come else 0)
    return to_come


def reserve(ending: list[tuple[float, float]], now: float, lead: float, window: float) -> int:
    """The decisive writes to come within the next `window` s (and the next plan's delay):
    of the battles with value `ending` ((end, turned_at) each; `lead`: Tencent's clock at the
    latest, less ours), those whose last DECISIVE s begin by then with no request of theirs
    since (worker/engine/flush/rounds.py, `decided`). One write each, all of them: when 100
    battles end in one second, their writes fall within 0.8 s, and an average over the horizon
    (what this was) kept 40 calls a window where 100 were due."""
    by = now + window + TIMERS.endgame.plan_every
    return sum(1 for end, turned in ending if not decided(end, turned, by, lead))


_runner_pid = 0
_runner_mu = threading.Lock()


def ensure_runner(rt: Runtime, flush: Flush) -> None:
    """Start this process's end-game runner thread once (again after a fork)."""
    global _runner_pid
    with _runner_mu:
        if _runner_pid == os.getpid():
            return
        _runner_pid = os.getpid()
    threading.Thread(target=_run, args=(rt, flush), daemon=True, name="endgame").start()


def _dedicated_alive(rt: Runtime) -> bool:
    return bool(rt.redis.exists(keys.ENDGAME_DEDICATED))


def _run(rt: Runtime, flush: Flush) -> None:
    """A thread runner: hold `bs:endgame:lock` (one runner at a time) and run rounds until it
    is lost; look again every half second. It stands by (and gives the lock up) while a
    dedicated end-game process beats."""
    seen = [time.monotonic()]

    def no_dedicated() -> bool:  # looked at every `plan_every` s, not every round
        if time.monotonic() - seen[0] < TIMERS.endgame.plan_every:
            return True
        seen[0] = time.monotonic()
        return not _dedicated_alive(rt)

    while True:
        _stand_by(rt, flush, no_dedicated)
        time.sleep(0.5)


def _stand_by(rt: Runtime, flush: Flush, go: Callable[[], bool]) -> None:
    """One look of a thread runner: run rounds unless a dedicated process beats. Never
    raises: an exception here (Redis away during a restart) ended the thread for good, and
    with it the process's fallback end game."""
    try:
        if not _dedicated_alive(rt):
            _hold_and_run(rt, flush, go)
    except (redis.RedisError, OSError):
        log.debug("end-game runner: Redis away", exc_info=True)
    except Exception:  # a bug must not end the fallback end game either: say it loudly
        log.exception("end-game runner failed")


def _hold_and_run(rt: Runtime, flush: Flush, go: Callable[[], bool]) -> None:
    """Take `bs:endgame:lock` if it is free and run rounds while we hold it and `go()`."""
    try:
        # A short lease: a runner frozen (SIGSTOP, a VM pause) holds every ending for no
        # longer than it, and the next host's waiting runner takes over within 50 ms of its
        # expiry. Losing it under load is harmless: two runners for a moment flush the same
        # battles under their battles' locks, on one shared budget.
        with RedisLock(rt.redis, keys.ENDGAME_LOCK, ttl_ms=TIMERS.endgame.lock_ttl_ms) as lock:
            if lock.held:
                # On while the lease is surely ours (a renewal late past it, or one that
                # failed, stops the rounds until the lock is held again).
                run_while(rt, flush, lambda: lock.fresh(0.0) and go())
    except Exception:  # Redis away: try again; the tick keeps flushing meanwhile
        log.exception("end-game runner failed")


def run_dedicated(rt: Runtime, flush: Flush, stop: threading.Event) -> None:
    """The end game of a dedicated process: beat `bs:endgame:dedicated` (so thread runners
    stand by), take `bs:endgame:lock` as soon as a standing-by runner lets it go, and run
    rounds until `stop`."""
    def beat() -> None:
        while not stop.is_set():
            try:
                # A dedicated process (worker/doors/endgame_main.py) says it runs by renewing
                # its key with this ttl.
                rt.redis.set(keys.ENDGAME_DEDICATED, os.getpid(),
                             px=TIMERS.endgame.dedicated_ttl_ms)
            except Exception:  # Redis away: the key expires, thread runners take over
                pass
            stop.wait(TIMERS.endgame.dedicated_ttl_ms / 4000)
        try:
            rt.redis.delete(keys.ENDGAME_DEDICATED)
        except Exception:
            pass

    threading.Thread(target=beat, daemon=True, name="endgame-beat").start()
    log.info("dedicated end-game runner started (pid %d)", os.getpid())
    while not stop.is_set():
        _hold_and_run(rt, flush, lambda: not stop.is_set())
        stop.wait(0.05)


def run_while(rt: Runtime, flush: Flush, go: Callable[[], bool]) -> int:
    """Plan every TIMERS.endgame.plan_every s and run a round every TIMERS.endgame.poll s while
    `go()`; returns flushes."""
    started, planned = 0, 0.0
    while go():
        if time.monotonic() - planned >= TIMERS.endgame.plan_every:
            plan(rt, rt.clock())
            planned = time.monotonic()
        rounds_due, finals_due = peek(rt)
        if rounds_due:
            started += run_round(rt, flush, rounds_due)
        if finals_due:
            started += run_finals(rt, flush, finals_due)
        time.sleep(TIMERS.endgame.poll)
    return started
