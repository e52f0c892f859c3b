"""Battles known only from a create webhook that never start are given up, not polled forever.

The tick dispatches `scorer.reconcile` for due battles of bs:unresolved; each pass asks
get_battle_info. A declined PK invitation never starts: after a bound
(worker/engine/battles/unstarted.py, GIVE_UP_*) the battle is given up: out of bs:unresolved,
status given_up, its rooms no longer route gifts to it, every key expiring, and no
get_battle_info call for it ever again.
"""

from __future__ import annotations

import itertools
import logging
import time

import pytest

from tests.helpers import gift_body, start_body
from worker.engine import events
from worker.engine.battles import registry as battles
from worker.engine.ingest.gifts import handle
from worker.engine.reconcile.reconciler import reconcile_battle
from worker.engine.state import keys
from worker.engine.state.keys import BattleKeys, RoomKeys
from worker.engine.tencent.models import BattleInfo, BattleRoom

ROOMS = {"room_a": "owner_a", "room_b": "owner_b"}
DURATION_MS = 60_000
#: Passes a test runs at most: today's code polls forever, and the test must not.
MAX_PASSES = 80


def create_body(battle_id: str, rooms=ROOMS, duration_ms: int = DURATION_MS) -> dict:
    """A Live.CallbackAfterCreateBattle body: rooms and duration, no start, no owners."""
    first, *rest = rooms
    return {"CallbackCommand": events.CREATE, "BattleId": battle_id, "FromRoomId": first,
            "ToRoomIdList": rest, "Duration": duration_ms}


