"""A room's index and outside ids stay bounded on a real redis-server (issue 28): the Lua of
INDEX_BATTLE and COUNT_OUTSIDE as Redis 7 runs it (tests/unit/battles/test_bounded.py runs the
same rules through weeks on fakeredis with its clock moved)."""

from __future__ import annotations

import time

import pytest

from worker.engine.battles import registry
from worker.engine.battles.records import Gift
from worker.engine.state.keys import RoomKeys

pytestmark = pytest.mark.integration

DAY = 86_400


def test_registering_a_battle_prunes_the_battles_that_ended_a_day_ago(rt):
    now = time.time()
    # Three days of a room's history, fifteen 5-minute battles a day, then one starting now.
    for k in range(45, 0, -1):
        at = now - k * DAY / 15
        registry.register(rt, f"old{k}", at, 300_000, {"r1": "o1", "r2": "o2"}, "test")
    registry.register(rt, "now", now, 300_000, {"r1": "o1", "r2": "o2"}, "test")
    for room in ("r1", "r2"):
        index = rt.redis.hgetall(RoomKeys(room).battles)
        ended = sorted(float(v.split()[1]) for v in index.values())
        assert len(index) <= 16 and ended[0] >= now - registry.KEEP_AFTER_END, len(index)
        assert rt.redis.ttl(RoomKeys(room).battles) > 0
    # Routing still finds the current battle, and a recent one for its late gift.
    gifts = [Gift("g1", "r1", ("o1",), int(now) + 1, 5),
             Gift("g2", "r1", ("o1",), int(now - DAY / 15 + 10), 3)]
    counts = registry.route(rt, gifts)
    assert counts["ingested"] == 2, counts


def test_outside_ids_go_to_a_bucket_with_a_fixed_expiry_and_duplicates_are_found(rt):
    now = time.time()
    registry.register(rt, "b1", now - 10, 600_000, {"r1": "o1", "r2": "o2"}, "test")
    guest = [Gift(f"e{i}", "r1", ("guest",), int(now), 1) for i in range(5)]
    assert registry.route(rt, guest)["not_to_owner"] == 5
    assert registry.route(rt, guest)["duplicate"] == 5
    assert registry.outside_ids(rt, "r1") == {f"e{i}" for i in range(5)}
    (key,) = rt.redis.keys("*seen_outside*")
    ttl = rt.redis.ttl(key)
    assert 0 < ttl <= 2 * registry.OUTSIDE_DEDUP
    registry.route(rt, [Gift("e9", "r1", ("guest",), int(now), 1)])
    assert rt.redis.ttl(key) <= ttl  # never pushed on by a later add
    # Across the bucket's edge (a host a bucket ahead): still a duplicate.
    rt.clock = lambda: now + registry.OUTSIDE_DEDUP
    assert registry.route(rt, guest[:1])["duplicate"] == 1
