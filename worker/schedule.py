"""Which due battles a tick dispatches when the API budget cannot serve them all.

Policy: a tick may dispatch at most what the shared rate limit can carry until the next tick
(90 % of SCORER_API_RATE x tick seconds set_battle_score calls). Battles whose end is near come
first, soonest end first; then the rest by how long they have been due, longest first; battles
already ended come last (a write after the end is refused: it can only record the value as
unapplied). A battle left out keeps its old due time, so it is older than any newcomer at the
next tick: nobody starves. A battle is flushed at most once per SCORER_FLUSH_INTERVAL, but near
its end it may be flushed every tick (a battle with nothing pending costs no call). While some
battles are near their end, the others take at most 80 %
of a tick's budget, so the next near-end flushes find the limiter free.
Worst case: with N due battles and budget B per tick, a battle waits ceil(N / B) ticks, except
near its end, where it jumps the queue (and only the battles also near their end compete).
When battles end faster than B per tick, the near-end battles take the whole budget and the
others wait until they are near their end themselves: their value is late, never lost.
Shedding: while the ingest queue holds a backlog, a tick sends only the flushes of battles near
their end and no reconcile (tasks/control.py): the worker's processes go to scoring gifts first,
since a gift still in the queue at its battle's end is lost to the score whatever else runs.
"""

from __future__ import annotations

import math

from worker.ratelimit import HEADROOM


def tick_seconds(flush_interval: float) -> float:
    """How often beat ticks: twice per flush interval, at most every 0.5 s."""
    return min(0.5, flush_interval / 2)


def urgent_window(flush_interval: float) -> float:
    """Seconds before its end in which a battle's flush jumps the queue."""
    return 3 * flush_interval + 2.0


def next_flush(now: float, end: float | None, flush_interval: float) -> float:
    """When a battle flushed now may be flushed again: one interval later, but near its end at
    the next tick. A gift that reached Redis just after a flush (ingest under load takes up to
    a second) would otherwise wait out the interval past the end."""
    if end is not None and 0 < end - now <= urgent_window(flush_interval):
        return now + tick_seconds(flush_interval)
    return now + flush_interval


def per_tick_budget(api_rate: int, flush_interval: float, share: float = 1.0) -> int:
    """Calls of one API a tick may dispatch: what the limiter admits until the next tick, so
    dispatched tasks do not sit in worker processes waiting for it (and starve ingest)."""
    return max(1, math.floor(api_rate * HEADROOM * tick_seconds(flush_interval) * share))


#: Share of a tick's budget that battles far from their end may not take while others are
#: near theirs: the limiter then has room for the near-end flushes of the next ticks at once,
#: instead of making them wait behind calls dispatched earlier. Near-end battles may take all.
RESERVE = 0.2


def choose(due: list[tuple[str, float]], ends: dict[str, float | None], now: float,
           budget: int, urgent: float, urgent_only: bool = False,
           ending_soon: bool = False) -> list[str]:
    """Pick at most `budget` battle ids from `due` [(id, due since)], urgent ones first (only
    those with `urgent_only`; with `ending_soon`, the others leave RESERVE of it unused)."""
    def key(item: tuple[str, float]) -> tuple[int, float]:
        bid, since = item
        end = ends.get(bid)
        if end is not None and end <= now:
            # Ended: Tencent refuses the write (100006); flushing it only records the value as
            # unapplied. Served first, such flushes would make the next battles late too.
            return (2, since)
        if end is not None and end - now <= urgent:
            return (0, end)
        return (1, since)

    ranked = sorted(due, key=key)
    first = [bid for bid, since in ranked if key((bid, since))[0] == 0][:budget]
    if urgent_only:
        return first
    rest_budget = budget - len(first)
    if ending_soon:
        rest_budget = min(rest_budget, math.floor(budget * (1 - RESERVE)))
    rest = [bid for bid, since in ranked if key((bid, since))[0] != 0]
    return first + rest[:max(0, rest_budget)]
