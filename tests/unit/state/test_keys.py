"""worker.engine.state.keys: every Redis key, one Cluster slot per battle and per room."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from worker.engine.state import keys
from worker.engine.state.keys import BattleKeys, RoomKeys


def _slot(key: str) -> int:
    return key_slot(key.encode())


def _room_keys(rk: RoomKeys) -> list[str]:
    return [getattr(rk, s) for s in RoomKeys.__slots__ if s != "room_id"]


@pytest.mark.parametrize("battle_id", ["b1", "42", "a}b", "{x}", "}{", "a:b|c%7D"])
def test_every_key_of_a_battle_lives_in_its_tag_slot(battle_id: str) -> None:
    bk = BattleKeys(battle_id)
    slots = {_slot(k) for k in bk.all()}
    assert len(slots) == 1
    assert all(k.startswith("bs:{b:") for k in bk.all())


@pytest.mark.parametrize("room_id", ["r1", "room}", "{r:x}", "r{1}"])
def test_every_key_of_a_room_lives_in_its_tag_slot(room_id: str) -> None:
    rk = RoomKeys(room_id)
    assert len({_slot(k) for k in _room_keys(rk)}) == 1
    assert rk.room_id == room_id


def test_braces_in_an_id_cannot_end_the_hash_tag_early() -> None:
    # "x}" unescaped would make the tag "{b:x}" and share the slot of battle "x".
    forged = BattleKeys("x}")
    assert forged.meta == "bs:{b:x%7D}:meta"
    assert _slot(forged.meta) != _slot(BattleKeys("x").meta)
    assert "{" not in RoomKeys("{evil").held.removeprefix("bs:{")


def test_all_lists_every_battle_key_once_the_meta_hash_first() -> None:
    bk = BattleKeys("b1")
    everything = bk.all()
    assert everything[0] == bk.meta  # GIVE_UP reads KEYS[1] as the meta hash
    assert len(everything) == len(set(everything)) == len(BattleKeys.__slots__) - 1
    assert "b1" not in everything
    assert {k.rsplit(":", 1)[1] for k in everything} == {
        "meta", "pending", "inflight", "applied", "ledger", "corr", "unapplied", "seen", "secs",
        "lock", "rlock", "flushes", "recon"}


def test_keys_of_different_battles_and_rooms_never_meet() -> None:
    a, b = BattleKeys("b1"), BattleKeys("b2")
    assert not set(a.all()) & set(b.all())
    assert RoomKeys("b1").held != BattleKeys("b1").pending
    assert not set(_room_keys(RoomKeys("r1"))) & set(_room_keys(RoomKeys("r2")))


def test_the_rate_keys_of_one_api_share_a_slot_and_apis_are_apart() -> None:
    api = "set_battle_score"
    mine = [keys.rate_key(api), keys.rate_reserve_key(api), keys.rate_high_key(api)]
    assert len(set(mine)) == 3 and len({_slot(k) for k in mine}) == 1  # one RATE call
    assert keys.rate_key(api) != keys.rate_key("get_gift_count")


def test_global_keys_are_distinct_and_prefixed() -> None:
    names = [n for n in dir(keys) if n.isupper() and isinstance(getattr(keys, n), str)]
    values = [getattr(keys, n) for n in names if n != "PREFIX"]
    assert len(values) == len(set(values))
    kombu_and_queues = {keys.KOMBU_UNACKED, keys.KOMBU_UNACKED_INDEX, keys.CONTROL_QUEUE,
                        keys.DRAIN_QUEUE}
    # A key that shares another's slot carries it as its hash tag: "{bs:...}:..."
    assert all(v.removeprefix("{").startswith("bs:") for v in values
               if v not in kombu_and_queues)
    assert keys.KOMBU_UNACKED == "unacked" and keys.KOMBU_UNACKED_INDEX == "unacked_index"


def test_a_drain_claim_key_is_named_by_its_token() -> None:
    assert keys.drain_claim_key("t1") == "bs:drain:claim:t1"
    assert keys.drain_claim_key("t1") != keys.drain_claim_key("t2")
