"""A battle's flush turns when the budget is short: planned back from the start of its end game.

While the budget can flush every battle with value each SCORER_FLUSH_INTERVAL, a battle is
flushed once its value is due. Beyond that, battles take turns: a round over N battles with
value lasts N / (what the limiter admits a second) (`round_seconds`), and each is flushed once
a round. Its end game (worker/engine/flush/endgame.py) flushes every battle at the start of its
final window anyway, so the turns are planned back from there:
- a battle that gets value is first due a whole number of rounds before its end game
  (`first_turn`);
- after each turn, what is left until its end game is divided into equal turns no longer than a
  round (`next_turn`).
The end game's flush is then the battle's last turn, not one more call on top of a round: with
turns left where a battle first got value, 40 endings a second took 20 to 40 calls a second
that the rounds of every other battle could not use. The tick publishes the round it plans with
(`publish_round`), and ingest reads it (`current_round`) to place a battle's first turn.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from typing import Any

from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.tencent.limiter import admitted_per_second
from worker.engine.timers import TIMERS


def round_seconds(battles: int, api_rate: int) -> float:
    """How long one round of turns over `battles` takes at what the limiter admits (both lanes:
    a battle's end-game flush is one of its turns)."""
    return battles / max(1e-9, admitted_per_second(api_rate))


def planned(round_s: float, flush_interval: float) -> bool:
    """True when turns are planned back from the end game (a round of TIMERS.tick.plan_from
    flush intervals or more); in a shorter round, value is flushed as soon as it is due."""
    return round_s >= TIMERS.tick.plan_from * flush_interval


def first_turn(now: float, window_at: float | None, round_s: float,
               flush_interval: float) -> float:
    """When a battle that just got value is first due: now, or under planned turns the first
    time a whole number of rounds before its end game starts (`window_at`, our clock; None: end
    not known), which is within a round."""
    if window_at is None or not planned(round_s, flush_interval) or window_at <= now:
        return now
    return window_at - math.floor((window_at - now) / round_s) * round_s


def next_turn(now: float, window_at: float | None, round_s: float,
              flush_interval: float) -> float:
    """When a battle flushed now is due again: one flush interval on, or under planned turns
    the first of the equal turns (none longer than a round) left until its end game starts."""
    if window_at is None or not planned(round_s, flush_interval) or window_at <= now:
        return now + flush_interval
    left = window_at - now
    if left <= round_s:  # its end game's flush is its next turn
        return window_at
    return now + left / math.ceil(left / round_s)


def turn_after(turned_at: str | float | None, start: str | float | None, window_at: float,
               round_s: float, flush_interval: float) -> float:
    """When a battle is due, planned again with the round as it is now: from its last turn
    (its meta's `turned_at`), or with none yet, its first turn counted from its start. While
    the round grows (battles getting value for the first time), a turn planned with a shorter
    round comes too soon: the first battles to get value were given their first turns packed
    into the first seconds, twice what the budget carries, and the schedule fell 20 s behind
    (10,000 battles). -inf when it may go now (turns not planned, nothing to plan from)."""
    if not planned(round_s, flush_interval):
        return -math.inf
    last, begun = seconds(turned_at), seconds(start)
    if last is not None:
        return next_turn(last, window_at, round_s, flush_interval)
    if begun:
        return first_turn(begun, window_at, round_s, flush_interval)
    return -math.inf


def seconds(value: str | float | None) -> float | None:
    """A time read from Redis as seconds (None: absent, garbage or not finite)."""
    try:
        seconds = None if value is None else float(value)
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) else None


def publish_round(rt: Runtime, round_s: float) -> None:
    """Tell ingest the round the tick plans with (it expires when ticks stop)."""
    rt.redis.set(keys.FLUSH_ROUND, repr(round_s), px=TIMERS.tick.round_ttl_ms)


#: A Redis client → (the round, when read); weak, so a client gone takes its entry along.
_read: weakref.WeakKeyDictionary[Any, tuple[float, float]] = weakref.WeakKeyDictionary()
_read_mu = threading.Lock()


def current_round(rt: Runtime) -> float:
    """The round the tick last published (0 if none lately), read every TIMERS.tick.round_read s."""
    with _read_mu:
        value, at = _read.get(rt.redis, (0.0, -math.inf))
    if time.monotonic() - at < TIMERS.tick.round_read:
        return value
    raw = rt.redis.get(keys.FLUSH_ROUND)
    try:
        value = max(0.0, float(raw)) if raw is not None else 0.0
    except ValueError:
        value = 0.0
    with _read_mu:
        _read[rt.redis] = (value, time.monotonic())
    return value
