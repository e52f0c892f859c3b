"""The ledger heals itself: late landings, a Redis that lost its last second, refused writes,
poison values."""

from __future__ import annotations

import time

import pytest

from tests.helpers import gift_body, start_body, wait_for
from tests.integration.test_pipeline import ROOMS, send
from worker.engine.flush import audit
from worker.engine.flush.flusher import AFTER_ERROR, flush_battle
from worker.engine.ingest.gifts import handle
from worker.engine.state import keys
from worker.engine.state.keys import BattleKeys
from worker.engine.tencent.errors import Outcome, classify_code, classify_status


def _started(rt, ctl, duration_ms: int = 120_000) -> str:
    info = ctl.create_battle(ROOMS, duration_ms=duration_ms, start=time.time() - 1)
    bid = info["BattleId"]
    handle(rt, [(start_body(bid, info["StartTime"], duration_ms, ROOMS), None)])
    return bid


def _later(rt, seconds: float) -> None:
    real = rt.clock
    rt.clock = lambda: real() + seconds


def _snapshot(rt, bid: str) -> dict[str, bytes]:
    """The battle's keys as they are (DUMP), for `_lose_last_second`."""
    return {k: rt.redis.dump(k) for k in BattleKeys(bid).all() if rt.redis.exists(k)}


def _lose_last_second(rt, bid: str, before: dict[str, bytes]) -> None:
    """Redis comes back (another run_id) with the battle's keys as `before` had them."""
    for k in BattleKeys(bid).all():
        rt.redis.delete(k)
        if k in before:
            rt.redis.restore(k, 0, before[k])
    rt.redis.set(keys.REDIS_RUN, "a-run-before-the-crash")


def _call_log(ctl) -> list[dict]:
    """The sandbox's call log (a call is logged once it is answered or has landed)."""
    return ctl.http.get("/sandbox/calls").json()["calls"]


def _calls(ctl, api: str) -> int:
    return ctl.state()["calls_by_api"].get(api, 0)


def test_a_write_that_lands_after_its_client_gave_up_is_never_counted_twice(rt, ctl):
    """Tencent holds the request past the client's 5 s timeout and applies it 8 s after it was
    sent. On main, the read-back at 6 s saw "not applied", the batch went again with OpType 1,
    and the late write made it count twice for good."""
    bid = _started(rt, ctl)
    send(rt, ctl, "room_a", 7, "late-a")
    ctl.inject("late_landing", api="set_battle_score")
    sent = time.monotonic()
    assert flush_battle(rt, bid) == "unresolved"  # timed out: judged after AFTER_ERROR
    _later(rt, AFTER_ERROR)
    assert flush_battle(rt, bid) == "ok"  # settled with OpType 2 of the absolute total
    assert ctl.scores(bid)["room_a"] == 7
    # The audit after the ambiguity is due by then, and the late write lands at 8 s.
    due = rt.redis.zscore(keys.AUDIT_DUE, bid)
    assert due is not None and due <= rt.clock() + audit.AFTER_AMBIGUITY
    wait_for(lambda: ctl.scores(bid)["room_a"] == 14, timeout=12, what="the late landing")
    assert time.monotonic() - sent >= 7.5
    assert audit.audit_battle(rt, bid) == "corrected"
    assert ctl.scores(bid)["room_a"] == 7
    assert int(rt.redis.hget(keys.STATS, "audit_corrections")) == 1
    assert audit.audit_battle(rt, bid) == "ok"  # healed: no more writes


def test_a_redis_that_lost_its_last_second_is_audited_and_healed(rt, ctl):
    """A claim, send and commit inside the lost second: the batch is pending again with no
    in-flight record, so it is sent again. The restart is seen by the tick, every active battle
    is audited, and the double count is overwritten with the ledger."""
    bid = _started(rt, ctl)
    send(rt, ctl, "room_a", 5, "g1")
    assert flush_battle(rt, bid) == "ok"
    send(rt, ctl, "room_a", 4, "g2")
    before = _snapshot(rt, bid)
    assert flush_battle(rt, bid) == "ok"  # Tencent: 9 ...
    _lose_last_second(rt, bid, before)  # ... then Redis comes back without it: 4 pending again
    assert audit.check_restart(rt)
    assert rt.redis.zscore(keys.AUDIT_DUE, bid) <= rt.clock()
    assert flush_battle(rt, bid) == "ok"  # sent again: Tencent 13, ledger 9
    assert ctl.scores(bid)["room_a"] == 13
    assert audit.audit_battle(rt, bid) == "corrected"
    assert ctl.scores(bid)["room_a"] == 9
    assert not audit.check_restart(rt)  # the same server: nothing to do


