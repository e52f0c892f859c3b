"""The reconcile rule, pure: judge get_gift_count reads against the ledger by Tencent's second.

No Redis and no clock here: the reconcile pass (worker/engine/reconcile/reconciler.py) reads
the state, passes the time in, and stores what this module returns. The rule (docs/design.md,
"Reconcile", has the argument):
- A read is one `get_gift_count` answer R of (room, owner), taken at a moment τ of Tencent's
  clock known within [lo, hi] (our wall times around the call plus the estimated offset's
  bounds, widened by `Band.clock`).
- Tencent counts a gift with `GiftWater.Time` T in [T, T + 1 + spread]: never before its
  second (the gift callback comes before the send), at most `Band.spread` after it. So the
  ledger's gifts (per room and second) fall in three parts at τ: surely counted
  (T + 1 + spread <= lo), surely not (T > hi), and the ambiguous rest, of total A. Any gift,
  however busy the room, only widens the judgement by its value: no read waits for a quiet
  room. The margins fall where they protect: a late count can only hide a phantom, so the
  lag widens the upper bound of K and not its lower one.
- K = R - (surely counted) lies in [R - sure - A, R - sure]: the room's total before the
  battle plus the drift so far (lost webhooks add, approved-but-never-counted gifts
  subtract). The first judged K is the baseline [Blo, Bhi] (it absorbs any drift before it);
  later, drift - corrections lies in [Klo - Bhi - C, Khi - Blo - C].
- A narrower K that lies inside the baseline replaces it (`rebases`) while the room has no
  correction and no drift waiting: the drift it absorbs since the baseline lies within the
  baseline's width, and an exact read could never have proved it against the old baseline
  (that needs K outside it). A baseline taken among busy seconds is then narrowed by quieter
  reads, and a small drift after it becomes provable. The read proposes it (`Rebase`), and a
  later pass judges the same read again once the watermark has moved on by `rebase_settle`:
  only if the ledger around it gave the same K (no webhook straggled in since) does it become
  the baseline. A read judged before a straggling webhook was ingested reads high, and as a
  baseline would make every correct read after it prove a drift that is not there.
- A read's sure drift is the end of that interval nearest zero when zero is outside it, else 0.
  A correction needs two judged reads proving drift of the same sign, with no read proving
  the other sign in between (a read proving nothing, its interval holding zero, leaves the
  first standing: in a busy room most do); it is the smaller of the two. The interval of the
  later read holds the truth, so the correction never passes it: it only moves the room
  toward what Tencent counted.
- A read is judged only once every webhook of a gift counted by its moment is in: the ingest
  watermark (worker/engine/ingest/watermark.py) has passed its end + `Band.late`.
- Reads only from spread + clock after the battle's start (the owner's gifts just before it
  are not the battle's, and must be counted before the baseline) until `clock` before its
  end (gifts just after it are not the battle's either, and must not be counted yet).
- The band (worker/engine/reconcile/band.py) is what the settings assume of Tencent plus a
  margin (SAFETY, CLOCK_MARGIN): an assumption broken by up to the margin delays healing,
  never makes a correction that is not drift (tests/unit/reconcile/test_judge_property.py).
- When to read, and when the next pass comes: worker/engine/reconcile/cadence.py.
- The correction is decided in one atomic step: added to the room's corrections (so no later
  read decides it again) and to its pending value, which the flush path delivers exactly once
  like any gift. Reconcile itself never writes a score. A drift confirmed once the battle has
  surely ended is not decided: no write could land.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from worker.engine.reconcile.band import DEFAULT_BAND, Band, Read, moment
from worker.engine.reconcile.cadence import PAIR_GAP, judgeable_at, sooner, watermark_lag
from worker.engine.timers import TIMERS

#: A proposed narrower baseline is judged again once the watermark has moved this much further.
REBASE_SETTLE = TIMERS.reconcile.rebase_settle


def room_ledger(secs: Mapping[str, int], room: str) -> dict[int, int]:
    """Second → value ingested for `room`, from the battle's "room|second" sums."""
    ledger: dict[int, int] = {}
    for field_, value in secs.items():
        r, _, sec = field_.rpartition("|")
        if r == room:
            ledger[int(sec)] = ledger.get(int(sec), 0) + int(value)
    return ledger


