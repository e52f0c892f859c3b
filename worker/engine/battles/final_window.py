"""A battle's final seconds: whether it is in them, and the set of battles due an end-game flush.

Ingest (routing a gift) and reconcile (a correction) mark a battle that got value in its final
window; the end game (worker/engine/flush/endgame.py) flushes the marked ones at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.engine.state import keys
from worker.engine.timers import TIMERS

if TYPE_CHECKING:
    from redis.client import Pipeline

    from worker.engine.state.pipeline import SerialBatch

#: Seconds before its end (Tencent's clock) from which a battle's value is flushed at once.
FINAL_WINDOW = TIMERS.endgame.final_window


def in_window(end: float, latest: float) -> bool:
    """True when a battle ending at `end` is in its final window, `latest` being the latest
    Tencent's clock may read now (`rt.tclock.latest()`, read once per batch of gifts)."""
    return end > 0 and end - latest <= FINAL_WINDOW


def starts_at(end: float, latest: float, now: float) -> float:
    """When, by our clock (`now`), the final window of a battle ending at `end` starts at the
    soonest (`latest`: the latest Tencent's clock may read now)."""
    return end - FINAL_WINDOW - (latest - now)


def mark(pipe: Pipeline | SerialBatch, battle_ids: list[str], now: float) -> None:
    """Queue (in `pipe`) end-game flushes of battles that just got value."""
    if battle_ids:
        pipe.zadd(keys.ENDGAME_DUE, {b: now for b in battle_ids}, nx=True)