def test_a_late_write_meeting_a_redis_loss_is_audited_after_it_lands(rt, ctl):
    """Issue 27's 202 coins: Tencent holds a write 8 s; Redis then loses its last second, with
    the record that the write may still land. The batch is pending again, sent again, and the
    audit of the restart (now) sees Tencent equal to the ledger; then the held write lands, a
    double count. Every battle active at a restart is audited again once a write sent before
    the crash can have landed (AFTER_AMBIGUITY), and one ending before that gets the last
    absolute write just before its end. On main the next audit came 30 s later, or 3 s before
    the end, and none after a landing in between."""
    bid = _started(rt, ctl)
    send(rt, ctl, "room_a", 7, "w1")
    assert flush_battle(rt, bid) == "ok"
    send(rt, ctl, "room_a", 5, "w2")
    before = _snapshot(rt, bid)
    ctl.inject("late_landing", api="set_battle_score")
    sent = time.monotonic()
    assert flush_battle(rt, bid) == "unresolved"  # timed out: the write may still land
    _lose_last_second(rt, bid, before)  # and its record with it: 5 pending again
    restarted = rt.clock()
    assert audit.check_restart(rt)
    assert flush_battle(rt, bid) == "ok"  # sent again: Tencent 12 = the ledger
    assert audit.audit_battle(rt, bid) == "ok"
    due = rt.redis.zscore(keys.AUDIT_DUE, bid)
    assert due is not None and due <= restarted + audit.AFTER_AMBIGUITY + 0.5, \
        (due - restarted)  # audited again once the write sent before the crash has landed
    wait_for(lambda: ctl.scores(bid)["room_a"] == 17, timeout=12, what="the late landing")
    assert time.monotonic() - sent >= 7.5
    _later(rt, due - rt.clock())
    assert audit.audit_battle(rt, bid) == "corrected"
    assert ctl.scores(bid)["room_a"] == 12


def test_a_restart_gives_a_battle_ending_within_the_landing_window_its_last_write(rt, ctl):
    bid = _started(rt, ctl, duration_ms=8_000)
    send(rt, ctl, "room_a", 3, "e1")
    assert flush_battle(rt, bid) == "ok"
    rt.redis.set(keys.REDIS_RUN, "a-run-before-the-crash")
    assert audit.check_restart(rt)
    end = float(rt.redis.hget(BattleKeys(bid).meta, "end"))
    assert rt.redis.zscore(keys.FINAL_DUE, bid) == pytest.approx(end - audit.FINAL_LEAD)


def test_an_audit_takes_no_lock_while_a_batch_is_in_flight(rt, ctl):
    bid = _started(rt, ctl)
    bk = BattleKeys(bid)
    send(rt, ctl, "room_a", 3, "x1")
    rt.redis.hset(bk.inflight, mapping={"id": "f", "state": "sending", "r:room_a": 3,
                                        "sent_at": rt.clock()})
    reads = _calls(ctl, "get_battle_info")
    rt.redis.hset(bk.applied, "room_a", 0)
    assert audit.audit_battle(rt, bid) == "inflight"
    assert _calls(ctl, "get_battle_info") == reads


def test_a_foreign_write_is_overwritten_and_recorded(rt, ctl):
    bid = _started(rt, ctl)
    send(rt, ctl, "room_b", 11, "f1")
    assert flush_battle(rt, bid) == "ok"
    rt.client.set_battle_score(bid, 1, {"room_b": 100})  # not ours
    assert audit.audit_battle(rt, bid) == "corrected"
    assert ctl.scores(bid)["room_b"] == 11
    history = rt.redis.lrange(BattleKeys(bid).flushes, 0, 0)[0]
    assert '"outcome": "audit"' in history and '"room_b": 111' in history


@pytest.mark.parametrize("status", [429, 408])
def test_a_proxys_429_or_408_is_retried_not_final(rt, ctl, status):
    """On main any non-5xx status moved the batch to `unapplied` for good."""
    bid = _started(rt, ctl)
    send(rt, ctl, "room_a", 6, f"p{status}")
    ctl.inject(f"http{status}", api="set_battle_score")
    assert flush_battle(rt, bid) == "retry_later"
    assert rt.redis.hgetall(BattleKeys(bid).unapplied) == {}
    assert flush_battle(rt, bid) == "ok"
    assert ctl.scores(bid)["room_a"] == 6


def test_configuration_refusals_are_retried_slowly_not_dropped():
    assert classify_status(429) is Outcome.retryable
    assert classify_status(408) is Outcome.retryable
    assert classify_status(403) is Outcome.refused
    assert classify_code(70009) is Outcome.refused
    assert classify_code(100006) is Outcome.final


def test_poison_values_are_refused_at_ingest_and_never_block_a_battle(rt, ctl):
    bid = _started(rt, ctl)
    bk = BattleKeys(bid)
    huge = gift_body("room_a", "owner_a", 10**12)
    huge["GiftWater"]["Count"] = 1_000_000  # Coins x Count = 1e18
    counts = handle(rt, [(huge, "poison-1")])
    settings_mode = rt.settings.gift_value.value
    if settings_mode == "coins_x_count":
        assert counts["dead_lettered"] == 1
    # A room whose ledger is near 2**53: the next gift is refused before it is marked seen.
    rt.redis.hset(bk.ledger, "room_a", 2**53 - 5)
    counts = handle(rt, [(gift_body("room_a", "owner_a", 10), "poison-2")])
    assert counts["dead_lettered"] == 1 and counts["ingested"] == 0
    assert not rt.redis.sismember(bk.seen, "poison-2")
    # A batch past the bound (written by an older version, say) is refused, not retried.
    rt.redis.hset(bk.pending, "room_a", 2**53 + 2)
    rt.redis.zadd(keys.FLUSH_DUE, {bid: rt.clock()})
    assert flush_battle(rt, bid) == "refused"
    assert not rt.redis.exists(bk.inflight) and not rt.redis.exists(bk.pending)
    assert int(rt.redis.hget(bk.unapplied, "room_a")) == 2**53 + 2


