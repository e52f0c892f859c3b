"""Flush against real Redis and the sandbox: late landings, calls that cannot land."""

from __future__ import annotations

import time

from tests.helpers import start_body, wait_for
from tests.integration.test_pipeline import ROOMS, send
from worker.engine.flush.flusher import LANDING_WINDOW, flush_battle
from worker.engine.ingest.gifts import handle
from worker.engine.state import keys
from worker.engine.state.keys import BattleKeys


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
    from worker.engine.flush.flusher import RETRY_SOON
    from worker.engine.state import keys

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


def test_value_that_lands_before_the_start_waits_for_it_without_a_call(rt, ctl):
    """A webhook may come up to 0.5 s before Tencent counts its gift, so a gift counted just
    after the start brings value just before it. A call then was refused 100006 and sent again
    (a battle of the finale got two 100006: that one and one after its end)."""
    start = float(int(time.time()) + 2)  # Tencent's StartTime is a whole second
    info = ctl.create_battle(ROOMS, duration_ms=20_000, start=start)
    bid = info["BattleId"]
    handle(rt, [(start_body(bid, info["StartTime"], 20_000, ROOMS), None)])
    send(rt, ctl, "room_a", 5, "early1", t=start)  # its Time is the start's second
    if time.time() < start:
        assert flush_battle(rt, bid) == "early"
        assert _calls(ctl) == 0
        assert rt.redis.zscore(keys.FLUSH_DUE, bid) >= start  # due once surely started
    wait_for(lambda: flush_battle(rt, bid) == "ok", timeout=4, interval=0.1,
             what="the flush once the battle has started")
    assert _calls(ctl) == 1 and ctl.scores(bid)["room_a"] == 5


# Unit tests of the flush's pieces: no Redis, no sandbox.


def test_totals_clamp_at_zero_and_moved_is_what_the_ledger_gains():
    from worker.engine.flush.overwrite import moved, totals

    target = totals({"a": 5, "b": 2}, {"a": 3, "b": -9}, {"a", "b", "c"})
    assert target == {"a": 8, "b": 0, "c": 0}
    assert moved(target, {"a": 5, "b": 2}, ["a", "b"]) == {"a": 3, "b": -2}


def test_a_read_back_verdict_per_room():
    from worker.engine.flush.settle import verdict

    assert verdict(None, 5, 8) == "absent"
    assert verdict(8, 5, 8) == "applied"
    assert verdict(5, 5, 8) == "unsent"
    assert verdict(7, 5, 8) == "other"
    assert verdict(0, 0, 0) == "applied"  # a delta of 0 (or clamped) reads as applied


def test_an_inflight_record_says_when_it_can_be_judged():
    from worker.engine.flush.inflight import AFTER_ERROR, NEAR_END_AFTER, Inflight, settle_of
    from worker.engine.flush.near_end import NEAR_END_READ

    assert settle_of("12.5", "1", None) == 12.5
    assert settle_of(None, "1", None) == 1 + LANDING_WINDOW
    assert settle_of(None, None, "2") == 2 + LANDING_WINDOW  # a record of an older version
    inf = Inflight.parse(["id", "f1", "state", "ambiguous", "r:a", "3", "sent_at", "10"])
    assert (inf.id, inf.state, inf.scores, inf.sent_at) == ("f1", "ambiguous", {"a": 3}, 10.0)
    assert inf.settle_at == 10 + LANDING_WINDOW
    inf.sending(20.0, near=False)
    assert (inf.sent_at, inf.settle_at) == (20.0, 20 + LANDING_WINDOW)
    inf.sending(20.0, near=True)
    assert inf.settle_at == 20 + NEAR_END_READ + 1.0
    inf.unanswered(30.0, near=False)
    assert inf.settle_at == 30 + AFTER_ERROR
    inf.unanswered(30.0, near=True)
    assert inf.settle_at == 30 + NEAR_END_AFTER


class _Lock:
    def __init__(self, lost: bool = False) -> None:
        self.lost = lost

    def fresh(self) -> bool:
        return not self.lost


class _Client:
    def __init__(self, error=None) -> None:
        self.error, self.calls = error, []

    def set_battle_score(self, battle_id, op_type, scores, **kw):
        from worker.engine.tencent.models import SetBattleScoreResult

        self.calls.append((battle_id, op_type, scores, kw))
        if self.error:
            raise self.error
        return SetBattleScoreResult.model_validate(
            {"Result": [{"RoomId": "b", "ResultCode": 1}], "RequestId": "r1"})


class _Runtime:
    def __init__(self, client: _Client) -> None:
        self.client = client


def test_the_one_optype_2_writer():
    """One attempt, OpType 2, on the slot the caller holds; a failure is logged and None, an
    ambiguous one also calls `on_ambiguous`; a lost lock makes no call."""
    import logging

    import pytest

    from worker.engine.flush.inflight import LockLost
    from worker.engine.flush.overwrite import overwrite
    from worker.engine.tencent.client import ADMITTED
    from worker.engine.tencent.errors import Outcome, TencentError
    from worker.engine.tencent.models import OpType

    log = logging.getLogger("test")
    client = _Client()
    res = overwrite(_Runtime(client), "b1", None, _Lock(), {"a": 3, "b": 4}, "test", log)
    assert res is not None and res.split(["a", "b"]) == (["a"], ["b"])
    ((bid, op, scores, kw),) = client.calls
    assert (bid, op, scores) == ("b1", OpType.OVERWRITE, {"a": 3, "b": 4})
    fence = kw.pop("fence")
    assert kw == {"max_wait": ADMITTED, "max_attempts": 1, "read_timeout": None}
    assert fence() is True  # the lock's lease, asked as the request leaves
    seen = []
    for outcome in (Outcome.ambiguous, Outcome.final):
        failing = _Client(TencentError("set_battle_score", outcome, "boom"))
        assert overwrite(_Runtime(failing), "b1", None, _Lock(), {"a": 3}, "test", log,
                         max_wait=0.0, on_ambiguous=lambda: seen.append(1)) is None
        assert len(seen) == 1 and failing.calls[0][3]["max_wait"] == 0.0
    untouched = _Client()
    with pytest.raises(LockLost):
        overwrite(_Runtime(untouched), "b1", None, _Lock(lost=True), {"a": 3}, "test", log)
    assert not untouched.calls
