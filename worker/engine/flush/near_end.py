"""Near a battle's end: how long a call under its lock waits, and when no call can land."""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.engine.runtime import Runtime
from worker.engine.timers import TIMERS

if TYPE_CHECKING:  # battles imports the end game, which imports this module
    from worker.engine.battles.records import Battle

#: A battle is known to have ended (no call can land) END_MARGIN after its end by the earliest
#: Tencent's clock may read (worker/engine/tencent/clock.py).
END_MARGIN = TIMERS.endgame.end_margin
#: Near its end (within NEAR_END s, by the latest Tencent's clock may read) a call under a
#: battle's lock (a flush, a settling or audit OpType 2, a read-back) waits NEAR_END_READ s for
#: its answer, not the client's 5 s.
NEAR_END = TIMERS.endgame.near_end
NEAR_END_READ = TIMERS.endgame.near_end_read
#: In its last seconds the wait ends SETTLE_LEAD before the end, yet lasts NEAR_END_READ_MIN.
SETTLE_LEAD = TIMERS.endgame.settle_lead
NEAR_END_READ_MIN = TIMERS.endgame.near_end_read_min
#: A battle whose ambiguous write may still land gets one last absolute write (OpType 2 of
#: the ledger) FINAL_LEAD before its end by the latest Tencent's clock (keys.FINAL_DUE).
#: Why each is what it is (bench.chaos): worker/engine/timers.py (EndGameTimers).
FINAL_LEAD = TIMERS.endgame.final_lead


def near_end(rt: Runtime, battle: Battle | None) -> bool:
    """True when `battle` (None: not registered) may end within NEAR_END s."""
    return bool(battle and battle.end and battle.end - rt.tclock.latest() <= NEAR_END)


def read_timeout(rt: Runtime, battle: Battle | None) -> float | None:
    """How long a call under the battle's lock waits for its answer (None: the default): near
    its end NEAR_END_READ, cut so that the wait ends SETTLE_LEAD before the end, where a write
    left without an answer can still be read back and overwritten; at least NEAR_END_READ_MIN."""
    if battle is None or not near_end(rt, battle):
        return None
    left = battle.end - rt.tclock.latest() - SETTLE_LEAD
    return min(NEAR_END_READ, max(NEAR_END_READ_MIN, left))
