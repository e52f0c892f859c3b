"""Gift routing when a room's battle windows overlap (issue 13, item 8).

A battle that ends early (both owners left) may keep its planned window in the room index when
its end webhook is lost; the room's next battle can then start inside that window. A room is in
one battle at a time, so among the battles whose window holds a gift's second the one that
started LATEST wins (ties: the greater BattleId). find_battle (Python) and ROUTE_OR_HOLD (Lua)
must agree on that rule.
"""

from __future__ import annotations

import json
import time

import pytest

from worker.engine.battles import registry as battles
from worker.engine.battles.records import Gift
from worker.engine.battles.roomindex import find_battle, index_value, parse_index_value
from worker.engine.state.keys import BattleKeys, RoomKeys

ROOM = "room_a"
OWNER = "owner_a"
OLD, NEW = "battle_old", "battle_new"


def _overlapping_index(t0: float, old_first: bool = True) -> dict[str, str]:
    """OLD planned [t0, t0+300) but ended early; NEW started at t0+100 for 300 s."""
    old = (OLD, index_value(t0, t0 + 300.0, OWNER))
    new = (NEW, index_value(t0 + 100.0, t0 + 400.0, OWNER))
    return dict([old, new] if old_first else [new, old])


@pytest.mark.parametrize("old_first", [True, False])
def test_find_battle_prefers_the_latest_start_in_overlapping_windows(old_first):
    t0 = 1_700_000_000.0
    index = _overlapping_index(t0, old_first)
    # Before the new battle started: only the old one's window holds the second.
    assert find_battle(index, int(t0) + 50) == (OLD, OWNER, t0 + 300.0)
    assert find_battle(index, int(t0) + 99) == (OLD, OWNER, t0 + 300.0)
    # From the new battle's start on, inside both windows: the new battle wins.
    assert find_battle(index, int(t0) + 100) == (NEW, OWNER, t0 + 400.0)
    assert find_battle(index, int(t0) + 299) == (NEW, OWNER, t0 + 400.0)
    # Past the old battle's planned end: only the new one.
    assert find_battle(index, int(t0) + 350) == (NEW, OWNER, t0 + 400.0)
    # Outside every window.
    assert find_battle(index, int(t0) - 1) is None
    assert find_battle(index, int(t0) + 400) is None


def test_find_battle_ignores_unknown_start_and_owner_and_breaks_ties_by_battle_id():
    t0 = 1_700_000_000.0
    index = {
        "b_tie_1": index_value(t0, t0 + 300.0, OWNER),
        "b_tie_2": index_value(t0, t0 + 300.0, OWNER),
        "b_no_owner": index_value(t0 + 50.0, t0 + 300.0, None),  # owner unknown: skipped
        "b_no_start": index_value(0.0, 0.0, OWNER),  # start unknown: skipped
    }
    assert find_battle(index, int(t0) + 60) == ("b_tie_2", OWNER, t0 + 300.0)
    reordered = dict(reversed(list(index.items())))
    assert find_battle(reordered, int(t0) + 60) == ("b_tie_2", OWNER, t0 + 300.0)


def test_the_index_value_round_trips_and_keeps_the_format_the_lua_copy_parses():
    """index_value/parse_index_value are the one Python pair; ROUTE_OR_HOLD matches
    '^(%S+) (%S+) (%S+)$' with '-' for an unknown owner."""
    assert index_value(1_700_000_000.5, 1_700_000_300.5, OWNER) == \
        f"1700000000.5 1700000300.5 {OWNER}"
    assert index_value(0.0, 0.0, None) == "0.0 0.0 -"
    assert parse_index_value(index_value(12.25, 300.0, OWNER)) == (12.25, 300.0, OWNER)
    assert parse_index_value(index_value(0.0, 0.0, None)) == (0.0, 0.0, None)

def _pending(rt, battle_id: str) -> dict[str, str]:
    return rt.redis.hgetall(BattleKeys(battle_id).pending)


def test_route_sends_gifts_in_the_overlap_to_the_newer_battle(rt):
    t0 = float(int(time.time()) - 200)
    # The old battle is registered first (so it comes first in the room's index hash), with
    # its planned 300 s window; it ended early and its end webhook was lost.
    battles.register(rt, OLD, t0, 300_000, {ROOM: OWNER}, "start_webhook")
    battles.register(rt, NEW, t0 + 100.0, 300_000, {ROOM: OWNER}, "start_webhook")
    gifts = [
        Gift("before_new", ROOM, (OWNER,), int(t0) + 50, 3),  # only the old window
        Gift("overlap_1", ROOM, (OWNER,), int(t0) + 100, 5),  # both windows
        Gift("overlap_2", ROOM, (OWNER,), int(t0) + 250, 7),  # both windows
        Gift("after_old", ROOM, (OWNER,), int(t0) + 350, 11),  # only the new window
    ]
    counts = battles.route(rt, gifts)
    assert counts["ingested"] == 4 and counts["held"] == 0
    assert _pending(rt, OLD) == {ROOM: "3"}
    assert _pending(rt, NEW) == {ROOM: str(5 + 7 + 11)}


def test_route_or_hold_script_agrees_with_find_battle_on_overlapping_windows(rt):
    t0 = float(int(time.time()) - 200)
    battles.register(rt, OLD, t0, 300_000, {ROOM: OWNER}, "start_webhook")
    battles.register(rt, NEW, t0 + 100.0, 300_000, {ROOM: OWNER}, "start_webhook")
    rk = RoomKeys(ROOM)
    script = rt.script("ROUTE_OR_HOLD")

    def lua_route(second: int) -> str:
        item = json.dumps({"e": f"e{second}", "r": ROOM, "to": [OWNER], "t": second, "v": 1,
                           "d": time.time() + 60})
        return script(keys=[rk.battles, rk.held], args=[second, item, 60])

    assert lua_route(int(t0) + 50) == OLD
    assert lua_route(int(t0) + 150) == NEW  # the overlap: the battle that started later
    assert lua_route(int(t0) + 350) == NEW
    assert rt.redis.llen(rk.held) == 0
    assert lua_route(int(t0) + 500) == ""  # no window holds it: held
    assert rt.redis.llen(rk.held) == 1

    # The two copies of the rule agree on every second around both windows, and on ties.
    # Byte order (Python's) puts "x_tie" above "X_tie_9"; a locale's collation may not.
    rt.redis.hset(rk.battles, mapping={"X_tie_9": index_value(t0 + 120.0, t0 + 200.0, OWNER),
                                       "x_tie": index_value(t0 + 120.0, t0 + 200.0, OWNER)})
    index = rt.redis.hgetall(rk.battles)
    for second in range(int(t0) - 2, int(t0) + 403):
        hit = find_battle(index, second)
        assert lua_route(second) == (hit[0] if hit else ""), second
