"""worker.engine.ingest.gifts: every webhook ends counted once, held, set aside or dead-lettered."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from tests.unit.conftest import T0
from tests.unit.ingest.world import BATTLE, gift, ledger, start, start_battle
from worker.engine import deadletters, events
from worker.engine.battles import registry
from worker.engine.ingest import gifts
from worker.engine.ingest.gifts import bulk_pairs, handle, handle_durably
from worker.engine.runtime import Runtime
from worker.engine.settings import GiftValue
from worker.engine.state import keys
from worker.engine.state.counters import read
from worker.engine.state.keys import BattleKeys, RoomKeys
from worker.engine.tencent.models import MAX_SCORE

#: The outcomes a received item can end in (handle's counts besides `received`).
OUTCOMES = ("ingested", "duplicate", "held", "not_to_owner", "dead_lettered", "ignored",
            "lifecycle")


def _accounted(counts: dict[str, int]) -> bool:
    return counts["received"] == sum(counts.get(k, 0) for k in OUTCOMES)


def test_a_gift_of_a_running_battle_is_counted_once_by_event_id(frt: Runtime) -> None:
    start_battle(frt)
    body = gift("room_a", 7)
    first = handle(frt, [(body, "e1"), (gift("room_b", 3), "e2")])
    again = handle(frt, [(body, "e1")])
    assert first["ingested"] == 2 and again["duplicate"] == 1 and again["ingested"] == 0
    assert ledger(frt) == {"room_a": 7, "room_b": 3}
    bk = BattleKeys(BATTLE)
    assert frt.redis.hgetall(bk.pending) == {"room_a": "7", "room_b": "3"}
    assert frt.redis.hgetall(bk.secs) == {f"room_a|{int(T0)}": "7", f"room_b|{int(T0)}": "3"}
    assert frt.redis.zscore(keys.FLUSH_DUE, BATTLE) == T0  # a flush is due at once
    assert read(frt.redis)["ingested"] == 2 and read(frt.redis)["duplicate"] == 1


def test_a_gift_without_an_event_id_is_deduplicated_by_its_body(frt: Runtime) -> None:
    start_battle(frt)
    body = gift("room_a", 4, sender="alice")
    twin = json.loads(json.dumps(body))
    other = gift("room_a", 4, sender="bob")
    counts = handle(frt, [(body, None), (twin, None), (other, None)])
    assert (counts["ingested"], counts["duplicate"]) == (2, 1)
    assert frt.redis.sismember(BattleKeys(BATTLE).seen, events.derive_event_id(body))


def test_a_gift_whose_room_is_in_no_known_battle_is_held_until_a_deadline(
        frt: Runtime) -> None:
    counts = handle(frt, [(gift("room_a", 6), "e1")])
    assert counts["held"] == 1 and counts["ingested"] == 0
    (item,) = frt.redis.lrange(RoomKeys("room_a").held, 0, -1)
    assert json.loads(item) == {"e": "e1", "r": "room_a", "to": ["owner_a"], "t": int(T0),
                                "v": 6, "d": T0 + gifts.battles.HOLD_SECONDS}
    assert frt.redis.zscore(keys.HELD_ROOMS, "room_a") == T0 + gifts.battles.HOLD_SECONDS


def test_a_held_gift_is_scored_once_its_battle_starts(frt: Runtime) -> None:
    handle(frt, [(gift("room_a", 6), "e1")])
    counts = handle(frt, [(start(), None)])
    assert counts["lifecycle"] == 1
    assert ledger(frt) == {"room_a": 6}
    assert frt.redis.llen(RoomKeys("room_a").held) == 0
    assert handle(frt, [(gift("room_a", 6), "e1")])["duplicate"] == 1  # a redelivery


def test_a_gift_to_a_guest_is_no_battle_score(frt: Runtime) -> None:
    start_battle(frt)
    body = gift("room_a", 9, to="a_guest")
    assert handle(frt, [(body, "g1")])["not_to_owner"] == 1
    assert handle(frt, [(body, "g1")])["duplicate"] == 1
    assert ledger(frt) == {}
    assert registry.outside_ids(frt, "room_a") == {"g1"}


def test_bad_input_never_raises_and_every_item_is_accounted_for(frt: Runtime) -> None:
    start_battle(frt)
    items: list[tuple[Any, Any]] = [
        (gift("room_a", 1), "ok"),
        (gift("room_a", -1), "negative"),
        (["not", "a", "dict"], None),
        ({"CallbackCommand": "Live.CallbackAfterCreateRoom"}, None),  # not ours: ignored
        ({"no": "command"}, None),
        (gift("room_a", 1), "x" * 201),  # an event id too long
        (gift("room_a", 1), True),
        (start("battle-2", {"room_c": "owner_c"}), None),
    ]
    counts = handle(frt, items)
    assert counts["received"] == 8 and _accounted(counts)
    assert (counts["ingested"], counts["dead_lettered"], counts["ignored"],
            counts["lifecycle"]) == (1, 5, 1, 1)
    reasons = [e["reason"] for e in deadletters.list_entries(frt)]
    assert len(reasons) == 5 and any("event_id" in r for r in reasons)


def test_the_gift_value_setting_decides_what_a_gift_is_worth(frt: Runtime) -> None:
    start_battle(frt)
    handle(frt, [(gift("room_a", 5, count=3), "e1")])
    frt.settings = frt.settings.model_copy(update={"gift_value": GiftValue.coins_x_count})
    handle(frt, [(gift("room_b", 5, count=3), "e2")])
    assert ledger(frt) == {"room_a": 5, "room_b": 15}


def test_a_gift_that_would_pass_the_max_score_is_dead_lettered_not_counted(
        frt: Runtime) -> None:
    start_battle(frt)
    bk = BattleKeys(BATTLE)
    frt.redis.hset(bk.ledger, "room_a", MAX_SCORE - 10)
    counts = handle(frt, [(gift("room_a", 20), "over"), (gift("room_a", 10), "fits")])
    assert counts["ingested"] == 1 and counts["dead_lettered"] == 1 and _accounted(counts)
    (entry,) = deadletters.list_entries(frt)
    assert entry["event_id"] == "over" and "MAX_SCORE" in entry["reason"]
    assert not frt.redis.sismember(bk.seen, "over")  # refused before it was marked seen
    assert int(frt.redis.hget(bk.ledger, "room_a")) == MAX_SCORE  # the bound itself is allowed


def test_a_room_at_the_max_score_takes_no_more_even_by_one(frt: Runtime) -> None:
    # Lua numbers are doubles: 2**53 + 1 rounds to 2**53, so the bound must not be tested as
    # ledger + v > 2**53 (it once was: a room could reach MAX_SCORE + 2).
    start_battle(frt)
    bk = BattleKeys(BATTLE)
    frt.redis.hset(bk.ledger, "room_a", MAX_SCORE)
    counts = handle(frt, [(gift("room_a", 1), "one"), (gift("room_a", 1), "two")])
    assert counts["dead_lettered"] == 2 and counts["ingested"] == 0
    assert int(frt.redis.hget(bk.ledger, "room_a")) == MAX_SCORE


def test_a_create_webhook_registers_a_battle_awaiting_its_start(frt: Runtime) -> None:
    body = {"CallbackCommand": events.CREATE, "BattleId": "b-new", "FromRoomId": "r1",
            "ToRoomIdList": ["r2"], "Duration": 60_000}
    assert handle(frt, [(body, None)])["lifecycle"] == 1
    assert frt.redis.zscore(keys.UNRESOLVED, "b-new") == T0
    assert frt.redis.hget(BattleKeys("b-new").meta, "status") == "created"
    assert handle(frt, [(gift("r1", 3), "e1")])["held"] == 1  # no start yet: held


def test_bulk_pairs_keeps_the_well_formed_items_and_dead_letters_the_rest(
        frt: Runtime) -> None:
    body = gift()
    pairs, bad = bulk_pairs(frt, [{"body": body, "event_id": "e1"}, {"body": body},
                                  {"event_id": "no body"}, "junk"])
    assert pairs == [(body, "e1"), (body, None)] and bad == 2
    assert bulk_pairs(frt, {"items": "not a list"}) == ([], 1)
    assert deadletters.count(frt) == 3


class _Flaky:
    """`handle` failing with `error` the first `times` calls."""

    def __init__(self, error: Exception, times: int) -> None:
        self.error, self.left, self.calls = error, times, 0

    def __call__(self, rt: Runtime, items: list[tuple[Any, Any]]) -> dict[str, int]:
        self.calls += 1
        if self.left:
            self.left -= 1
            raise self.error
        return {"received": len(items)}


def test_handle_durably_waits_out_a_redis_outage_with_growing_pauses(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    flaky = _Flaky(redis.ConnectionError("down"), 8)
    monkeypatch.setattr(gifts, "handle", flaky)
    sleeps: list[float] = []
    assert handle_durably(frt, [({}, None)], sleep=sleeps.append) == {"received": 1}
    assert sleeps == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]  # doubling, capped at 2 s


@pytest.mark.parametrize("error", [redis.TimeoutError("slow"),
                                   redis.BusyLoadingError("loading")])
def test_handle_durably_gives_the_outage_back_past_its_time(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    monkeypatch.setattr(gifts, "handle", _Flaky(error, 100))
    sleeps: list[float] = []
    with pytest.raises(type(error)):
        handle_durably(frt, [({}, None)], retry_for=0.0, sleep=sleeps.append)
    assert sleeps == []  # the caller requeues the events: never dropped


def test_handle_durably_does_not_retry_what_is_no_outage(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    flaky = _Flaky(redis.ResponseError("WRONGTYPE"), 1)
    monkeypatch.setattr(gifts, "handle", flaky)
    with pytest.raises(redis.ResponseError):
        handle_durably(frt, [({}, None)], sleep=lambda s: None)
    assert flaky.calls == 1

