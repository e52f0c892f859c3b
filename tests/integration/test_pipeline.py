"""The scoring pipeline in-process against real Redis and the sandbox: ingest, flush, resolve."""

from __future__ import annotations

import time

import pytest

from tests.helpers import end_body, gift_body, start_body
from worker.engine.flush.flusher import AFTER_ERROR, flush_battle
from worker.engine.ingest.gifts import handle
from worker.engine.state import counters, keys
from worker.engine.state.keys import BattleKeys

ROOMS = {"room_a": "owner_a", "room_b": "owner_b"}



@pytest.fixture
def battle(ctl):
    info = ctl.create_battle(ROOMS, duration_ms=120_000, start=time.time() - 1)
    return info["BattleId"], float(info["StartTime"])


def send(rt, ctl, room, coins, eid, t=None, counted=True):
    owner = ROOMS[room]
    body = gift_body(room, owner, coins, t)
    if counted:
        ctl.count_gifts([{"RoomId": room, "To_Account": [owner], "From_Account": "v",
                          "Coins": coins, "Count": 1}])
    return handle(rt, [(body, eid)])


def test_gifts_flush_exactly_once_with_duplicates(rt, ctl, battle):
    bid, start = battle
    handle(rt, [(start_body(bid, start, 120_000, ROOMS), None)])
    send(rt, ctl, "room_a", 10, "e1")
    send(rt, ctl, "room_b", 7, "e2")
    counts = handle(rt, [(gift_body("room_a", "owner_a", 10), "e1")])  # redelivery
    assert counts["duplicate"] == 1
    assert flush_battle(rt, bid) == "ok"
    assert ctl.scores(bid) == {"room_a": 10, "room_b": 7}
    assert flush_battle(rt, bid) == "idle"
    calls = [c for c in ctl.state()["calls_by_api"].items() if c[0] == "set_battle_score"]
    assert calls == [("set_battle_score", 1)]  # both rooms in one call, nothing re-sent


def test_gift_before_start_webhook_is_held_then_assigned(rt, ctl, battle):
    bid, start = battle
    c = send(rt, ctl, "room_a", 5, "early")
    assert c["held"] == 1
    handle(rt, [(start_body(bid, start, 120_000, ROOMS), None)])
    assert rt.redis.llen("bs:{r:room_a}:held") == 0
    assert flush_battle(rt, bid) == "ok"
    assert ctl.scores(bid)["room_a"] == 5


def test_lost_response_is_resolved_by_read_back_without_double_count(rt, ctl, battle):
    bid, start = battle
    handle(rt, [(start_body(bid, start, 120_000, ROOMS), None)])
    send(rt, ctl, "room_a", 30, "x1")
    ctl.inject("lost_response", api="set_battle_score")
    # The request may still land: no read-back (and no re-send) until it cannot.
    assert flush_battle(rt, bid) == "unresolved"
    real = rt.clock
    rt.clock = lambda: real() + AFTER_ERROR  # the reset ended the request: 1 s, not 6
    assert flush_battle(rt, bid) == "ok"
    rt.clock = real
    assert ctl.scores(bid)["room_a"] == 30
    assert not rt.redis.exists(BattleKeys(bid).inflight)


def test_retryable_faults_are_retried(rt, ctl, battle):
    bid, start = battle
    handle(rt, [(start_body(bid, start, 120_000, ROOMS), None)])
    send(rt, ctl, "room_b", 4, "y1")
    ctl.inject("http502", api="set_battle_score")
    ctl.inject("error100001", api="set_battle_score")
    # Each answer that was certainly not applied sends the battle back to the schedule, due
    # again soon: nothing sleeps on a backoff while holding the battle's lock.
    for _ in range(2):
        assert flush_battle(rt, bid) == "retry_later"
        assert rt.redis.zscore(keys.FLUSH_DUE, bid) <= rt.clock() + 0.2
    assert flush_battle(rt, bid) == "ok"
    assert ctl.scores(bid)["room_b"] == 4


def test_crash_after_claim_is_resumed_by_next_owner(rt, ctl, battle):
    """A flush that died after its call (applied, never committed) is settled by read-back."""
    bid, start = battle
    handle(rt, [(start_body(bid, start, 120_000, ROOMS), None)])
    send(rt, ctl, "room_a", 9, "z1")
    bk = BattleKeys(bid)
    # Simulate the dead owner: claim under a lock that then vanishes, and apply the call.
    rt.redis.set(bk.lock, "dead-owner")
    rt.script("CLAIM")(keys=[bk.pending, bk.inflight, bk.lock], args=["old", 0, "dead-owner"])
    rt.client.set_battle_score(bid, 1, {"room_a": 9})
    rt.redis.delete(bk.lock)  # its heartbeat stopped; the TTL ran out
    assert flush_battle(rt, bid) == "ok"
    assert ctl.scores(bid)["room_a"] == 9