class FakeClock:
    """rt.clock under the test's control (starts at the real time)."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(rt):
    c = FakeClock()
    real = rt.clock
    rt.clock = c
    yield c
    rt.clock = real


def _info_calls(ctl, battle_id: str) -> int:
    calls = ctl.http.get("/sandbox/calls").json()["calls"]
    return sum(1 for c in calls if c["api"] == "get_battle_info"
               and (c["body"] or {}).get("BattleId") == battle_id)


def _tick(rt) -> list[str]:
    """One tick; returns the battles it sent to scorer.reconcile."""
    from tasks.control import run_tick

    sent: list[str] = []
    run_tick(rt, dispatch=lambda task, ids: sent.extend(ids) if task.name == "scorer.reconcile"
             else None)
    return sent


def _poll_until_resolved_or_given_up(rt, clock, battle_id: str) -> list[float]:
    """Run the tick and the passes it dispatches, jumping the clock to each next try, until
    the battle leaves bs:unresolved; returns the times of the passes."""
    passes: list[float] = []
    for _ in range(MAX_PASSES):
        due = rt.redis.zscore(keys.UNRESOLVED, battle_id)
        if due is None:
            return passes
        clock.t = max(clock.t, due)
        assert battle_id in _tick(rt)
        passes.append(clock.t)
        reconcile_battle(rt, battle_id)
    raise AssertionError(f"{battle_id} still unresolved after {MAX_PASSES} passes "
                         f"({clock.t - passes[0]:.0f} s of polling)")


def _assert_given_up(rt, clock, battle_id: str) -> None:
    bk = BattleKeys(battle_id)
    assert rt.redis.zscore(keys.UNRESOLVED, battle_id) is None
    meta = rt.redis.hgetall(bk.meta)
    assert meta["status"] == "given_up"
    assert meta["give_up_reason"]
    assert abs(float(meta["given_up_at"]) - clock.t) < 1
    for room in ROOMS:  # gifts of its rooms are no longer routed (or held) for it
        assert rt.redis.hget(RoomKeys(room).battles, battle_id) is None
    for key in bk.all():
        if rt.redis.exists(key):
            at = rt.redis.pexpiretime(key) / 1000.0
            assert at > 0, f"{key} never expires"
            assert at <= clock.t + battles.KEEP_AFTER_END + 1, f"{key} expires too late"
    for zkey in (keys.ACTIVE, keys.RECONCILE_DUE, keys.FLUSH_DUE):
        assert rt.redis.zscore(zkey, battle_id) is None
    assert int(rt.redis.hget(keys.STATS, "given_up") or 0) == 1


def test_a_battle_that_never_starts_is_given_up(rt, ctl, clock, caplog):
    """A created battle Tencent never starts (get_battle_info: battle not found)."""
    bid = "battle_declined_1"
    handle(rt, [(create_body(bid), None)])
    assert rt.redis.hget(BattleKeys(bid).meta, "status") == "created"
    assert rt.redis.zscore(keys.UNRESOLVED, bid) is not None
    t0 = clock.t
    with caplog.at_level(logging.WARNING, logger="scorer.reconcile"):
        passes = _poll_until_resolved_or_given_up(rt, clock, bid)
    _assert_given_up(rt, clock, bid)
    # Given up after its planned duration plus a grace, not before; within a few minutes.
    assert 60 + 60 <= clock.t - t0 <= 60 + 60 + 60
    # Never faster than today's 5 s; backing off stays bounded.
    gaps = [b - a for a, b in itertools.pairwise(passes)]
    assert gaps and all(5 - 1e-6 <= g <= 60 + 1e-6 for g in gaps), gaps
    calls = _info_calls(ctl, bid)
    assert calls == len(passes) <= 15
    given_up = [r for r in caplog.records if "given up" in r.getMessage()]
    assert len(given_up) == 1 and bid in given_up[0].getMessage()
    assert given_up[0].levelno == logging.WARNING

    # Afterwards: no more polling, whatever the time.
    for dt in (5, 60, 3600):
        clock.t += dt
        assert bid not in _tick(rt)
    assert reconcile_battle(rt, bid) == "given_up"  # a stray pass makes no call either
    assert _info_calls(ctl, bid) == calls
    assert rt.redis.hget(BattleKeys(bid).meta, "status") == "given_up"


def test_an_answer_that_says_not_started_is_given_up_too(rt, ctl, clock, monkeypatch):
    """get_battle_info answers, but the battle has no StartTime (never started)."""
    bid = "battle_declined_2"
    asked = []

    def info(battle_id, **_):
        asked.append(clock.t)
        return BattleInfo(BattleId=battle_id, Duration=DURATION_MS, StartTime=0, Status=0,
                          FromRoomInfo=BattleRoom(RoomId="room_a", Owner_Account="owner_a"),
                          ToRoomList=[BattleRoom(RoomId="room_b", Owner_Account="owner_b")])

    monkeypatch.setattr(rt.client, "get_battle_info", info)
    handle(rt, [(create_body(bid), None)])
    t0 = clock.t
    passes = _poll_until_resolved_or_given_up(rt, clock, bid)
    _assert_given_up(rt, clock, bid)
    assert 120 <= clock.t - t0 <= 180
    assert len(asked) == len(passes) <= 15
    clock.t += 3600
    assert bid not in _tick(rt)
    assert len(asked) == len(passes)


def test_a_created_battle_that_starts_later_registers_as_before(rt, ctl, clock):
    """Unknown to Tencent for a while (the start webhook lost), then get_battle_info has it."""
    bid = "battle_late_1"
    handle(rt, [(create_body(bid), None)])
    for _ in range(3):  # a few passes while Tencent does not know it
        clock.t = max(clock.t, rt.redis.zscore(keys.UNRESOLVED, bid))
        assert bid in _tick(rt)
        assert reconcile_battle(rt, bid) == "unresolved"
    start = time.time() - 1
    ctl.create_battle(ROOMS, DURATION_MS, start=start, battle_id=bid)
    clock.t = max(clock.t, rt.redis.zscore(keys.UNRESOLVED, bid))
    assert bid in _tick(rt)
    assert reconcile_battle(rt, bid) == "resolved"
    meta = rt.redis.hgetall(BattleKeys(bid).meta)
    assert meta["status"] == "running"
    assert float(meta["start"]) == int(start)
    assert rt.redis.zscore(keys.UNRESOLVED, bid) is None
    assert rt.redis.zscore(keys.ACTIVE, bid) is not None
    assert rt.redis.zscore(keys.RECONCILE_DUE, bid) is not None
    for room, owner in ROOMS.items():
        assert rt.redis.hget(RoomKeys(room).battles, bid).endswith(owner)
    assert not rt.redis.hget(keys.STATS, "given_up")


def test_a_very_late_start_webhook_revives_a_given_up_battle(rt, ctl, clock):
    bid = "battle_declined_3"
    handle(rt, [(create_body(bid), None)])
    _poll_until_resolved_or_given_up(rt, clock, bid)
    _assert_given_up(rt, clock, bid)
    start = clock.t - 1
    handle(rt, [(start_body(bid, start, DURATION_MS, ROOMS), None)])
    bk = BattleKeys(bid)
    meta = rt.redis.hgetall(bk.meta)
    assert meta["status"] == "running"
    assert rt.redis.zscore(keys.UNRESOLVED, bid) is None
    assert rt.redis.zscore(keys.ACTIVE, bid) is not None
    for room, owner in ROOMS.items():
        assert rt.redis.hget(RoomKeys(room).battles, bid).endswith(owner)
    # Its meta lives until its end (plus KEEP_AFTER_END) again, and its gifts are scored.
    assert rt.redis.pexpiretime(bk.meta) / 1000.0 >= float(meta["end"]) + battles.KEEP_AFTER_END
    counts = handle(rt, [(gift_body("room_a", "owner_a", 7, t=clock.t), "late-gift-1")])
    assert counts["ingested"] == 1


def test_a_redelivered_create_webhook_costs_no_more_calls(rt, ctl, clock):
    """The same create webhook again after the give-up: ignored (battles.register), no call."""
    bid = "battle_declined_4"
    handle(rt, [(create_body(bid), None)])
    _poll_until_resolved_or_given_up(rt, clock, bid)
    calls = _info_calls(ctl, bid)
    clock.t += 30
    handle(rt, [(create_body(bid), None)])
    assert rt.redis.hget(BattleKeys(bid).meta, "status") == "given_up"
    assert rt.redis.zscore(keys.UNRESOLVED, bid) is None
    assert _info_calls(ctl, bid) == calls
    for room in ROOMS:
        assert rt.redis.hget(RoomKeys(room).battles, bid) is None


def test_a_running_battle_is_never_given_up(rt, ctl, clock):
    """give_up loses to a register() that made the battle running (a start webhook raced)."""
    from worker.engine.battles.unstarted import give_up

    bid = "battle_running_1"
    start = clock.t - 1
    handle(rt, [(start_body(bid, start, DURATION_MS, ROOMS), None)])
    assert give_up(rt, bid, 0.0, "test") == "resolved"
    assert rt.redis.hget(BattleKeys(bid).meta, "status") == "running"
    for room, owner in ROOMS.items():
        assert rt.redis.hget(RoomKeys(room).battles, bid).endswith(owner)
    assert rt.redis.zscore(keys.RECONCILE_DUE, bid) is not None
    assert not rt.redis.hget(keys.STATS, "given_up")
