"""Near a battle's end: how long a call under its lock waits, and when no call can land."""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.engine.runtime import Runtime

if TYPE_CHECKING:  # battles imports the end game, which imports this module
    from worker.engine.battles.records import Battle

#: A battle is known to have ended (no call can land) this long after its end by the earliest
#: Tencent's clock may read (worker/engine/tencent/clock.py).
END_MARGIN = 0.05
#: Near its end (within NEAR_END s, by the latest Tencent's clock may read) a call under a
#: battle's lock (a flush, a settling or audit OpType 2, a read-back) waits NEAR_END_READ s for its
#: answer, not the client's 5 s: Tencent may hold a request past the end, where it is
#: refused when it lands, and meanwhile the lock kept the battle's last flush out (a
#: reconcile overwrite that waited 5 s cost a battle its last 77 coins in bench.chaos).
NEAR_END = 8.0
NEAR_END_READ = 1.5
#: A battle whose ambiguous write may still land gets one last absolute write (OpType 2 of
#: the ledger) this long before its end by the latest Tencent's clock (keys.FINAL_DUE): a
#: request Tencent held past its client's timeout landed in a battle's last second, after
#: its last flush, 17 coins over (bench.chaos).
FINAL_LEAD = 0.35


def near_end(rt: Runtime, battle: Battle | None) -> bool:
    """True when `battle` (None: not registered) may end within NEAR_END s."""
    return bool(battle and battle.end and battle.end - rt.tclock.latest() <= NEAR_END)


def read_timeout(rt: Runtime, battle: Battle | None) -> float | None:
    """How long a write under the battle's lock waits for its answer (None: the default)."""
    return NEAR_END_READ if near_end(rt, battle) else None