def test_invalid_body_is_dead_lettered_and_replayable(rt, ctl, battle):
    from worker.engine import deadletters
    from worker.engine.ingest import replay

    bid, start = battle
    handle(rt, [(start_body(bid, start, 120_000, ROOMS), None)])
    bad = gift_body("room_a", "owner_a", 3)
    bad["GiftWater"]["Count"] = -1
    c = handle(rt, [(bad, "bad1"), (gift_body("room_b", "owner_b", 2), "good1")])
    assert c["dead_lettered"] == 1 and c["ingested"] == 1
    entries = deadletters.list_entries(rt)
    assert len(entries) == 1 and "Count" in entries[0]["reason"]
    assert entries[0]["body"] == bad and entries[0]["event_id"] == "bad1"
    # Replaying unchanged keeps it (with its reason); nothing is lost.
    replay.replay(rt)
    assert len(deadletters.list_entries(rt)) == 1
    assert counters.read(rt.redis)["dead_lettered"] == 2


def test_gift_outside_battle_window_is_outside_after_hold(rt, ctl, battle, monkeypatch):
    from worker.engine.battles import registry as battles

    bid, start = battle
    handle(rt, [(start_body(bid, start, 120_000, ROOMS), None)])
    c = handle(rt, [(gift_body("room_a", "owner_a", 3, t=start - 100), "before")])
    assert c["held"] == 1
    monkeypatch.setattr(battles, "HOLD_SECONDS", 0)
    real = rt.clock
    rt.clock = lambda: real() + 120
    battles.drain_held(rt, "room_a", sweep=True)
    rt.clock = real
    assert counters.read(rt.redis)["outside"] == 1
    assert rt.redis.llen("bs:{r:room_a}:held") == 0


def test_gift_to_a_guest_is_not_a_battle_score(rt, ctl, battle):
    bid, start = battle
    handle(rt, [(start_body(bid, start, 120_000, ROOMS), None)])
    body = gift_body("room_a", "someone_else", 50)
    assert handle(rt, [(body, "guest")])["not_to_owner"] == 1
    assert flush_battle(rt, bid) == "idle"


def test_after_end_value_is_recorded_unapplied(rt, ctl, battle, monkeypatch):
    from worker.engine.flush import flusher as flush

    monkeypatch.setattr(flush, "START_SKEW", 0.0)  # it started 1 s ago: not clock skew here
    bid, start = battle
    handle(rt, [(start_body(bid, start, 120_000, ROOMS), None)])
    send(rt, ctl, "room_a", 8, "late1")
    ctl.end_battle(bid)
    assert flush_battle(rt, bid) == "refused"
    assert rt.redis.hget(BattleKeys(bid).unapplied, "room_a") == "8"
    handle(rt, [(end_body(bid, start, time.time(), {"room_a": 0, "room_b": 0}, ROOMS), None)])


def test_unknown_room_gets_result_code_1_and_is_unapplied(rt, ctl):
    bid = ctl.create_battle({"room_x": "ox"}, 60_000, start=time.time() - 1)["BattleId"]
    handle(rt, [(start_body(bid, time.time() - 1, 60_000, {"room_x": "ox", "ghost": "og"}),
                 None)])
    handle(rt, [(gift_body("ghost", "og", 6), "g1"), (gift_body("room_x", "ox", 2), "g2")])
    assert flush_battle(rt, bid) == "ok"
    bk = BattleKeys(bid)
    assert rt.redis.hget(bk.unapplied, "ghost") == "6"
    assert rt.redis.hget(bk.applied, "room_x") == "2"
    assert rt.redis.zscore(keys.FLUSH_DUE, bid) is not None


def test_bulk_and_single_ingest_give_identical_ledgers(rt, ctl):
    from tasks.ingest import webhook, webhooks

    start = time.time() - 1
    ledgers = []
    for mode in ("single", "bulk"):
        rooms = {f"{mode}_a": "oa", f"{mode}_b": "ob"}
        bid = ctl.create_battle(rooms, 60_000, start=start)["BattleId"]
        events = [(start_body(bid, start, 60_000, rooms), None)]
        for i in range(30):
            room = f"{mode}_a" if i % 3 else f"{mode}_b"
            events.append((gift_body(room, rooms[room], i + 1, t=start + 1, sender=f"s{i}"),
                           f"ev{i % 25}"))  # five duplicates
        if mode == "single":
            for body, eid in events:
                webhook.run(body, eid)
        else:
            webhooks.run([{"body": b, "event_id": e} for b, e in events])
        raw = rt.redis.hgetall(BattleKeys(bid).ledger)
        ledgers.append({k.split("_", 1)[1]: int(v) for k, v in raw.items()})
    assert ledgers[0] == ledgers[1] and sum(ledgers[0].values()) == sum(range(1, 26))


def test_end_of_an_unknown_battle_is_kept_with_an_expiry(rt):
    body = {"CallbackCommand": "Live.CallbackAfterEndBattle", "BattleId": "never-seen",
            "FromRoomInfo": {"RoomId": "z1", "Owner_Account": "oz", "Score": 5}}
    assert handle(rt, [(body, None)])["lifecycle"] == 1
    meta = BattleKeys("never-seen").meta
    assert rt.redis.hget(meta, "end_scores") == '{"z1": 5}'
    assert 0 < rt.redis.ttl(meta) <= 24 * 3600
