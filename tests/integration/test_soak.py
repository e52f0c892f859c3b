"""The soak benchmark in short (bench/soak.py): 50 rooms, a warm-up day and 6 simulated days of
4 s each (retention scaled x21600), 2-3 battles per room per day, 80 % of the gifts outside any
battle, 1 % of them first delivered 2-3.5 s late (after their battle was finalized). Once
retention has cycled, what Redis keeps must stop growing with the history.

A 4-s day keeps a battle's keys 4 s past its end, less than finalize's 10 s grace: the test
shortens that grace (a latency, not a retention) to 1 s, so a battle is finalized well within
its scaled day, as it is within a real one."""

from __future__ import annotations

import pytest

from bench.soak import Soak, Workload

W = Workload(rooms=50, days=6, day_seconds=4, gifts_per_room_day=40,
             battles_per_room_day=(2, 3), hold_seconds=1.0, warmup_days=1, final_grace=1.0,
             late=0.01, late_delay=(2.0, 3.5), seed=7)


@pytest.fixture(scope="module")
def soak():
    lines: list[str] = []
    result = Soak(W, out=lines.append).run()
    print("\n".join(lines))  # shown with -s, or when an assertion fails
    return result


def _judged(result: dict) -> list[dict]:
    return [d for d in result["days"] if d["day"] >= 0]


def test_the_soak_ran_its_days_on_time(soak):
    days = _judged(soak)
    assert len(days) == W.days
    assert all(d["gifts"] > 0.9 * W.rooms * W.gifts_per_room_day for d in days)
    assert max(d["late"] for d in days) < 2.0  # the producer kept up: the figures are the days'
    assert soak["summary"]["tick_errors"] == {}


def test_a_rooms_index_holds_about_a_day_of_battles(soak):
    # Pruned of battles that ended a (scaled) day ago: at most two days' battles, whatever
    # the history (it gained a field per battle for ever, read whole per routed batch).
    hi = W.battles_per_room_day[1]
    assert [d["redis"]["index_max"] for d in _judged(soak)[2:]] == [
        min(d["redis"]["index_max"], 2 * hi + 1) for d in _judged(soak)[2:]]


def test_the_ids_counted_outside_expire(soak):
    # A room remembers its outside ids for a bounded time (its set's expiry was pushed on by
    # every add, so a room with gifts every day kept them all): never two days' worth.
    bound = 2 * W.gifts_per_room_day
    assert [d["redis"]["outside_max"] for d in _judged(soak)[2:]] == [
        min(d["redis"]["outside_max"], bound) for d in _judged(soak)[2:]]


def test_keys_and_memory_stay_flat_once_retention_has_cycled(soak):
    days = _judged(soak)
    base, last = days[2]["redis"], days[-1]["redis"]
    assert last["keys"] <= 1.25 * base["keys"]
    assert last["used_memory"] <= 1.25 * base["used_memory"]


def test_every_battle_and_room_key_expires(soak):
    # Keys of battles not finalized yet get their expiry when they are; held lists are
    # emptied (deleted) by the sweep. Anything else without one stays for ever: e.g. a gift
    # ingested after its battle was finalized, whose flush then records it unapplied in keys
    # that finalize, having run already, never gives an expiry.
    leaks = {k: n for k, n in soak["summary"]["no_expiry"].items() if k != "room:held"}
    assert leaks == {}
