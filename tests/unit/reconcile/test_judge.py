"""The reconcile rule (reconcile/judge.py) as tables of cases: no Redis, no process, no clock.

Times are seconds from T, a whole second of Tencent's clock, and the clock estimate is exact:
a read taken at T + at (for 0.2 s) was answered at a moment of Tencent's clock in
[at - 0.5, at + 0.7] (CLOCK_MARGIN). With the default band (a gift counted within a second
after its Time's second, never before it), a read at 10 has surely counted the gifts of
seconds up to 7, may or may not have counted those of 8 to 10, and has surely not counted
later ones.
"""

from __future__ import annotations

from typing import Any

import pytest

from worker.engine.reconcile import cadence, judge
from worker.engine.reconcile.band import DEFAULT_BAND, Band, Read
from worker.engine.reconcile.cadence import (
    BUSY,
    FINAL_WINDOW,
    HUNTING,
    JUDGE_DELAY,
    MAX_OBSERVATIONS,
    PAIR_GAP,
    QUIET,
    READ_LAG,
    TYPICAL_LAG,
)
from worker.engine.reconcile.judge import REBASE_SETTLE

T = 1_700_000_000
#: The watermark far past every read: all of them judgeable.
PAST = T + 100.0
NOW = T + 100.0
#: The battle: far around every read.
WINDOW = (T - 100.0, T + 300.0)
LATE = DEFAULT_BAND.late


def read(at: float, total: int, took: float = 0.2) -> Read:
    """A get_gift_count read taken at T + `at` (for `took` s) that answered `total`."""
    return {"t0": T + at, "t1": T + at + took, "R": total, "lo": T + at, "hi": T + at + took}


def ledger(**by_second: int) -> dict[int, int]:
    """Ingested value per second: ledger(s10=5) is 5 coins at T + 10."""
    return {T + int(k[1:]): v for k, v in by_second.items()}


