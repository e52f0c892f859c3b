"""Property: a reconcile correction only ever moves a room toward what Tencent counted.

Hypothesis draws one room's stream: gifts counted at random moments (some before the start and
after the end, not the battle's), webhooks delivered early and late, lost webhooks, phantoms
(approved, never counted); get_gift_count reads at random moments and just after whole seconds;
an estimate of Tencent's clock off by up to 0.5 s beyond its own bounds; and what the default
settings assume of Tencent broken by up to a second (gifts counted up to a second after their
Time's second, webhooks up to a second later). A gift is never counted before its Time: the
callback that stamps it comes before the send. Every read is judged the way the reconcile pass
judges it (reconcile/judge.py, one read at a time, state carried over), and every correction is
checked against the truth at the moment of the read that confirmed it: same sign as the drift
left to correct, never larger.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.engine.reconcile import judge
from worker.engine.reconcile.band import DEFAULT_BAND, SAFETY, Read

T = 1_700_000_000.0
START, END = T + 10.0, T + 70.0
VALUES = [1, 1, 1, 5, 5, 10, 50, 100, 500, 6600, 33000]


@dataclass
class Gift:
    """One gift: counted at c (Tencent's clock; never, for a phantom), stamped Time `sec`,
    delivered at w on our clock (None: its webhook is lost)."""

    value: int
    c: float
    sec: int
    w: float | None
    counted: bool

    @property
    def battle(self) -> bool:
        """The ingest keeps the gifts whose Time lies in the battle."""
        return START <= self.sec < END


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Gift], float, float, float]:
    """(gifts, offset of Tencent's clock to ours, error of its estimate, the estimate's
    half-width)."""
    lag = draw(st.floats(0.0, SAFETY))  # counted up to this long after its second
    late = draw(st.floats(0.0, SAFETY))  # webhooks this much later than assumed
    off = draw(st.floats(-3.0, 3.0))
    n = draw(st.integers(0, 60))
    gifts = []
    for _ in range(n):
        c = draw(st.floats(START - 4, END + 4))
        sec = math.floor(c - draw(st.floats(0.0, lag)))  # never before its second
        fate = draw(st.sampled_from(["ok"] * 6 + ["lost", "phantom"]))
        delay = draw(st.floats(-0.5, 1.5 + late))
        gifts.append(Gift(draw(st.sampled_from(VALUES)), c, sec,
                          None if fate == "lost" else c + delay - off, fate != "phantom"))
    return gifts, off, draw(st.floats(-0.5, 0.5)), draw(st.floats(0.0, 0.3))


def total(gifts: list[Gift], base: int, at: float) -> int:
    """get_gift_count at Tencent's `at`: the owner's total before, and every gift counted."""
    return base + sum(g.value for g in gifts if g.counted and g.c <= at)


def drift(gifts: list[Gift], at: float) -> int:
    """The truth's drift at Tencent's `at`: the battle's lost webhooks counted, less its
    phantoms that would have been counted by then."""
    return sum(g.value if g.w is None else -g.value for g in gifts
               if g.battle and g.c <= at and (g.w is None or not g.counted))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams(), base=st.integers(0, 20000),
       reads=st.lists(st.tuples(st.floats(START - 3, END + 1), st.booleans(),
                                st.floats(0.005, 0.4)), min_size=1, max_size=24))
def test_a_correction_never_passes_the_truth(stream: tuple[list[Gift], float, float, float],
                                             base: int,
                                             reads: list[tuple[float, bool, float]]) -> None:
    gifts, off, err, width = stream
    # Reads in time order; some just after a whole second of Tencent's clock.
    moments = sorted(math.floor(at) + 0.01 if aligned else at for at, aligned, _ in reads)
    state: dict[str, object] = {"base": None, "last": None, "corrected": 0, "base_at": None,
                                "rebase": None}
    for at, (_, _, took) in zip(moments, reads, strict=False):
        t0 = at - off  # our clock when it left; Tencent answered at `at`
        t1 = t0 + took
        est_lo, est_hi = off + err - width, off + err + width  # the estimate, maybe wrong
        read: Read = {"t0": t0, "t1": t1, "R": total(gifts, base, at),
                      "lo": t0 + est_lo, "hi": t1 + est_hi}
        # Judged once every webhook the band expects is in; the ledger then holds every
        # battle gift delivered by then (and no lost one).
        now = t1 + DEFAULT_BAND.late + 0.31
        ledger: dict[int, int] = {}
        for g in gifts:
            if g.battle and g.w is not None and g.w <= now:
                ledger[g.sec] = ledger.get(g.sec, 0) + g.value
        j = judge.judge_room([read], ledger, state["base"], state["last"],  # type: ignore[arg-type]
                             state["corrected"], now - 0.3, now, (START, END),  # type: ignore[arg-type]
                             rebase=state["rebase"])  # type: ignore[arg-type]
        assert not j.waiting
        if j.base_taken and state["base"] is not None:  # the proposal judged again: its read
            state["base_at"] = state["rebase"].read["t0"] + off  # type: ignore[attr-defined]
        elif j.base_taken:
            state["base_at"] = at
        if j.fix:
            left = drift(gifts, at) - drift(gifts, state["base_at"]) - state["corrected"]  # type: ignore[arg-type,operator]
            assert (j.fix > 0) == (left > 0) and abs(j.fix) <= abs(left), (j.fix, left)
        state.update(base=j.base, last=j.last, rebase=j.rebase,
                     corrected=state["corrected"] + j.fix)  # type: ignore[operator]


def test_a_count_later_than_the_margin_allows_can_make_a_false_correction() -> None:
    """The margin is what keeps it safe: gifts counted 2.5 s after their Time's second (the
    band allows one) read as never counted, twice, and are taken back though nothing drifted."""
    gifts = [Gift(500, START + 20 + 3.5, int(START) + 20, START + 21, True),
             Gift(500, START + 21 + 3.5, int(START) + 21, START + 22, True)]
    state: dict[str, object] = {"base": None, "last": None}
    fixes = 0
    for at in (START + 5.01, START + 23.01, START + 24.01):
        read: Read = {"t0": at, "t1": at + 0.01, "R": total(gifts, 0, at), "lo": at,
                      "hi": at + 0.01}
        now = at + 5
        ledger = {g.sec: g.value for g in gifts if g.w is not None and g.w <= now}
        j = judge.judge_room([read], ledger, state["base"], state["last"], 0,  # type: ignore[arg-type]
                             now - 0.3, now, (START, END))
        state.update(base=j.base, last=j.last)
        fixes += j.fix
    assert fixes == -500 and drift(gifts, START + 30) == 0
