"""Which due battles a tick dispatches when the API budget cannot serve them all.

Policy: a tick may dispatch at most what the shared rate limit can carry until the next tick
(what the limiter admits per second, `ratelimit.admitted_per_second`, x tick seconds), oldest
due first. A battle left out keeps its old due time, so it is older than any newcomer at the
next tick: nobody starves. Worst case: with N due battles and budget B per tick, a battle waits
ceil(N / B) ticks.

Freshness flushes are a fair share, with no deadline: a battle's last seconds belong to the end
game (worker/engine/flush/endgame.py, its own lane of the limiter). Letting battles near their end
jump this queue too starved the rest: at 2,000 battles ending 40 a second, the 200 battles
within 5 s of their end wanted 200 flushes a second of the 100 left, and p99 freshness went
to 50 s.
Reconciles (another API, no end game) keep the near-end-first order (`choose(urgent=...)`).
When the budget is short, each battle's turns are planned back from its end game
(worker/engine/battles/turns.py), so its end-game flush is its last turn; a battle whose end game
starts within a flush interval leaves its value to it (`skips_turn`).
"""

from __future__ import annotations

import math

from worker.engine.tencent.limiter import WINDOW_MS, admitted_per_second
from worker.engine.timers import TIMERS

#: Each running battle's score is audited this often (worker/engine/flush/audit.py),
#: within a quarter of get_battle_info's budget.
AUDIT_INTERVAL = TIMERS.audit.interval


def tick_seconds(flush_interval: float) -> float:
    """How often beat ticks: four times per flush interval, at most every 0.25 s (a gift waits
    for its battle's flush interval plus up to one tick: 0.5 s ticks put p99 past 2.5 s)."""
    return min(0.25, flush_interval / 4)


def urgent_window(flush_interval: float) -> float:
    """Seconds before its end in which a battle's flush jumps the queue."""
    return 3 * flush_interval + 2.0


#: A tick's budget covers at most this much time since the previous tick.
MAX_SPAN = TIMERS.tick.max_span


def tick_span(now: float, last: float | None, flush_interval: float) -> float:
    """Seconds the tick at `now` dispatches for: the time since the previous tick (`last`),
    at least one tick period and at most MAX_SPAN. Beat asks every tick period, but a tick
    that takes longer (a busy control worker) makes the next one skip: a fixed per-tick budget
    then left the budget unused (2.35 ticks/s, 80 of 140 calls/s, at 2,000 battles)."""
    period = tick_seconds(flush_interval)
    if last is None:
        return period
    return min(MAX_SPAN, max(period, now - last))


def per_tick_budget(api_rate: int, flush_interval: float, share: float = 1.0,
                    reserved: int = 0, span: float | None = None) -> int:
    """Calls of one API a tick may dispatch: what the limiter admits over `span` s (default:
    one tick period), less the `reserved` calls per limiter window kept for the end game, so
    dispatched tasks do not wait for it (holding control threads)."""
    per_second = max(0.0, admitted_per_second(api_rate) - reserved / (WINDOW_MS / 1000))
    seconds = tick_seconds(flush_interval) if span is None else span
    return max(1, math.floor(per_second * seconds * share))


def skips_turn(window_in: float, flush_interval: float) -> bool:
    """True when a battle whose end game starts in `window_in` s gets no freshness flush now:
    its end game's flush, within a flush interval, carries its value (two calls a moment apart
    would spend one for nothing). Once the window has started, never: a battle the end game
    does not hold (a batch left to settle, a refusal) is the tick's again, and after its end
    its flush settles or records what is left."""
    return 0 <= window_in < flush_interval


def choose(due: list[tuple[str, float]], ends: dict[str, float | None], now: float,
           budget: int, urgent: float = 0.0) -> list[str]:
    """Pick at most `budget` battle ids from `due` [(id, due since)], oldest first; with
    `urgent` > 0, battles ending within `urgent` s come first, soonest end first."""
    def key(item: tuple[str, float]) -> tuple[int, float]:
        bid, since = item
        end = ends.get(bid)
        if urgent > 0 and end is not None and end - now <= urgent:
            return (0, end)
        return (1, since)

    return [bid for bid, _ in sorted(due, key=key)[:budget]]
