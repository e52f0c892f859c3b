"""What reconcile assumes of Tencent, margins included: the band a read is judged in.

A `Read` is one get_gift_count answer with the moment of Tencent's clock it was answered at
(within [lo, hi]); the `Band` says how far from a gift's `GiftWater.Time` Tencent counts it
and how late its webhook may come, each setting (SCORER_RECONCILE_COUNT_SPREAD, _WEBHOOK_LATE)
widened by a margin, and how far the clock estimate may be off. worker/engine/reconcile/judge.py
has the rule built on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, NotRequired, TypedDict

from worker.engine.settings import Settings
from worker.engine.timers import TIMERS

#: Margins added to the settings' assumptions (ReconcileTimers has the why).
SAFETY = TIMERS.reconcile.safety
CLOCK_MARGIN = TIMERS.reconcile.clock_margin


class Read(TypedDict):
    """One get_gift_count read of a room (its JSON form in the battle's recon hash): taken
    between our wall times t0 and t1, at a moment of Tencent's clock within [lo, hi], total R.
    (A read stored before lo/hi existed is placed by t0/t1 and the default clock spread.)"""

    t0: float
    t1: float
    R: int
    lo: NotRequired[float]
    hi: NotRequired[float]


@dataclass(frozen=True)
class Band:
    """What the judge assumes of Tencent, margins included (see the module docstring)."""

    #: Tencent counts a gift with Time T within [T, T + 1 + spread].
    spread: float
    #: A gift's webhook is ingested at most `late` s after Tencent counted it.
    late: float
    #: A read's moment may lie this much outside the clock estimate's bounds.
    clock: float

    @classmethod
    def from_settings(cls, settings: Any) -> Band:
        """The band of the worker's settings, each assumption widened by its margin."""
        return cls(spread=settings.reconcile_count_spread + SAFETY,
                   late=settings.reconcile_webhook_late + SAFETY, clock=CLOCK_MARGIN)

    @property
    def edge(self) -> float:
        """Reads begin this long after the battle's start (its end: `clock` before)."""
        return self.spread + self.clock



#: The band of the default settings.
DEFAULT_BAND = Band.from_settings(SimpleNamespace(**{
    name: Settings.model_fields[name].default
    for name in ("reconcile_count_spread", "reconcile_webhook_late")}))


def moment(read: Read, band: Band) -> tuple[float, float]:
    """When on Tencent's clock the read may have been answered, margin included."""
    lo = read.get("lo", read["t0"] - TIMERS.clock.default_spread)
    hi = read.get("hi", read["t1"] + TIMERS.clock.default_spread)
    return lo - band.clock, hi + band.clock
