"""When reconcile reads a room and when its next pass comes: the reads' cadence, pure.

Reads are taken only when they can be judged and pay (worker/engine/reconcile/judge.py judges
them): not while the ingest watermark lags (but a room's baseline read), not when their judging
would come too near the battle's end to correct anything; a busy room (gifts around its last
read may hide a drift) a pair per judging cycle, a room whose drift waits for a read to agree
one a second, a quiet one once a reconcile interval. Reads stay bounded (two per room waiting,
six for a room hunting a drift) whatever the load.
"""

from __future__ import annotations

from worker.engine.reconcile.band import DEFAULT_BAND, Band, Read
from worker.engine.timers import TIMERS

#: Observations kept per room while waiting to be judged.
MAX_OBSERVATIONS = 6
#: In the last `FINAL_WINDOW` seconds plus one interval, reconcile runs every JUDGE_DELAY.
FINAL_WINDOW = TIMERS.reconcile.final_window
JUDGE_DELAY = TIMERS.reconcile.judge_delay
#: No new read while the ingest watermark trails the present by more than READ_LAG; it trails
#: it by TYPICAL_LAG when ingest keeps up; a room's confirming read comes PAIR_GAP after the
#: first; no read judged later than LAST_READ_LEAD before the end. Why each is what it is:
#: worker/engine/timers.py (ReconcileTimers).
READ_LAG = TIMERS.reconcile.read_lag
TYPICAL_LAG = TIMERS.reconcile.typical_lag
PAIR_GAP = TIMERS.reconcile.pair_gap
LAST_READ_LEAD = TIMERS.reconcile.last_read_lead


def watermark_lag(mark: float, now: float) -> float:
    """How far the watermark trails the present (at least 0.3 s: a tick)."""
    #: A waiting read is judged once the watermark passes t1 + late; it trails the present
    #: by a few ticks, or by the whole backlog (then passes back off with it).
    return max(0.3, now - mark)


def judgeable_at(t1: float, now: float, lag: float, band: Band = DEFAULT_BAND) -> float:
    """When a read that ended at `t1` should be judgeable; past that, back off with the
    watermark's `lag` (a backlog), so waiting passes do not poll."""
    expected = t1 + band.late + TYPICAL_LAG
    return expected if expected > now else now + min(max(0.5, lag), READ_LAG)


def sooner(a: float | None, b: float | None) -> float | None:
    """The earlier of two wanted times (None: not wanted)."""
    if a is None:
        return b
    return a if b is None else min(a, b)


def reads_over(end: float, latest: float, band: Band = DEFAULT_BAND) -> bool:
    """True once a read taken now (Tencent's clock at the `latest`) would be judged too near
    the battle's `end` for its correction to be flushed (or after it)."""
    return latest + band.late + TYPICAL_LAG + LAST_READ_LEAD >= end


def reads_blocked(mark: float, now: float) -> bool:
    """No read while the watermark lags by more than READ_LAG: it could not be judged."""
    return now - mark > READ_LAG


#: How often a room's reads pay (`read_wanted`): a quiet room's once a reconcile interval, a
#: busy one's (gifts around its last read may hide a drift, or no baseline yet) a pair per
#: judging cycle, a drift's that waits for a read to agree (HUNTING) every PAIR_GAP.
QUIET, BUSY, HUNTING = 0, 1, 2
#: Reads a room may have waiting to be judged, by how often its reads pay.
WAITING_AT_MOST = {QUIET: 1, BUSY: 2, HUNTING: MAX_OBSERVATIONS}


def read_wanted(waiting: list[Read], now: float, need: int, read_at: float | None,
                interval: float) -> tuple[bool, float | None]:
    """Whether to read a room now, given its reads waiting to be judged, how often its reads
    pay (`need`: QUIET, BUSY or HUNTING) and when it was last read; if not, when a pass pays
    off (None: the schedule). Reads of a busy or hunting room come PAIR_GAP apart; a quiet
    room's read is judged before the next (one that proves a drift makes it hunt): a drift
    waiting for agreement is where reads pay most, since in a busy room each read proves what
    the gifts around it do not hide, and the more reads, the less that is."""
    if len(waiting) >= WAITING_AT_MOST[need]:
        return False, None
    if waiting:
        t1 = waiting[-1]["t1"]
        return (True, None) if now - t1 >= PAIR_GAP else (False, t1 + PAIR_GAP)
    if need != QUIET or read_at is None or now - read_at >= interval:
        return True, None
    return False, read_at + interval


def add_read(reads: list[Read], read: Read, lag: float, need: int,
             band: Band = DEFAULT_BAND) -> tuple[list[Read], float]:
    """Store a fresh read: the room's reads (the newest MAX_OBSERVATIONS) and when a pass pays
    off (the read judgeable, or the room's next read due PAIR_GAP on, when its `need` wants
    one before the judging)."""
    reads = [*reads, read]
    t1 = read["t1"]
    sooner = judgeable_at(t1, t1, lag, band)
    if len(reads) < WAITING_AT_MOST[need]:
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