# (id, reads, ledger, base, last, corrected, mark, expected fields of the RoomJudgement)
JUDGE_CASES: list[tuple[str, list[Read], dict[int, int], tuple[int, int] | None, int | None, int,
                        float, dict[str, Any]]] = [
    ("a first read is the baseline only",
     [read(10, 100)], {}, None, None, 0, PAST,
     dict(base=(100, 100), base_taken=True, judged=0, last=None, fix=0, sooner=None)),
    ("the baseline is net of the gifts surely counted",
     [read(10, 130)], ledger(s7=30), None, None, 0, PAST,
     dict(base=(100, 100), base_taken=True, fix=0)),
    ("a gift that may or may not be counted widens the baseline by its value",
     [read(10, 105)], ledger(s8=5), None, None, 0, PAST,
     dict(base=(100, 105), base_taken=True)),
    ("... on the window's last second too; a later gift is surely not counted",
     [read(10, 105)], ledger(s10=5, s11=7), None, None, 0, PAST,
     dict(base=(100, 105), base_taken=True)),
    ("a read the watermark has not passed by the webhooks' delay waits, and says when",
     [read(98, 100)], {}, (100, 100), None, 0, read(98, 100)["t1"] + LATE,
     dict(waiting=[read(98, 100)], judged=0, base_taken=False,
          sooner=read(98, 100)["t1"] + LATE + TYPICAL_LAG)),
    ("a waiting read overdue (a backlog) backs off with the watermark's lag",
     [read(90, 100)], {}, (100, 100), None, 0, T + 91.0,
     dict(waiting=[read(90, 100)], sooner=NOW + min(NOW - (T + 91.0), READ_LAG))),
    ("no drift: nothing to decide, nothing wanted sooner",
     [read(10, 100)], {}, (100, 100), None, 0, PAST,
     dict(last=None, judged=1, drifted=0, fix=0, sooner=None)),
    ("a first read of a drift is not decided: it wants its confirming read",
     [read(10, 150)], {}, (100, 100), None, 0, PAST,
     dict(last=50, judged=1, drifted=1, fix=0, sooner=NOW + PAIR_GAP)),
    ("a busy room: gifts in the read's window only narrow what it proves",
     [read(10, 162)], ledger(s9=5, s10=7), (100, 100), None, 0, PAST,
     dict(last=50, fix=0)),
    ("... and a drift smaller than them is not proved (no drift, as far as it knows)",
     [read(10, 150)], ledger(s10=60), (100, 100), None, 0, PAST,
     dict(last=None, drifted=0, fix=0)),
    ("the baseline's width counts the same way",
     [read(10, 150)], {}, (100, 120), None, 0, PAST,
     dict(last=30)),
    ("two agreeing reads (one stored, one now) correct the drift",
     [read(10, 150)], {}, (100, 100), 50, 0, PAST,
     dict(last=None, judged=1, fix=50, sooner=None)),
    ("two reads proving different drifts of one sign correct the smaller; the rest waits",
     [read(10, 150)], {}, (100, 100), 30, 0, PAST,
     dict(last=20, fix=30, sooner=NOW + PAIR_GAP)),
    ("two agreeing reads in one pass correct the drift once",
     [read(10, 150), read(11, 150)], {}, (100, 100), None, 0, PAST,
     dict(last=None, fix=50)),
    ("a third read after a correction starts anew (no drift left)",
     [read(10, 150), read(11, 150), read(12, 150)], {}, (100, 100), None, 0, PAST,
     dict(last=None, judged=3, fix=50)),
    ("reads of opposite signs decide nothing (gifts in flight)",
     [read(10, 150)], ledger(s5=80), (100, 100), 50, 0, PAST,
     dict(last=-30, fix=0, sooner=NOW + PAIR_GAP)),
    ("a read that shows less than the ledger (a gift never counted) is a negative drift",
     [read(10, 100)], ledger(s5=30), (100, 100), None, 0, PAST,
     dict(last=-30, fix=0, sooner=NOW + PAIR_GAP)),
    ("... and two agreeing on it take the gift back",
     [read(10, 100), read(11, 100)], ledger(s5=30), (100, 100), None, 0, PAST,
     dict(last=None, fix=-30)),
    ("corrections already decided count: the same reads decide nothing twice",
     [read(10, 150), read(11, 150)], {}, (100, 100), None, 50, PAST,
     dict(last=None, fix=0, sooner=None)),
    ("a read proving nothing leaves the drift proved before standing",
     [read(10, 150)], ledger(s10=60), (100, 100), 50, 0, PAST,
     dict(last=50, drifted=0, fix=0)),
    ("the baseline and a first drift in one pass",
     [read(10, 100), read(11, 120)], {}, None, None, 0, PAST,
     dict(base=(100, 100), base_taken=True, last=20, judged=1, fix=0)),
    ("a narrower read inside the baseline proposes it as the baseline, judged again later",
     [read(10, 103)], {}, (100, 105), None, 0, PAST,
     dict(base=(100, 105), base_taken=False, rebase=judge.Rebase(read(10, 103), (103, 103), PAST),
          judged=0, sooner=NOW + REBASE_SETTLE)),
    ("... a later read no narrower leaves the proposal as it is (and proves nothing)",
     [read(10, 103), read(11, 103)], ledger(s10=1), (100, 105), None, 0, PAST,
     dict(base=(100, 105), base_taken=False,
          rebase=judge.Rebase(read(10, 103), (102, 103), PAST), judged=1, last=None)),
    ("... a narrower one replaces it",
     [read(10, 103), read(13, 103)], ledger(s10=1), (100, 105), None, 0, PAST,
     dict(rebase=judge.Rebase(read(13, 103), (102, 102), PAST), judged=0)),
    ("a read contradicting the proposal drops it",
     [read(10, 103), read(11, 108)], {}, (100, 105), None, 0, PAST,
     dict(base=(100, 105), rebase=None, last=3)),
    ("a narrower read outside the baseline is drift, not a baseline",
     [read(10, 108)], {}, (100, 105), None, 0, PAST,
     dict(base=(100, 105), base_taken=False, last=3)),
    ("no narrowing while a drift waits for its second read",
     [read(10, 103)], {}, (100, 105), -2, 0, PAST,
     dict(base=(100, 105), base_taken=False, last=-2)),
    ("... nor once the room has a correction (they are net of the baseline)",
     [read(10, 103)], {}, (100, 105), None, 5, PAST,
     dict(base=(100, 105), base_taken=False, last=-2, fix=0)),
    ("judged reads are judged, a later one not yet judgeable waits",
     [read(10, 150), read(99, 150)], {}, (100, 100), 50, 0, T + 60.0,
     dict(fix=50, waiting=[read(99, 150)], sooner=read(99, 150)["t1"] + LATE + TYPICAL_LAG)),
]