def split(read: Read, ledger: Mapping[int, int], band: Band) -> tuple[int, int]:
    """(surely counted, ambiguous): the ledger's value Tencent had surely counted at the read,
    and the value it may or may not have counted."""
    lo, hi = moment(read, band)
    sure = ambiguous = 0
    for sec, value in ledger.items():
        if sec + 1 + band.spread <= lo:
            sure += value
        elif sec <= hi:
            ambiguous += value
    return sure, ambiguous


def evidence(read: Read, ledger: Mapping[int, int], band: Band) -> tuple[int, int]:
    """[Klo, Khi]: the room's total before the battle plus its drift so far, per this read."""
    sure, ambiguous = split(read, ledger, band)
    return read["R"] - sure - ambiguous, read["R"] - sure


def sure_drift(k: tuple[int, int], base: tuple[int, int], corrected: int) -> int:
    """The drift this read proves beyond the corrections: the end of its interval nearest
    zero, or 0 when zero is inside it."""
    lo, hi = k[0] - base[1] - corrected, k[1] - base[0] - corrected
    return lo if lo > 0 else hi if hi < 0 else 0


def _width(k: tuple[int, int]) -> int:
    return k[1] - k[0]


def rebases(k: tuple[int, int], base: tuple[int, int]) -> bool:
    """True when the read's [Klo, Khi] is a narrower baseline than `base` and lies inside it
    (module docstring)."""
    return base[0] <= k[0] and k[1] <= base[1] and _width(k) < _width(base)


@dataclass(frozen=True)
class Rebase:
    """A narrower baseline one read proposed: the read, the K it gave, and the watermark it
    was judged at. It becomes the baseline when the read, judged again once the watermark has
    moved on by REBASE_SETTLE, gives the same K."""

    read: Read
    k: tuple[int, int]
    mark: float

    def dumps(self) -> str:
        """The stored form (`proposal:<room>`; `Rebase.loads` reads it)."""
        return json.dumps({"read": self.read, "k": list(self.k), "mark": self.mark})

    @classmethod
    def loads(cls, raw: str | None) -> Rebase | None:
        """A stored proposal (None: none, or one stored in an older form)."""
        try:
            d = json.loads(raw or "")
            return cls(d["read"], (int(d["k"][0]), int(d["k"][1])), float(d["mark"]))
        except (ValueError, TypeError, KeyError, IndexError):
            return None


def inside(read: Read, start: float, end: float, band: Band) -> bool:
    """True when the read's moment lies inside the battle, `band.edge` after its start (module
    docstring)."""
    lo, hi = moment(read, band)
    return lo - band.spread >= start and hi < end


def judgeable(read: Read, mark: float, band: Band = DEFAULT_BAND) -> bool:
    """True once the ingest watermark `mark` has passed the read's end + the webhooks' delay."""
    return mark > read["t1"] + band.late


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


@dataclass
class RoomJudgement:
    """What judging a room's reads decided, for the pass to store."""

    #: Reads not judgeable yet, kept for a later pass.
    waiting: list[Read] = field(default_factory=list)
    #: The room's baseline [Blo, Bhi] (None until a read is judged).
    base: tuple[int, int] | None = None
    #: The sure drift last proved, waiting for a second read to agree (None: none).
    last: int | None = None
    #: Drift confirmed by two agreeing reads: to decide (add to corrections and pending).
    fix: int = 0
    #: A narrower baseline proposed by one read, waiting to be judged again (store it as
    #: `proposal:<room>`; None: none).
    rebase: Rebase | None = None
    #: The baseline was taken (or narrowed) in this pass (store `base`).
    base_taken: bool = False
    #: Reads judged against the baseline (store `last`).
    judged: int = 0
    #: Judged reads that proved a drift (sure drift non-zero).
    drifted: int = 0
    #: Reads dropped: taken too near the battle's start or end to be evidence.
    dropped: int = 0
    #: Whether the last read judged (baseline or not) had gifts it may or may not have
    #: counted: a drift may hide behind them, so the room is worth reading often (None: no
    #: read judged).
    ambiguous: bool | None = None
    #: When a sooner pass pays off (None: the schedule will do).
    sooner: float | None = None


