"""Nothing an ended battle holds is stuck for ever (issue 28): the tick's finalize pages past
battles it cannot close, and gives up what one still holds GIVE_UP_AFTER_END past its end.

Both tests fail on the code before: finalize looked at the 200 oldest ended battles only and
skipped those with value pending or in flight, so 200 battles whose read-back kept failing kept
every later battle from closing, and their own keys never got an expiry.
"""

from __future__ import annotations

import json

import httpx
import pytest
import respx

from tests.unit.conftest import T0
from tests.unit.flush.answers import BATTLE_INFO, ints, start
from worker.engine.battles.ending import GIVE_UP_AFTER_END
from worker.engine.battles.registry import KEEP_AFTER_END
from worker.engine.flush.flusher import flush_battle
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.counters import read
from worker.engine.state.keys import BattleKeys
from worker.engine.tick import dispatch
from worker.engine.timers import TIMERS

SCHEDULES = (keys.ACTIVE, keys.FLUSH_DUE, keys.ENDGAME_DUE, keys.RECONCILE_DUE,
             keys.UNRESOLVED, keys.AUDIT_DUE, keys.FINAL_DUE)


@pytest.fixture(autouse=True)
def _quiet(frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """No end-game runner thread, and a Redis that answers INFO (fakeredis does not)."""
    monkeypatch.setattr(dispatch.endgame, "ensure_runner", lambda rt, flush: None)
    monkeypatch.setattr(frt.redis, "info", lambda section: {"run_id": "unit"})


def ended(rt: Runtime, bid: str, end: float) -> BattleKeys:
    """A 60 s battle of its own two rooms that ended at `end`."""
    start(rt, bid, at=end - 60, rooms={f"{bid}-a": f"{bid}-oa", f"{bid}-b": f"{bid}-ob"})
    return BattleKeys(bid)


def stuck(rt: Runtime, bid: str, end: float, **deltas: int) -> BattleKeys:
    """An ended battle whose last batch (`deltas`, room suffix → value) got no answer and whose
    sender then died: a batch in flight that only a read-back can settle."""
    bk = ended(rt, bid, end)
    rt.redis.hset(bk.pending, mapping={f"{bid}-{r}": v for r, v in deltas.items()})
    rt.redis.set(bk.lock, "dead")
    rt.script("CLAIM")(keys=[bk.pending, bk.inflight, bk.lock], args=["gone", end - 2, "dead"])
    rt.script("MARK")(keys=[bk.inflight, bk.lock],
                      args=["gone", "dead", "state", "ambiguous", "settle_at", end - 1])
    rt.redis.delete(bk.lock)
    return bk


def tick(rt: Runtime, at: float, flushed: list[str] | None = None) -> dict[str, int]:
    """One tick at `at`; the flushes it dispatches run at once (added to `flushed`), the other
    control messages are dropped."""
    rt.clock = lambda: at

    def send(kind: str, ids: list[str]) -> None:
        if kind == "flush":
            for bid in ids:
                flush_battle(rt, bid)
            if flushed is not None:
                flushed.extend(ids)

    return dispatch.run_tick(rt, send)


def test_a_battle_behind_250_that_cannot_close_is_finalized_within_two_ticks(
        frt: Runtime, respx_mock: respx.MockRouter) -> None:
    reads = respx_mock.post(BATTLE_INFO).mock(side_effect=httpx.ConnectError("gone"))
    for i in range(250):
        stuck(frt, f"s{i:03}", T0 - 40, a=5)
    clean = ended(frt, "clean", T0 - 39)  # ended after them: behind them in the line
    flushed: list[str] = []
    tick(frt, T0, flushed)
    tick(frt, T0 + 1, flushed)
    assert frt.redis.hget(clean.meta, "status") == "finished"
    assert frt.redis.zscore(keys.ACTIVE, "clean") is None
    # The stuck ones wait on (their end is 40 s ago, far within the bound), nothing given up.
    assert frt.redis.zcard(keys.ACTIVE) == 250 and read(frt.redis)["unapplied"] == 0
    assert all(frt.redis.exists(BattleKeys(f"s{i:03}").inflight) for i in range(250))
    # Their flushes tried a read-back, and a failed one puts the next off (read_back_retry):
    # they do not take the head of the flush queue at every tick.
    assert flushed and 0 < reads.call_count <= len(flushed)
    assert all(frt.redis.zscore(keys.FLUSH_DUE, b) >= T0 + 1 + TIMERS.flush.read_back_retry
               for b in flushed)


def test_past_the_bound_a_stuck_batch_is_given_up_and_its_battle_closed(
        frt: Runtime, respx_mock: respx.MockRouter) -> None:
    reads = respx_mock.post(BATTLE_INFO).mock(side_effect=httpx.ConnectError("gone"))
    end = T0 - GIVE_UP_AFTER_END - 1
    bk = stuck(frt, "b1", end, a=5, b=2)
    frt.redis.hset(bk.applied, mapping={"b1-a": 10})  # what Tencent holds by our account
    frt.redis.hset(bk.pending, "b1-b", 3)  # value that came after the batch (never sent)
    for zkey in SCHEDULES[1:]:
        frt.redis.zadd(zkey, {"b1": end})

    out = tick(frt, T0)
    assert out["finalized"] == 1 and frt.redis.hget(bk.meta, "status") == "finished"
    assert all(frt.redis.zscore(zkey, "b1") is None for zkey in SCHEDULES)
    assert ints(frt, bk.applied) == {"b1-a": 10}  # nothing counted that we do not know landed
    assert ints(frt, bk.unapplied) == {"b1-a": 5, "b1-b": 5}
    outcomes = [json.loads(r)["outcome"] for r in frt.redis.lrange(bk.flushes, 0, -1)]
    assert sorted(outcomes) == ["after_end", "unsettled"]  # the batch; the value behind it
    counts = read(frt.redis)
    assert counts["unsettled"] == 1 and counts["unapplied"] == 10
    assert not frt.redis.exists(bk.inflight) and not frt.redis.exists(bk.pending)
    for key in (bk.meta, bk.applied, bk.unapplied, bk.flushes):
        assert frt.redis.expiretime(key) == int(T0 + KEEP_AFTER_END), key
    # Settled once: a flush that comes later (dispatched before) finds nothing to settle or
    # read, and nothing is counted twice.
    calls = reads.call_count
    assert flush_battle(frt, "b1") == "idle" and reads.call_count == calls
    assert ints(frt, bk.applied) == {"b1-a": 10} and read(frt.redis) == counts
    assert tick(frt, T0 + 1)["finalized"] == 0


def test_the_tick_gives_up_a_bounded_number_of_battles_at_a_time(
        frt: Runtime, respx_mock: respx.MockRouter) -> None:
    respx_mock.post(BATTLE_INFO).mock(side_effect=httpx.ConnectError("gone"))
    end = T0 - GIVE_UP_AFTER_END - 1
    for i in range(50):
        stuck(frt, f"s{i:02}", end, a=1)
        # Their flushes never come (the end game holds them, its runner down): only the
        # tick's finalize gives them up.
        frt.redis.zadd(keys.ENDGAME_DUE, {f"s{i:02}": end})
    clean = ended(frt, "clean", end + 0.5)
    frt.redis.set(BattleKeys("s00").lock, "a-live-flush", px=60_000)  # busy: tried again later
    # The first tick gives up 20 at most (s00 among them, busy), and closes those and the
    # clean one; the others go to the back of the line of ended battles, due a flush.
    assert tick(frt, T0)["finalized"] == 20
    assert frt.redis.hget(clean.meta, "status") == "finished"
    assert read(frt.redis)["unsettled"] == 19 and frt.redis.zcard(keys.ACTIVE) == 31
    for n in range(3):  # 19, then 11 more
        tick(frt, T0 + 1 + n)
    assert frt.redis.zrange(keys.ACTIVE, 0, -1) == ["s00"]  # until its lock is free
    assert read(frt.redis)["unsettled"] == 49
    frt.redis.delete(BattleKeys("s00").lock)
    tick(frt, T0 + 10)
    assert frt.redis.zcard(keys.ACTIVE) == 0 and read(frt.redis)["unsettled"] == 50
