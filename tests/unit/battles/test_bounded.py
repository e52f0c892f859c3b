"""A room's bookkeeping stays bounded by time whatever its history (issue 28): the ids counted
outside any battle, the room index, the held list.

Each test runs a room through weeks of simulated traffic on fakeredis with its server clock
moved (so key expiry runs as it would), and fails on the code before these bounds: the set of
outside ids had its expiry pushed on by every add, the index gained a field per battle for ever
and the held list had no expiry."""

from __future__ import annotations

from collections.abc import Callable

from tests.unit.conftest import T0
from tests.unit.flush.answers import ROOMS, start
from tests.unit.state.server_clock import ServerClock
from worker.engine.battles import registry
from worker.engine.battles.records import Gift
from worker.engine.runtime import Runtime
from worker.engine.state.keys import RoomKeys

DAY = 86_400


def stored_outside_ids(rt: Runtime) -> int:
    """Every outside-a-battle id Redis still keeps, in any key."""
    return sum(rt.redis.scard(k) for k in rt.redis.scan_iter(match="*seen_outside*"))


def mover(rt: Runtime, clock: ServerClock) -> Callable[[float], float]:
    """A function moving the host's clock and Redis's together by `seconds`; returns now."""
    now = [T0]

    def move(seconds: float) -> float:
        now[0] += seconds
        clock.advance(seconds)
        rt.clock = lambda: now[0]
        return now[0]

    return move


def test_outside_ids_are_kept_one_to_two_buckets_however_busy_the_room(
        frt: Runtime, clock: ServerClock) -> None:
    move = mover(frt, clock)
    start(frt, at=T0 - 10, seconds=30 * DAY)  # a guest's gifts in it are outside its score
    hour = registry.OUTSIDE_DEDUP
    now = T0
    for h in range(3 * 24):  # three days, ten gifts to a guest an hour
        gifts = [Gift(f"e{h}-{i}", "r1", ("guest",), int(now), 1) for i in range(10)]
        assert registry.route(frt, gifts)["not_to_owner"] == 10
        now = move(hour / 2)
        # A redelivery half a bucket later, across the bucket's edge or not, is a duplicate.
        assert registry.route(frt, gifts[:1])["duplicate"] == 1
        now = move(hour / 2)
    # Before: one set of 720 ids whose expiry every add pushed on. Now: the last two buckets.
    assert stored_outside_ids(frt) <= 2 * 10 * hour // 3600
    for key in frt.redis.scan_iter(match="*seen_outside*"):
        assert 0 <= frt.redis.ttl(key) <= 2 * hour  # an expiry, never pushed on


def test_the_room_index_keeps_about_a_day_of_battles_not_the_rooms_history(
        frt: Runtime, clock: ServerClock) -> None:
    move = mover(frt, clock)
    now = T0
    for day in range(30):
        for n in range(15):  # fifteen 5-minute battles a day, one after another
            start(frt, f"b{day}-{n}", at=now, seconds=300)
            now = move(DAY / 15)
    index = frt.redis.hgetall(RoomKeys("r1").battles)
    # Before: 450 fields, read whole for every routed batch. Now: the battles that ended
    # within KEEP_AFTER_END, and the newest.
    assert len(index) <= 15 + 1, len(index)
    assert "b29-14" in index and "b28-14" in index and "b27-0" not in index
    # A late gift of a battle still kept is routed to it, as before.
    late = Gift("late", "r1", (ROOMS["r1"],), int(now - DAY / 15 + 100), 7)
    assert registry.route(frt, [late])["ingested"] == 1


def test_a_held_list_the_sweep_lost_track_of_expires(frt: Runtime) -> None:
    assert registry.route(frt, [Gift("e1", "r9", ("o9",), int(T0), 5)])["held"] == 1
    assert 0 < frt.redis.ttl(RoomKeys("r9").held) <= registry.KEEP_AFTER_END


def test_held_gifts_kept_by_a_sweep_keep_an_expiry(frt: Runtime) -> None:
    """The sweep trims what it read and pushes back what still waits: a trim that emptied the
    list deleted it, and the push made it afresh with no expiry (bench.soak: 449 such lists)."""
    registry.route(frt, [Gift("e1", "r9", ("o9",), int(T0), 5)])
    frt.clock = lambda: T0 + 1  # its deadline is still to come: kept
    registry.drain_held(frt, "r9", sweep=True)
    assert frt.redis.llen(RoomKeys("r9").held) == 1
    assert 0 < frt.redis.ttl(RoomKeys("r9").held) <= registry.KEEP_AFTER_END