@pytest.mark.parametrize(("reads", "secs", "base", "last", "corrected", "mark", "expected"),
                         [c[1:] for c in JUDGE_CASES], ids=[c[0] for c in JUDGE_CASES])
def test_judge_room(reads: list[Read], secs: dict[int, int], base: tuple[int, int] | None,
                    last: int | None, corrected: int, mark: float,
                    expected: dict[str, Any]) -> None:
    out = judge.judge_room(reads, secs, base, last, corrected, mark, NOW, WINDOW)
    assert {k: getattr(out, k) for k in expected} == expected


def _pass(reads: list[Read], secs: dict[int, int], prev: judge.RoomJudgement,
          mark: float, corrected: int = 0) -> judge.RoomJudgement:
    """One pass over a room at the watermark `mark`, carrying over what the one before stored."""
    return judge.judge_room(reads, secs, prev.base, prev.last, corrected, mark, mark, WINDOW,
                            rebase=prev.rebase)


def test_a_proposed_baseline_is_taken_when_judged_again_with_the_same_k() -> None:
    """The drift it absorbs is one the wider baseline could not prove; a 1-coin gift never
    counted after it is then proved and taken back (the wide baseline proves nothing of it)."""
    first = _pass([read(10, 103)], {}, judge.RoomJudgement(base=(100, 105)), PAST)
    early = _pass([], {}, first, PAST + REBASE_SETTLE - 0.1)
    assert early.base == (100, 105) and early.rebase == first.rebase
    assert early.sooner == pytest.approx(PAST + REBASE_SETTLE)
    taken = _pass([], {}, early, PAST + REBASE_SETTLE)
    assert taken.base == (103, 103) and taken.base_taken and taken.rebase is None
    phantom = ledger(s20=1)
    healed = _pass([read(30, 103), read(31, 103)], phantom, taken, PAST + 10)
    assert healed.fix == -1
    wide = _pass([read(30, 103), read(31, 103)], phantom, judge.RoomJudgement(base=(100, 105)),
                 PAST + 10)
    assert wide.fix == 0  # against the wide baseline, nothing is proved


def test_a_busy_room_narrows_its_baseline_from_reads_that_never_agree() -> None:
    """Two reads giving the same K, the rule before, come rarely in a busy room: a gift in
    either's ambiguous seconds makes them differ. A proposal judged again needs no second."""
    busy = ledger(s9=4, s11=3)
    reads = [read(10, 104), read(11, 104), read(14, 107)]
    ks = {judge.evidence(r, busy, DEFAULT_BAND) for r in reads}
    assert len(ks) == 3  # no two agree
    first = _pass(reads, busy, judge.RoomJudgement(base=(90, 110)), PAST)
    assert first.rebase is not None and first.base == (90, 110)
    taken = _pass([], busy, first, PAST + REBASE_SETTLE)
    assert taken.base_taken and taken.base == first.rebase.k


def test_a_read_that_missed_a_straggling_webhook_is_not_taken_for_a_baseline() -> None:
    """One read judged before a 1-coin webhook was ingested (a straggler past the watermark)
    reads 1 coin high; had it become the baseline, every correct read after would prove -1 and
    take back a gift Tencent counted (a second reader's example). Judged again once the
    straggler is in, it gives another K: proposed afresh, and taken only when it holds."""
    first = _pass([read(10, 104)], {}, judge.RoomJudgement(base=(100, 105)), PAST)
    assert first.rebase is not None and first.rebase.k == (104, 104)
    ingested = ledger(s6=1)  # the straggler is in
    second = _pass([], ingested, first, PAST + REBASE_SETTLE)
    assert second.base == (100, 105) and second.rebase is not None
    assert second.rebase.k == (103, 103)
    third = _pass([read(12, 104)], ingested, second, PAST + 2 * REBASE_SETTLE)
    assert third.base == (103, 103) and third.fix == 0 and third.last is None


