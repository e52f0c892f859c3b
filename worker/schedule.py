"""Which due battles a tick dispatches when the API budget cannot serve them all.

Policy: a tick may dispatch at most what the shared rate limit can carry until the next tick
(what the limiter admits per second, `ratelimit.admitted_per_second`, x tick seconds). Battles whose end is near come first,
soonest end first; then the rest by how long they have been due, longest first. A battle left
out keeps its old due time, so it is older than any newcomer at the next tick: nobody starves.
Worst case: with N due battles and budget B per tick, a battle waits ceil(N / B) ticks, except
near its end, where it jumps the queue (and only the battles also near their end compete).
"""

from __future__ import annotations

import math

from worker.ratelimit import WINDOW_MS, admitted_per_second


def tick_seconds(flush_interval: float) -> float:
    """How often beat ticks: four times per flush interval, at most every 0.25 s (a gift waits
    for its battle's flush interval plus up to one tick: 0.5 s ticks put p99 past 2.5 s)."""
    return min(0.25, flush_interval / 4)


def urgent_window(flush_interval: float) -> float:
    """Seconds before its end in which a battle's flush jumps the queue."""
    return 3 * flush_interval + 2.0


def per_tick_budget(api_rate: int, flush_interval: float, share: float = 1.0,
                    reserved: int = 0) -> int:
    """Calls of one API a tick may dispatch: what the limiter admits until the next tick, less
    the `reserved` calls per limiter window kept for the end game, so dispatched tasks do not
    wait for it (holding control threads)."""
    per_second = max(0.0, admitted_per_second(api_rate) - reserved / (WINDOW_MS / 1000))
    return max(1, math.floor(per_second * tick_seconds(flush_interval) * share))


def choose(due: list[tuple[str, float]], ends: dict[str, float | None], now: float,
           budget: int, urgent: float) -> list[str]:
    """Pick at most `budget` battle ids from `due` [(id, due since)], urgent ones first."""
    def key(item: tuple[str, float]) -> tuple[int, float]:
        bid, since = item
        end = ends.get(bid)
        if end is not None and end - now <= urgent:
            return (0, end)
        return (1, since)

    return [bid for bid, _ in sorted(due, key=key)[:budget]]
