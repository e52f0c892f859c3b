"""Unit tests of worker/engine/battles/roomindex.py: the index value format and the routing rule."""

from __future__ import annotations

import json

import pytest

from tests.unit.conftest import T0
from worker.engine.battles.roomindex import find_battle, index_value, parse_index_value
from worker.engine.runtime import Runtime
from worker.engine.state.keys import RoomKeys


def winner(index: dict[str, str], second: int) -> str | None:
    """The BattleId a gift at `second` scores for (None: none)."""
    hit = find_battle(index, second)
    return None if hit is None else hit[0]


def test_an_index_value_round_trips_exactly_and_marks_an_unknown_owner() -> None:
    for start, end, owner in [(T0 + 0.25, T0 + 300.125, "o1"), (0.0, 0.0, None),
                              (1.0 / 3, 2.0 / 3, "owner-with-dashes")]:
        assert parse_index_value(index_value(start, end, owner)) == (start, end, owner)
    assert index_value(T0, T0 + 60, None) == f"{T0!r} {T0 + 60!r} -"
    assert index_value(0.0, 0.0, "") == "0.0 0.0 -"  # an empty owner is unknown too


def test_a_second_is_routed_to_the_battle_whose_window_holds_it() -> None:
    index = {"b1": index_value(T0, T0 + 60, "o1")}
    assert find_battle(index, int(T0)) == ("b1", "o1", T0 + 60)  # the start is in
    assert find_battle(index, int(T0) + 59) == ("b1", "o1", T0 + 60)
    assert find_battle(index, int(T0) + 60) is None  # the end is not
    assert find_battle(index, int(T0) - 1) is None
    assert find_battle({}, int(T0)) is None


@pytest.mark.parametrize("old_first", [True, False])
def test_in_overlapping_windows_the_latest_starting_battle_wins(old_first: bool) -> None:
    # An old battle ended early (its end webhook lost): the room's next battle starts inside
    # its planned window, and from then on the gifts are the new battle's.
    items = [("old", index_value(T0, T0 + 300, "o1")),
             ("new", index_value(T0 + 100, T0 + 400, "o1"))]
    index = dict(items if old_first else items[::-1])
    assert winner(index, int(T0) + 99) == "old"
    assert winner(index, int(T0) + 100) == "new"
    assert winner(index, int(T0) + 350) == "new"


def test_equal_starts_go_to_the_greater_battle_id_and_unknowns_are_skipped() -> None:
    index = {"b-a": index_value(T0, T0 + 60, "o1"), "b-b": index_value(T0, T0 + 60, "o2"),
             "created": index_value(0.0, 0.0, None),
             "no-owner": index_value(T0 + 10, T0 + 60, None)}
    assert find_battle(index, int(T0) + 20) == ("b-b", "o2", T0 + 60)


@pytest.mark.parametrize("second", [int(T0) - 1, int(T0), int(T0) + 50, int(T0) + 99,
                                    int(T0) + 100, int(T0) + 250, int(T0) + 400])
def test_the_lua_copy_of_the_rule_routes_every_second_as_find_battle_does(
        frt: Runtime, second: int) -> None:
    index = {"old": index_value(T0, T0 + 300, "o1"),
             "new": index_value(T0 + 100, T0 + 400, "o1"),
             "twin": index_value(T0 + 100, T0 + 200, "o1"),  # equal start: byte order
             "created": index_value(0.0, 0.0, None)}
    rk = RoomKeys("r1")
    frt.redis.hset(rk.battles, mapping=index)
    item = json.dumps({"t": second})
    routed = frt.script("ROUTE_OR_HOLD")(keys=[rk.battles, rk.held], args=[second, item, 60])
    expected = winner(index, second)
    assert routed == (expected or "")
    assert frt.redis.lrange(rk.held, 0, -1) == ([] if expected else [item])  # else held