def test_a_drift_or_a_correction_before_the_proposal_is_taken_drops_it() -> None:
    first = _pass([read(10, 103)], {}, judge.RoomJudgement(base=(100, 105)), PAST)
    drifting = _pass([read(11, 110)], {}, first, PAST + 0.5)
    assert drifting.last == 5 and drifting.rebase is None
    corrected = _pass([], {}, first, PAST + REBASE_SETTLE, corrected=2)
    assert corrected.base == (100, 105) and corrected.rebase is None


@pytest.mark.parametrize("raw", [None, "", "103,103", "{}", '{"read": 1}'])
def test_a_proposal_stored_in_another_form_is_none(raw: str | None) -> None:
    assert judge.Rebase.loads(raw) is None


def test_a_proposal_round_trips() -> None:
    prop = judge.Rebase(read(10, 103), (101, 103), PAST)
    assert judge.Rebase.loads(prop.dumps()) == prop


@pytest.mark.parametrize(("window", "dropped"), [
    ((T + 8.0, T + 300.0), 0),  # its moment (9.5 at the earliest) a spread after the start
    ((T + 8.6, T + 300.0), 1),  # the owner's gifts just before the start may be uncounted
    ((T - 100.0, T + 10.8), 0),
    ((T - 100.0, T + 10.7), 1),  # gifts just after the end may be counted already
])
def test_reads_near_the_start_or_the_end_are_no_evidence(window: tuple[float, float],
                                                        dropped: int) -> None:
    out = judge.judge_room([read(10, 100)], {}, None, None, 0, PAST, NOW, window)
    assert (out.dropped, out.base_taken) == (dropped, not dropped)


def test_a_wider_band_makes_more_gifts_ambiguous() -> None:
    gifts = ledger(s5=1, s6=2, s7=4, s8=8, s12=16)
    assert judge.split(read(10, 0), gifts, DEFAULT_BAND) == (7, 8)
    wide = Band(spread=2.0, late=LATE, clock=0.5)
    assert judge.split(read(10, 0), gifts, wide) == (3, 12)


def test_a_read_stored_without_its_moment_is_placed_by_its_wall_times() -> None:
    old: Read = {"t0": T + 10, "t1": T + 10.2, "R": 1}
    lo, hi = judge.moment(old, DEFAULT_BAND)
    assert lo < T + 10 - 0.5 and hi > T + 10.2 + 0.5


@pytest.mark.parametrize(("raw", "base"), [(None, None), ("", None), ("100", (100, 100)),
                                           ("100,120", (100, 120)), ("-5,3", (-5, 3))])
def test_stored_baselines(raw: str | None, base: tuple[int, int] | None) -> None:
    assert judge.parse_base(raw) == base
    if base is not None:
        assert judge.parse_base(judge.format_base(base)) == base


@pytest.mark.parametrize(("raw", "corrected", "last"), [
    (None, 0, None), ("", 0, None),
    ("50@0", 0, 50), ("-7@30", 30, -7),
    ("50@0", 50, None),  # stored before a correction it did not see: stale
    ("50", 0, None),  # the form before "@": its corrections unknown
])
def test_stored_unconfirmed_drifts(raw: str | None, corrected: int, last: int | None) -> None:
    assert judge.parse_last(raw, corrected) == last
    if last is not None:
        assert judge.format_last(last, corrected) == raw
    assert judge.format_last(None, corrected) == ""


def test_judging_keeps_the_reads_it_is_given() -> None:
    reads = [read(10, 150), read(99, 150)]
    judge.judge_room(reads, {}, (100, 100), None, 0, T + 60.0, NOW, WINDOW)
    assert reads == [read(10, 150), read(99, 150)]


