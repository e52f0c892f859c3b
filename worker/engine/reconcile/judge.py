"""The reconcile rule, pure: judge get_gift_count reads against the ledger and decide drift.

No Redis and no clock here: the reconcile pass (worker/engine/reconcile/reconciler.py) reads
the state, passes the time in, and stores what this module returns. The rule (docs/design.md
has the argument):
- An observation is one `get_gift_count` read R of (room, owner) taken between wall times t0
  and t1. A gift's webhook may lead or trail Tencent's counting by up to SKEW seconds, so gifts
  with Time in [t0 - SKEW, t1 + SKEW] may or may not be in R.
- An observation is judged only once every webhook that could matter has been ingested (the
  ingest watermark, worker/engine/ingest/watermark.py, has passed t1 + SKEW: it counts a
  webhook only once it is stored), and only if no ingested gift of that room fell in its
  uncertain window: otherwise it is no evidence and is dropped.
- No read before the battle has surely started by Tencent's clock: gifts to the owner just
  before the start are counted by get_gift_count but are not the battle's, so a baseline read
  before them would take them for lost webhooks.
- So a read is taken only when it can be judged: not while the watermark lags (a backlog),
  not while two reads of the room wait to be judged (the second, the confirming one, is taken
  PAIR_GAP after the first), and not when a gift of the room already lies in the new read's
  uncertain window; a pass comes back the moment such a room can be read. Reads stay bounded
  (two per room per judging cycle) whatever the load.
- Judged, K = R - (ingested value with Time < t0 - SKEW) is the room's total before the
  battle plus every error so far (lost webhooks add, approved-but-never-counted gifts
  subtract). The first K is the baseline; later drift = K - baseline - corrections so far.
- A drift is corrected only when two judged observations in a row agree on it: in-flight
  gifts never become a double count or a dip. The correction is decided in one atomic step:
  added to the room's corrections (so no later read decides it again) and to its pending
  value, which the flush path delivers exactly once like any gift (a negative delta as
  OpType 2 of the totals). Reconcile itself never writes a score.
- A drift confirmed once the battle has surely ended is not decided: no write could land.
- No drift, no write.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypedDict

from worker.engine.timers import TIMERS

#: Webhooks lead or trail Tencent's counting by up to this many seconds (tencent-api.md §4).
SKEW = TIMERS.reconcile.skew
#: Observations kept per room while waiting to be judged.
MAX_OBSERVATIONS = 6
#: In the last `FINAL_WINDOW` seconds plus one interval, reconcile runs every JUDGE_DELAY.
FINAL_WINDOW = TIMERS.reconcile.final_window
JUDGE_DELAY = TIMERS.reconcile.judge_delay
#: No new read while the ingest watermark trails the present by more than READ_LAG; it trails
#: it by TYPICAL_LAG when ingest keeps up; a room's confirming read comes PAIR_GAP after the
#: first. Why each is what it is: worker/engine/timers.py (ReconcileTimers).
READ_LAG = TIMERS.reconcile.read_lag
TYPICAL_LAG = TIMERS.reconcile.typical_lag
PAIR_GAP = TIMERS.reconcile.pair_gap


class Read(TypedDict):
    """One get_gift_count read of a room: taken between wall times t0 and t1, total R (its
    JSON form in the battle's recon hash)."""

    t0: float
    t1: float
    R: int


def room_ledger(secs: Mapping[str, int], room: str) -> dict[int, int]:
    """Second → value ingested for `room`, from the battle's "room|second" sums."""
    ledger: dict[int, int] = {}
    for field_, value in secs.items():
        r, _, sec = field_.rpartition("|")
        if r == room:
            ledger[int(sec)] = ledger.get(int(sec), 0) + int(value)
    return ledger


def ingested(ledger: Mapping[int, int], lo: float, hi: float) -> int:
    """Ingested value with Time in [lo, hi]."""
    return sum(value for sec, value in ledger.items() if lo <= sec <= hi)


def last_second(ledger: Mapping[int, int]) -> int:
    """The latest second in which a gift of the room was ingested (0 if none)."""
    return max([0, *ledger])


def uncertain_window(read: Read) -> tuple[int, int]:
    """The seconds [lo, hi] whose gifts may or may not be counted in `read` (SKEW around it)."""
    return math.floor(read["t0"]) - SKEW, math.ceil(read["t1"]) + SKEW


def evidence(read: Read, ledger: Mapping[int, int]) -> int | None:
    """K of a judgeable read: R less what was ingested before its uncertain window; None when
    an ingested gift lies in that window (no evidence either way)."""
    lo, hi = uncertain_window(read)
    if ingested(ledger, lo, hi):
        return None
    return read["R"] - ingested(ledger, 0, lo - 1)


def judgeable(read: Read, mark: float) -> bool:
    """True once the ingest watermark `mark` has passed the read's end + SKEW."""
    return mark > read["t1"] + SKEW


def watermark_lag(mark: float, now: float) -> float:
    """How far the watermark trails the present (at least 0.3 s: a tick)."""
    #: A waiting read is judged once the watermark passes t1 + SKEW + 1; it trails the
    #: present by a few ticks, or by the whole backlog (then passes back off with it).
    return max(0.3, now - mark)


def judgeable_at(t1: float, now: float, lag: float) -> float:
    """When a read that ended at `t1` should be judgeable; past that, back off with the
    watermark's `lag` (a backlog), so waiting passes do not poll."""
    expected = t1 + SKEW + TYPICAL_LAG
    return expected if expected > now else now + min(max(0.5, lag), READ_LAG)


def _sooner(a: float | None, b: float | None) -> float | None:
    """The earlier of two wanted times (None: not wanted)."""
    if a is None:
        return b
    return a if b is None else min(a, b)


@dataclass
class RoomJudgement:
    """What judging a room's reads decided, for the pass to store."""

    #: Reads not judgeable yet, kept for a later pass.
    waiting: list[Read] = field(default_factory=list)
    #: The room's baseline K (None until a read is judged).
    base: int | None = None
    #: The drift of the last judged read, waiting for a second to agree (None: consumed).
    last: int | None = None
    #: Drift confirmed by two agreeing reads: to decide (add to corrections and pending).
    fix: int = 0
    #: The baseline was taken in this pass (store `base`).
    base_taken: bool = False
    #: A read was judged against the baseline (store `last`).
    judged: bool = False
    #: When a sooner pass pays off (None: the schedule will do).
    sooner: float | None = None


def judge_room(reads: list[Read], ledger: Mapping[int, int], base: int | None,
               last: int | None, corrected: int, mark: float, now: float) -> RoomJudgement:
    """Judge a room's stored `reads` in order, given its `ledger`, its baseline `base`, the
    unconfirmed drift `last`, the corrections decided so far, the watermark `mark` and the
    time `now`."""
    out = RoomJudgement(base=base, last=last)
    lag = watermark_lag(mark, now)
    for read in reads:
        if not judgeable(read, mark):
            out.waiting.append(read)
            out.sooner = _sooner(out.sooner, judgeable_at(read["t1"], now, lag))
            continue
        k = evidence(read, ledger)
        if k is None:
            continue  # a gift in the uncertain window: no evidence either way
        if out.base is None:
            out.base, out.base_taken = k, True
            continue
        drift = k - out.base - corrected - out.fix
        if drift and out.last is not None and out.last == drift:
            out.fix += drift
            out.last = None
        else:
            out.last = drift
            if drift:  # an unconfirmed drift wants its second read soon
                out.sooner = _sooner(out.sooner, now + 1.0)
        out.judged = True
    return out


def decide(fixes: Mapping[str, int], ended: bool) -> tuple[dict[str, int], dict[str, int]]:
    """(decided, too late): the rooms' confirmed non-zero drift is decided, unless the battle
    has surely `ended` (a read of the last seconds is judged ~2.6 s later): no write can land
    any more, so it is only reported."""
    fixes = {r: d for r, d in fixes.items() if d}
    return ({}, fixes) if fixes and ended else (fixes, {})


def reads_blocked(mark: float, now: float) -> bool:
    """No read while the watermark lags by more than READ_LAG: it could not be judged."""
    return now - mark > READ_LAG


def read_wanted(last_gift: int, waiting: list[Read], now: float) -> tuple[bool, float | None]:
    """Whether a fresh read of a room could be judged now (see the module docstring), given
    the last second it received a gift in and its reads waiting; if not, when a pass pays off
    (None: the schedule)."""
    if last_gift >= math.floor(now) - SKEW:
        if last_gift < math.floor(now) - 1:  # its burst is over: read when it can be judged
            return False, last_gift + SKEW + 1.05
        # (a room in a steady stream of gifts waits for the schedule: no polling)
        return False, None
    if not waiting:
        return True, None
    if len(waiting) == 1 and now - waiting[0]["t1"] >= PAIR_GAP:
        return True, None  # the confirming read of the pair
    if len(waiting) == 1:
        return False, waiting[0]["t1"] + PAIR_GAP
    return False, None


def add_read(reads: list[Read], read: Read, lag: float) -> tuple[list[Read], float]:
    """Store a fresh read: the room's reads (the newest MAX_OBSERVATIONS) and when a pass pays
    off (the read judgeable, or the confirming read due PAIR_GAP after a first)."""
    reads = [*reads, read]
    t1 = read["t1"]
    sooner = judgeable_at(t1, t1, lag)
    if len(reads) == 1:
        sooner = min(sooner, t1 + PAIR_GAP)
    return reads[-MAX_OBSERVATIONS:], sooner


def next_due_at(now: float, end: float, interval: float) -> float | None:
    """When a battle ending at `end` is reconciled next (None once it has ended): every
    `interval`, every JUDGE_DELAY at most in its last interval + FINAL_WINDOW."""
    if now >= end:
        return None
    if end - now <= interval + FINAL_WINDOW:
        return now + min(interval, JUDGE_DELAY)
    return now + interval


def reschedule(due: float | None, sooner: float | None, all_waiting: bool,
               now: float) -> float | None:
    """The next pass: the scheduled `due`, or `sooner` when a pass then pays off (exactly then
    if every room waits on a read: a pass before it would find nothing), never within 0.5 s."""
    if due is not None and sooner is not None:
        due = max(now + 0.5, sooner if all_waiting else min(due, sooner))
    return due
