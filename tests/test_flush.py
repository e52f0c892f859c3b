"""Flush against real Redis and the sandbox: late landings, calls that cannot land."""

from __future__ import annotations

import time


from tests.helpers import start_body
from worker.engine.flush import LANDING_WINDOW, flush_battle
from worker.engine.ingest import handle
from worker.engine.state.keys import BattleKeys
from tests.test_pipeline import ROOMS, send



def _calls(ctl, api="set_battle_score") -> int:
    return ctl.state()["calls_by_api"].get(api, 0)


def _later(rt, seconds: float) -> None:
    real = rt.clock
    rt.clock = lambda: real() + seconds


def test_a_takeover_does_not_resend_a_request_that_may_still_land(rt, ctl):
    """SIGKILL mid-request, lock taken over at once: the dead owner's request lands late."""
    info = ctl.create_battle(ROOMS, duration_ms=120_000, start=time.time() - 1)
    bid = info["BattleId"]
    handle(rt, [(start_body(bid, info["StartTime"], 120_000, ROOMS), None)])
    send(rt, ctl, "room_a", 9, "late1")
    bk = BattleKeys(bid)
    # The dead owner claimed the batch and sent it just now; Tencent still holds the request.
    rt.redis.set(bk.lock, "dead-owner")
    rt.script("CLAIM")(keys=[bk.pending, bk.inflight, bk.lock],
                       args=["old", rt.clock(), "dead-owner"])
    rt.script("MARK")(keys=[bk.inflight, bk.lock],
                      args=["old", "dead-owner", "state", "sending", "sent_at", rt.clock()])
    rt.redis.delete(bk.lock)
    before = _calls(ctl) + _calls(ctl, "get_battle_info")
    assert flush_battle(rt, bid) == "unsettled"  # no lock, no slot, no call
    assert _calls(ctl) + _calls(ctl, "get_battle_info") == before  # no read, no re-send
    rt.client.set_battle_score(bid, 1, {"room_a": 9})  # ...and now it lands
    _later(rt, LANDING_WINDOW)
    assert flush_battle(rt, bid) == "ok"
    assert ctl.scores(bid)["room_a"] == 9
    assert not rt.redis.exists(bk.inflight)


def test_a_batch_in_flight_under_a_live_lock_is_busy_not_unsettled(rt, ctl):
    """An end-game flush that meets another flush's request in flight comes back in a moment,
    not when that request's landing window closes (which may be past the battle's end)."""
    from worker.engine.state import keys
    from worker.engine.flush import RETRY_SOON

    info = ctl.create_battle(ROOMS, duration_ms=120_000, start=time.time() - 1)
    bid = info["BattleId"]
    handle(rt, [(start_body(bid, info["StartTime"], 120_000, ROOMS), None)])
    send(rt, ctl, "room_a", 9, "inflight1")
    bk = BattleKeys(bid)
    rt.redis.set(bk.lock, "live-owner")  # a flush holds it and is sending its batch
    rt.script("CLAIM")(keys=[bk.pending, bk.inflight, bk.lock],
                       args=["other", rt.clock(), "live-owner"])
    rt.script("MARK")(keys=[bk.inflight, bk.lock],
                      args=["other", "live-owner", "state", "sending", "sent_at", rt.clock()])
    send(rt, ctl, "room_a", 5, "inflight2")  # value that came meanwhile
    assert flush_battle(rt, bid) == "busy"
    assert rt.redis.zscore(keys.FLUSH_DUE, bid) <= rt.clock() + RETRY_SOON


def test_no_call_for_a_battle_known_to_have_ended(rt, ctl):
    info = ctl.create_battle(ROOMS, duration_ms=20_000, start=time.time() - 1)
    bid = info["BattleId"]
    handle(rt, [(start_body(bid, info["StartTime"], 20_000, ROOMS), None)])
    send(rt, ctl, "room_b", 6, "end1")
    _later(rt, 30)  # past the end by our clock
    before = _calls(ctl)
    assert flush_battle(rt, bid) == "after_end"
    assert _calls(ctl) == before
    assert rt.redis.hget(BattleKeys(bid).unapplied, "room_b") == "6"


def test_one_100006_per_battle(rt, ctl):
    """A battle ended early without our knowing: the first refusal is the last call (past
    the first seconds, where a 100006 may be our clock running ahead: START_SKEW)."""
    info = ctl.create_battle(ROOMS, duration_ms=120_000, start=time.time() - 10)
    bid = info["BattleId"]
    handle(rt, [(start_body(bid, info["StartTime"], 120_000, ROOMS), None)])
    ctl.end_battle(bid)
    send(rt, ctl, "room_a", 3, "r1")
    assert flush_battle(rt, bid) == "refused"
    send(rt, ctl, "room_a", 4, "r2")
    before = _calls(ctl)
    assert flush_battle(rt, bid) == "after_end"
    assert _calls(ctl) == before
    assert rt.redis.hget(BattleKeys(bid).unapplied, "room_a") == "7"