# (id, confirmed drift per room, surely ended, decided, too late)
DECIDE_CASES = [
    ("a drift confirmed while the battle runs is decided", {"a": 50}, False, {"a": 50}, {}),
    ("a drift confirmed after the end is not decided", {"a": 50, "b": -3}, True, {},
     {"a": 50, "b": -3}),
    ("a zero sum is no decision", {"a": 0, "b": 5}, False, {"b": 5}, {}),
    ("nothing confirmed after the end: nothing late", {"a": 0}, True, {}, {}),
]


@pytest.mark.parametrize(("fixes", "ended", "decided", "late"),
                         [c[1:] for c in DECIDE_CASES], ids=[c[0] for c in DECIDE_CASES])
def test_decide(fixes: dict[str, int], ended: bool, decided: dict[str, int],
                late: dict[str, int]) -> None:
    assert judge.decide(fixes, ended) == (decided, late)


INTERVAL = 15.0

# (id, reads waiting, now (from T), need, last read (from T), read?, sooner)
READ_CASES: list[tuple[str, list[Read], float, int, float | None, bool, float | None]] = [
    ("a room never read is read", [], 50.5, QUIET, None, True, None),
    ("a quiet room: once an interval", [], 50.5, QUIET, 40.0, False, T + 40.0 + INTERVAL),
    ("... and then", [], 55.0, QUIET, 40.0, True, None),
    ("a quiet room's read is judged before the next", [read(49, 100)], 70.0, QUIET, 49.2,
     False, None),
    ("a busy room is read whenever nothing waits", [], 50.5, BUSY, 50.0, True, None),
    ("its confirming read PAIR_GAP after the first", [read(49, 100)], 49.2 + PAIR_GAP + 0.1,
     BUSY, 49.2, True, None),
    ("not before", [read(49, 100)], 49.5, BUSY, 49.2, False, read(49, 100)["t1"] + PAIR_GAP),
    ("two reads waiting: no third", [read(40, 100), read(41, 100)], 50.5, BUSY, 41.2, False,
     None),
    ("a drift waiting for agreement: a read every PAIR_GAP",
     [read(40, 100), read(41, 100)], 42.3, HUNTING, 41.2, True, None),
    ("... after the newest", [read(40, 100), read(41, 100)], 41.5, HUNTING, 41.2, False,
     read(41, 100)["t1"] + PAIR_GAP),
    ("... up to MAX_OBSERVATIONS waiting", [read(40 + i, 100) for i in range(MAX_OBSERVATIONS)],
     60.0, HUNTING, 45.2, False, None),
]


@pytest.mark.parametrize(("waiting", "now", "need", "read_at", "wanted", "sooner"),
                         [c[1:] for c in READ_CASES], ids=[c[0] for c in READ_CASES])
def test_read_wanted(waiting: list[Read], now: float, need: int, read_at: float | None,
                     wanted: bool, sooner: float | None) -> None:
    at = None if read_at is None else T + read_at
    assert cadence.read_wanted(waiting, T + now, need, at, INTERVAL) == (wanted, sooner)


def test_a_read_with_gifts_it_may_not_have_counted_is_ambiguous() -> None:
    quiet = judge.judge_room([read(10, 100)], ledger(s5=3), (97, 97), None, 0, PAST, NOW,
                             WINDOW)
    busy = judge.judge_room([read(10, 100)], ledger(s9=3), (97, 97), None, 0, PAST, NOW,
                            WINDOW)
    none = judge.judge_room([], ledger(s9=3), (97, 97), None, 0, PAST, NOW, WINDOW)
    assert (quiet.ambiguous, busy.ambiguous, none.ambiguous) == (False, True, None)


def test_no_read_judged_too_near_the_end_to_correct_anything() -> None:
    end = NOW + 10.0
    last = end - LATE - TYPICAL_LAG - cadence.LAST_READ_LEAD  # the last moment worth a read
    assert not cadence.reads_over(end, last - 0.01) and cadence.reads_over(end, last)
    # (later than the judge's own edge: gifts after the end are never counted by such a read)
    assert last < end - DEFAULT_BAND.clock