def test_an_answer_without_a_field_is_a_classified_error(rt, ctl, monkeypatch):
    from worker.engine.tencent.errors import TencentError

    bid = _started(rt, ctl)
    real = rt.client.call
    monkeypatch.setattr(rt.client, "call", lambda api, body, **kw: {
        **real(api, body, **kw), "Response": {"Status": 1}})
    with pytest.raises(TencentError) as err:
        rt.client.get_battle_info(bid)
    assert err.value.outcome is Outcome.ambiguous


def test_near_the_end_a_held_request_is_settled_before_the_end_not_after(rt, ctl):
    """A request Tencent holds past the end is refused when it lands. Near its end a battle's
    request waits 1.5 s for its answer (not 5 s) and is settled with OpType 2 at once, so its
    value is in before the end (on main: waited 5 + 1 s, read after the end, value lost)."""
    from worker.engine.flush.endgame import NEAR_END_READ

    bid = _started(rt, ctl, duration_ms=7_000)
    end = time.time() + 6.0
    send(rt, ctl, "room_a", 12, "near-1")
    ctl.inject("late_landing", api="set_battle_score")
    t0 = time.monotonic()
    assert flush_battle(rt, bid) == "unresolved"
    assert time.monotonic() - t0 < NEAR_END_READ + 1.0
    wait_for(lambda: flush_battle(rt, bid) == "ok", timeout=3, what="the OpType 2 settle")
    assert time.time() < end - 2 and ctl.scores(bid)["room_a"] == 12
    assert not [c for c in _call_log(ctl) if c.get("t_landed")]  # still held by Tencent
    landed = wait_for(lambda: [c for c in _call_log(ctl) if c.get("t_landed")], timeout=12,
                      what="the held request to land")
    assert landed[0]["error_code"] == 100006  # after the end: refused
    assert ctl.scores(bid)["room_a"] == 12


def test_a_write_held_in_the_last_two_seconds_is_still_settled_before_the_end(rt, ctl):
    """bench.chaos: a battle's write 1.4 s before its end was held by Tencent (it landed 8 s
    later, refused); its client waited the whole NEAR_END_READ, past the end, and the battle lost
    its last 16 coins. The wait now ends SETTLE_LEAD before the end, with time left to read the
    battle back and overwrite it."""
    from worker.engine.flush.near_end import SETTLE_LEAD

    bid = _started(rt, ctl, duration_ms=4_000)
    end = float(rt.redis.hget(BattleKeys(bid).meta, "end"))
    send(rt, ctl, "room_a", 16, "buzzer-1")
    # Tencent's clock as the client estimates it is ours here, give or take its default spread.
    time.sleep(max(0.0, end - 1.4 - time.time()))
    ctl.inject("late_landing", api="set_battle_score")
    assert flush_battle(rt, bid) == "unresolved"
    assert time.time() < end - SETTLE_LEAD + 0.2
    wait_for(lambda: flush_battle(rt, bid) == "ok", timeout=2, interval=0.05,
             what="the settle before the end")
    assert time.time() < end and ctl.scores(bid)["room_a"] == 16

def test_a_battle_whose_write_may_still_land_gets_a_last_absolute_write(rt, ctl):
    """A request held past its client's timeout can land in the last second, after the last
    flush (17 coins over in bench.chaos): such a battle is due for one last OpType 2 of the
    ledger just before its end (keys.FINAL_DUE), which the end game runs."""
    from worker.engine.battles.registry import Battle
    from worker.engine.flush import endgame

    bid = _started(rt, ctl, duration_ms=60_000)
    send(rt, ctl, "room_b", 5, "fin1")
    assert flush_battle(rt, bid) == "ok"
    battle = Battle.load(rt, bid)
    audit.after_ambiguity(rt, battle, bid)
    assert rt.redis.zscore(keys.FINAL_DUE, bid) == pytest.approx(battle.end - endgame.FINAL_LEAD)
    rt.client.set_battle_score(bid, 1, {"room_b": 5})  # ...the held request lands late
    rt.redis.zadd(keys.FINAL_DUE, {bid: 0})  # due now
    calls = []
    assert endgame.run_finals(rt, lambda *a, **k: calls.append(k) or "final") == 1
    wait_for(lambda: calls, timeout=5)
    assert calls[0]["final"] is True
    assert flush_battle(rt, bid, lane="high", admitted=True, final=True) == "final"
    assert ctl.scores(bid) == {"room_a": 0, "room_b": 5}
