"""The end of a battle (worker/engine/battles/ending.py): the end webhook's scores and early end,
and finalize, which closes a battle only once nothing is pending."""

from __future__ import annotations

import json

from scorer_local.bodies import end_body
from worker.engine import events
from worker.engine.battles import registry as battles
from worker.engine.battles.ending import finalize, record_end
from worker.engine.battles.roomindex import parse_index_value
from worker.engine.state import keys
from worker.engine.state.keys import BattleKeys, RoomKeys

OWNERS = {"room_a": "owner_a", "room_b": "owner_b"}


def _started(rt, battle_id: str, start: float, duration_ms: int = 300_000) -> None:
    battles.register(rt, battle_id, start, duration_ms, dict(OWNERS), "start_webhook")


def test_an_early_end_closes_the_window_in_the_room_index_and_the_schedule(rt):
    start = rt.clock() - 60
    _started(rt, "b1", start)
    end = start + 30
    record_end(rt, events.parse(end_body("b1", start, end, {"room_a": 5, "room_b": 7}, OWNERS)))
    meta = rt.redis.hgetall(BattleKeys("b1").meta)
    assert json.loads(meta["end_scores"]) == {"room_a": 5, "room_b": 7}
    assert float(meta["end"]) == int(end)
    for room, owner in OWNERS.items():
        value = rt.redis.hget(RoomKeys(room).battles, "b1")
        assert parse_index_value(value) == (start, float(int(end)), owner)
    assert rt.redis.zscore(keys.ACTIVE, "b1") == int(end)


def test_an_end_first_heard_of_registers_its_battle(rt):
    start = rt.clock() - 400
    record_end(rt, events.parse(end_body("b2", start, start + 300, {"room_a": 1, "room_b": 2},
                                         OWNERS)))
    battle = battles.Battle.load(rt, "b2")
    assert battle is not None and battle.start == int(start) and battle.rooms == OWNERS


def test_finalize_waits_for_pending_value_then_closes_and_keeps_a_mismatch(rt):
    start = rt.clock() - 400
    _started(rt, "b3", start)
    bk = BattleKeys("b3")
    rt.redis.hset(bk.pending, "room_a", 3)
    assert finalize(rt, ["b3"]) == 0  # a flush goes first
    assert rt.redis.zscore(keys.FLUSH_DUE, "b3") is not None
    rt.redis.delete(bk.pending)
    rt.redis.hset(bk.applied, mapping={"room_a": 5, "room_b": 6})
    rt.redis.hset(bk.meta, "end_scores", json.dumps({"room_a": 5, "room_b": 7}))
    assert finalize(rt, ["b3"]) == 1
    meta = rt.redis.hgetall(bk.meta)
    assert meta["status"] == "finished"
    assert json.loads(meta["end_mismatch"]) == {"room_b": [6, 7]}
    assert json.loads(meta["final_applied"]) == {"room_a": 5, "room_b": 6}
    for zkey in (keys.ACTIVE, keys.FLUSH_DUE, keys.RECONCILE_DUE, keys.AUDIT_DUE):
        assert rt.redis.zscore(zkey, "b3") is None
    assert 0 < rt.redis.ttl(bk.meta) <= battles.KEEP_AFTER_END


def test_a_battle_gone_on_tencents_side_is_given_up_past_the_bound_and_closed(rt, ctl):
    """It ended 11 minutes ago with a batch left in flight by a sender that died and value
    pending behind it; Tencent no longer knows it (get_battle_info: 100002, for ever). One tick
    and the flush it sends give both up (unapplied: `unsettled`, `after_end`) and close it."""
    from worker.engine.battles.ending import GIVE_UP_AFTER_END
    from worker.engine.flush.flusher import flush_battle
    from worker.engine.state.counters import read
    from worker.engine.tick import dispatch

    start = rt.clock() - GIVE_UP_AFTER_END - 120
    _started(rt, "gone", start, duration_ms=60_000)
    bk = BattleKeys("gone")
    rt.redis.hset(bk.applied, "room_a", 4)
    rt.redis.hset(bk.pending, mapping={"room_a": 5, "room_b": 2})
    rt.redis.set(bk.lock, "dead")
    rt.script("CLAIM")(keys=[bk.pending, bk.inflight, bk.lock], args=["dead", start + 59, "dead"])
    rt.redis.delete(bk.lock)
    rt.redis.hset(bk.pending, "room_b", 1)
    rt.redis.zadd(keys.FLUSH_DUE, {"gone": start + 59})
    outcomes: dict[str, str] = {}

    def send(kind, ids):
        if kind == "flush":
            outcomes.update({bid: flush_battle(rt, bid) for bid in ids})

    out = dispatch.run_tick(rt, send)
    assert outcomes == {"gone": "given_up"} and out["finalized"] == 1
    calls = ctl.http.get("/sandbox/calls").json()["calls"]
    assert [c["api"] for c in calls] == ["get_battle_info"]  # one read-back, no write
    meta = rt.redis.hgetall(bk.meta)
    assert meta["status"] == "finished" and json.loads(meta["final_applied"]) == {"room_a": 4}
    assert rt.redis.hgetall(bk.unapplied) == {"room_a": "5", "room_b": "3"}
    records = [json.loads(r)["outcome"] for r in rt.redis.lrange(bk.flushes, 0, -1)]
    assert records == ["after_end", "unsettled"]
    stats = read(rt.redis)
    assert stats["unsettled"] == 1 and stats["unapplied"] == 8
    for zkey in (keys.ACTIVE, keys.FLUSH_DUE, keys.RECONCILE_DUE, keys.AUDIT_DUE):
        assert rt.redis.zscore(zkey, "gone") is None
    for key in (bk.meta, bk.applied, bk.unapplied, bk.flushes):
        assert 0 < rt.redis.ttl(key) <= battles.KEEP_AFTER_END