@pytest.mark.parametrize(("lag", "blocked"), [(0.6, False), (READ_LAG, False),
                                              (READ_LAG + 0.01, True), (30.0, True)])
def test_no_read_while_the_watermark_lags(lag: float, blocked: bool) -> None:
    assert cadence.reads_blocked(NOW - lag, NOW) is blocked


@pytest.mark.parametrize(("t1", "lag", "at"), [
    (NOW - 1.0, 0.3, NOW - 1.0 + LATE + TYPICAL_LAG),  # ingest keeps up: when expected
    (NOW - 10.0, 0.3, NOW + 0.5),  # overdue: at least 0.5 s on
    (NOW - 10.0, 2.0, NOW + 2.0),  # ... or the watermark's lag
    (NOW - 10.0, 60.0, NOW + READ_LAG),  # ... at most READ_LAG
])
def test_judgeable_at(t1: float, lag: float, at: float) -> None:
    assert cadence.judgeable_at(t1, NOW, lag) == at


def test_watermark_lag_is_at_least_a_tick() -> None:
    assert cadence.watermark_lag(NOW + 5, NOW) == 0.3
    assert cadence.watermark_lag(NOW - 7, NOW) == 7


def test_a_fresh_read_wants_the_next_read_its_room_pays_for_else_its_judging() -> None:
    reads, sooner = cadence.add_read([], read(10, 100), 0.3, BUSY)
    assert reads == [read(10, 100)] and sooner == read(10, 100)["t1"] + PAIR_GAP
    reads, sooner = cadence.add_read(reads, read(11, 100), 0.3, BUSY)
    assert len(reads) == 2 and sooner == read(11, 100)["t1"] + LATE + TYPICAL_LAG
    _, sooner = cadence.add_read([], read(10, 100), 0.3, QUIET)
    assert sooner == read(10, 100)["t1"] + LATE + TYPICAL_LAG  # judged before the next
    _, sooner = cadence.add_read(reads, read(12, 100), 0.3, HUNTING)
    assert sooner == read(12, 100)["t1"] + PAIR_GAP


def test_reads_kept_are_bounded() -> None:
    reads = [read(i, i) for i in range(MAX_OBSERVATIONS)]
    kept, _ = cadence.add_read(reads, read(99, 99), 0.3, HUNTING)
    assert kept == [*reads[1:], read(99, 99)]


def test_room_ledger_reads_its_own_rooms_seconds() -> None:
    secs = {f"a|{T}": 1, f"a|{T + 1}": 2, f"b|{T}": 4, f"x|a|{T + 2}": 8}
    assert judge.room_ledger(secs, "a") == {T: 1, T + 1: 2}
    assert judge.room_ledger(secs, "x|a") == {T + 2: 8}


@pytest.mark.parametrize(("end", "interval", "due"), [
    (NOW, 2.0, None),  # ended: no more passes
    (NOW - 5, 2.0, None),
    (NOW + 600, 30.0, NOW + 30.0),  # every interval
    (NOW + 30.0 + FINAL_WINDOW, 30.0, NOW + JUDGE_DELAY),  # the last stretch: every JUDGE_DELAY
    (NOW + 5, 2.0, NOW + 2.0),  # ... or the interval if shorter
])
def test_next_due_at(end: float, interval: float, due: float | None) -> None:
    assert cadence.next_due_at(NOW, end, interval) == due


@pytest.mark.parametrize(("due", "sooner", "all_waiting", "expected"), [
    (None, NOW + 1, False, None),  # ended: never rescheduled
    (NOW + 30, None, False, NOW + 30),
    (NOW + 30, NOW + 2, False, NOW + 2),  # a sooner pass pays off
    (NOW + 3, NOW + 9, False, NOW + 3),
    (NOW + 3, NOW + 9, True, NOW + 9),  # every room waits on a read: exactly then
    (NOW + 30, NOW - 4, False, NOW + 0.5),  # never within half a second
])
def test_reschedule(due: float | None, sooner: float | None, all_waiting: bool,
                    expected: float | None) -> None:
    assert cadence.reschedule(due, sooner, all_waiting, NOW) == expected

