"""Property: for one battle, any interleaving of gifts, duplicates, faults and crashes ends
exact."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scorer_local.sandbox_control import SandboxControl
from tests.helpers import gift_body, start_body
from worker.engine.battles.registry import read_applied
from worker.engine.flush.flusher import LANDING_WINDOW, flush_battle, totals
from worker.engine.ingest.gifts import handle
from worker.engine.state.keys import BattleKeys

ROOM_NAMES = ("pa", "pb")
_battles = itertools.count()

gift = st.tuples(st.just("gift"), st.sampled_from(ROOM_NAMES), st.integers(0, 1000),
                 st.integers(0, 15))  # room, coins, event number (repeats = duplicates)
fault = st.tuples(st.just("fault"),
                  st.sampled_from(["http502", "error100001", "lost_response"]),
                  st.sampled_from(["set_battle_score", "get_battle_info", None]))
crash = st.tuples(st.just("crash"), st.booleans())  # crash after claim; True: call applied
# A reconcile correction decided (pending + corrections), up, or down by value it ingested.
correct = st.tuples(st.just("correct"), st.sampled_from(ROOM_NAMES), st.integers(-300, 300))
ops = st.lists(st.one_of(gift, gift, st.just(("flush",)), fault, crash, correct), max_size=25)


@pytest.fixture
def ctl(sandbox):
    c = SandboxControl(sandbox.url)
    yield c
    c.close()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=ops, start_late=st.booleans())
def test_any_interleaving_ends_exact(rt, ctl, ops, start_late):
    n = next(_battles)
    bid = f"prop-{n}"
    # A room is in one battle at a time: every example gets its own rooms.
    ROOMS = {f"{name}{n}": f"owner-{name}{n}" for name in ROOM_NAMES}
    start = time.time() - 1
    ctl.create_battle(ROOMS, 120_000, start=start, battle_id=bid)
    rt.client.backoff = 0.001
    if not start_late:
        handle(rt, [(start_body(bid, start, 120_000, ROOMS), None)])
    truth = {r: 0 for r in ROOMS}
    seen: set[str] = set()
    bk = BattleKeys(bid)
    for op in ops:
        if op[0] == "gift":
            _, name, coins, num = op
            room = f"{name}{n}"
            eid = f"{bid}-e{num}"
            if eid in seen:  # a redelivery of the same gift: same body, same id
                coins = int(rt.redis.hget(f"test:{bid}", eid) or 0)
                room = rt.redis.hget(f"test:{bid}:room", eid) or room
            else:
                seen.add(eid)
                truth[room] += coins
                rt.redis.hset(f"test:{bid}", eid, coins)
                rt.redis.hset(f"test:{bid}:room", eid, room)
            handle(rt, [(gift_body(room, ROOMS[room], coins, t=start + 1, sender="v"), eid)])
        elif op[0] == "flush":
            flush_battle(rt, bid)
        elif op[0] == "fault":
            ctl.inject(op[1], api=op[2])
        elif op[0] == "correct":
            room = f"{op[1]}{n}"
            # Reconcile takes back only value it ingested (in the ledger, not held).
            ours = (int(rt.redis.hget(bk.applied, room) or 0)
                    + int(rt.redis.hget(bk.pending, room) or 0)
                    + int(rt.redis.hget(bk.inflight, f"r:{room}") or 0))
            d = max(op[2], -ours)
            truth[room] += d
            rt.redis.set(bk.rlock, "reconciler")
            rt.script("CORRECT")(keys=[bk.pending, bk.corr, bk.rlock],
                                 args=[int(time.time()) + 3600, "reconciler", room, d])
            rt.redis.delete(bk.rlock)
        elif op[0] == "crash":
            # A worker dies holding the lock right after CLAIM (and maybe after its call).
            rt.redis.set(bk.lock, "dead")
            res = rt.script("CLAIM")(keys=[bk.pending, bk.inflight, bk.lock],
                                     args=[f"dead-{n}", 0, "dead"])
            if res and op[1] and res[1] == f"dead-{n}":
                scores = {k[2:]: int(v) for k, v in zip(res[::2], res[1::2], strict=False)
                          if k.startswith("r:")}
                held = read_applied(rt, bid)
                op_type, body = ((2, totals(held, scores, set(scores)))  # as flush sends it
                                 if min(scores.values()) < 0 else (1, scores))
                try:
                    rt.client.set_battle_score(bid, op_type, body)
                except Exception:
                    pass
            rt.redis.delete(bk.lock)
    if start_late:
        handle(rt, [(start_body(bid, start, 120_000, ROOMS), None)])
    ctl.clear_faults()
    real = rt.clock  # time passes: a batch whose answer was lost can be judged again
    rt.clock = lambda: real() + LANDING_WINDOW
    try:
        for _ in range(5):
            flush_battle(rt, bid)
    finally:
        rt.clock = real
    assert not rt.redis.exists(bk.inflight) and not rt.redis.hlen(bk.pending)
    assert ctl.scores(bid) == truth
    applied = {k: int(v) for k, v in rt.redis.hgetall(bk.applied).items()}
    assert {r: applied.get(r, 0) for r in ROOMS} == truth