def judge_room(reads: list[Read], ledger: Mapping[int, int], base: tuple[int, int] | None,
               last: int | None, corrected: int, mark: float, now: float,
               window: tuple[float, float], band: Band = DEFAULT_BAND,
               rebase: Rebase | None = None) -> RoomJudgement:
    """Judge a room's stored `reads` in order, given its `ledger`, its baseline `base`, the
    unconfirmed sure drift `last`, the corrections decided so far, the watermark `mark`, the
    time `now`, the battle's (start, end) `window` on Tencent's clock and the narrower
    baseline one read proposed (`rebase`)."""
    out = RoomJudgement(base=base, last=last, rebase=rebase)
    lag = watermark_lag(mark, now)
    if rebase is not None:
        _settle(out, ledger, corrected, mark, now, band)
    for read in reads:
        if not judgeable(read, mark, band):
            out.waiting.append(read)
            out.sooner = sooner(out.sooner, judgeable_at(read["t1"], now, lag, band))
            continue
        if not inside(read, *window, band):
            out.dropped += 1
            continue
        k = evidence(read, ledger, band)
        out.ambiguous = k[0] != k[1]
        if out.base is None:
            out.base, out.base_taken = k, True
            continue
        if (rebases(k, out.base) and out.last is None and not corrected + out.fix
                and (out.rebase is None or _width(k) < _width(out.rebase.k))):
            out.rebase = Rebase(read, k, mark)  # judged again once the watermark moves on
            out.sooner = sooner(out.sooner, now + REBASE_SETTLE)
            continue
        if out.rebase is not None and not (k[0] <= out.rebase.k[0] and out.rebase.k[1] <= k[1]):
            out.rebase = None  # a read that contradicts it (or a drift) drops the proposal
        d = sure_drift(k, out.base, corrected + out.fix)
        out.judged += 1
        out.drifted += d != 0
        if not d:
            continue  # proves nothing either way (a busy second may hide a drift): keep `last`
        if out.last and _sign(out.last) == _sign(d):
            fix = _sign(d) * min(abs(d), abs(out.last))
            out.fix += fix
            d -= fix  # what this read proves beyond it waits for a read to agree
        out.last = d or None
        if d:  # an unconfirmed drift wants its second read soon
            out.sooner = sooner(out.sooner, now + PAIR_GAP)
    return out


def _settle(out: RoomJudgement, ledger: Mapping[int, int], corrected: int, mark: float,
            now: float, band: Band) -> None:
    """Judge the proposed baseline's read again, once the watermark has moved on by
    REBASE_SETTLE: the same K makes it the baseline; a K the later ledger changed (a webhook
    straggled in) is proposed afresh, if it still narrows the baseline."""
    prop = out.rebase
    assert prop is not None and out.base is not None
    if out.last is not None or corrected:
        out.rebase = None  # a drift or a correction came first: the baseline stays
        return
    if mark < prop.mark + REBASE_SETTLE:
        out.sooner = sooner(out.sooner, now + prop.mark + REBASE_SETTLE - mark)
        return
    k = evidence(prop.read, ledger, band)
    if k == prop.k:
        out.base, out.base_taken, out.rebase = k, True, None
    elif rebases(k, out.base):
        out.rebase = Rebase(prop.read, k, mark)
        out.sooner = sooner(out.sooner, now + REBASE_SETTLE)
    else:
        out.rebase = None


def decide(fixes: Mapping[str, int], ended: bool) -> tuple[dict[str, int], dict[str, int]]:
    """(decided, too late): the rooms' confirmed non-zero drift is decided, unless the battle
    has surely `ended` (a read of the last seconds is judged ~3 s later): no write can land
    any more, so it is only reported."""
    fixes = {r: d for r, d in fixes.items() if d}
    return ({}, fixes) if fixes and ended else (fixes, {})


def parse_base(raw: str | None) -> tuple[int, int] | None:
    """A stored baseline: "lo,hi" (or one number, as stored before baselines were intervals)."""
    if raw is None or raw == "":
        return None
    lo, _, hi = raw.partition(",")
    return int(lo), int(hi or lo)


def format_base(base: tuple[int, int]) -> str:
    """The stored form of a baseline (parse_base reads it)."""
    return f"{base[0]},{base[1]}"


def parse_last(raw: str | None, corrected: int) -> int | None:
    """A stored unconfirmed drift ("drift@corrections"), if still current: one stored before
    the room's corrections last changed (a pass that crashed after deciding, before storing)
    is stale, and so is one in the older form without "@"."""
    drift, at, when = (raw or "").partition("@")
    return int(drift) if at and drift and int(when) == corrected else None


def format_last(drift: int | None, corrected: int) -> str:
    """The stored form of an unconfirmed drift, with the corrections it is net of."""
    return "" if drift is None else f"{drift}@{corrected}"


