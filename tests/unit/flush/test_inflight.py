"""Unit tests of worker/engine/flush/inflight.py: the in-flight batch, its timings, its scripts."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.unit.conftest import T0
from tests.unit.flush.answers import ints, pend, start
from worker.engine.flush.inflight import (
    AFTER_ERROR,
    LANDING_WINDOW,
    NEAR_END_AFTER,
    Claim,
    Inflight,
    LockLost,
    settle_of,
)
from worker.engine.flush.near_end import NEAR_END_READ
from worker.engine.runtime import Runtime
from worker.engine.state.counters import read
from worker.engine.state.keys import BattleKeys
from worker.engine.state.lock import RedisLock
from worker.engine.tencent.client import ADMITTED
from worker.engine.tencent.models import OpType

BK = BattleKeys("b1")


@pytest.fixture
def claim(frt: Runtime) -> Iterator[Claim]:
    """A flush's claim on battle b1, its lock held."""
    start(frt)
    with RedisLock(frt.redis, BK.lock) as lock:
        assert lock.held
        yield Claim(frt, "b1", lock)


def test_a_batch_can_be_judged_at_its_settle_at_or_a_landing_window_after_it_was_sent() -> None:
    assert settle_of("105.5", "100", None) == 105.5
    assert settle_of(None, "100", None) == 100 + LANDING_WINDOW
    assert settle_of(None, None, "90") == 90 + LANDING_WINDOW  # a record of an older version
    assert settle_of(None, None, None) == LANDING_WINDOW


def test_a_batch_is_parsed_from_its_record_and_times_its_own_attempts() -> None:
    inf = Inflight.parse(["id", "f1", "at", "100", "state", "sending", "r:r1", "5",
                          "r:r2", "-2"])
    assert (inf.id, inf.state, inf.scores) == ("f1", "sending", {"r1": 5, "r2": -2})
    assert inf.sent_at == 100 and inf.settle_at == 100 + LANDING_WINDOW
    inf.sending(200.0, near=False)
    assert (inf.sent_at, inf.settle_at) == (200.0, 200.0 + LANDING_WINDOW)
    inf.sending(300.0, near=True)  # near the end: it can land only until its answer is due
    assert inf.settle_at == 300.0 + NEAR_END_READ + 1.0
    inf.unanswered(301.0, near=False)
    assert inf.settle_at == 301.0 + AFTER_ERROR
    inf.unanswered(301.0, near=True)
    assert inf.settle_at == 301.0 + NEAR_END_AFTER


def test_claim_moves_the_pending_deltas_into_one_batch_and_resumes_it_until_settled(
        frt: Runtime, claim: Claim) -> None:
    pend(frt, r1=5, r2=0)  # a room whose corrections cancelled out is not sent
    inf = claim.claim()
    assert inf is not None
    assert (inf.id, inf.state, inf.scores) == (claim.flush_id, "sending", {"r1": 5})
    assert not frt.redis.exists(BK.pending)
    pend(frt, r1=2)  # new value waits: the batch in flight is resumed as it was
    again = claim.claim()
    assert again is not None and again.scores == {"r1": 5}
    assert frt.redis.hget(BK.pending, "r1") == "2"


def test_nothing_to_claim_is_idle_and_a_batch_of_zeros_is_dropped(
        frt: Runtime, claim: Claim) -> None:
    assert claim.claim() is None
    pend(frt, r1=0)
    assert claim.claim() is None
    assert not frt.redis.exists(BK.pending) and not frt.redis.exists(BK.inflight)


def test_commit_settles_the_batch_once_into_the_ledgers_and_the_history(
        frt: Runtime, claim: Claim) -> None:
    pend(frt, r1=5, r2=7)
    inf = claim.claim()
    assert inf is not None
    claim.commit(inf, {"r1": 5}, {"r2": 7}, "ok", "req-1", OpType.ACCUMULATE)
    assert ints(frt, BK.applied) == {"r1": 5} and ints(frt, BK.unapplied) == {"r2": 7}
    assert not frt.redis.exists(BK.inflight)
    record = json.loads(frt.redis.lindex(BK.flushes, 0))
    assert record == {"id": claim.flush_id, "at": T0, "op": 1, "scores": {"r1": 5, "r2": 7},
                      "outcome": "ok", "request_id": "req-1"}
    assert read(frt.redis)["unapplied"] == 7
    # The batch is gone: committing it again changes nothing.
    claim.commit(inf, {"r1": 5}, {}, "ok")
    assert ints(frt, BK.applied) == {"r1": 5}


def test_a_correction_left_unapplied_counts_no_negative_value(
        frt: Runtime, claim: Claim) -> None:
    pend(frt, r1=-4, r2=3)
    inf = claim.claim()
    assert inf is not None
    claim.commit(inf, {}, dict(inf.scores), "after_end")
    assert ints(frt, BK.unapplied) == {"r1": -4, "r2": 3}
    assert read(frt.redis)["unapplied"] == 3


def test_a_holder_that_lost_its_lock_can_neither_claim_nor_mark_nor_commit(
        frt: Runtime, claim: Claim) -> None:
    pend(frt, r1=5)
    inf = claim.claim()
    assert inf is not None
    frt.redis.set(BK.lock, "someone-else")  # our lock expired; another flush took it
    with pytest.raises(LockLost):
        claim.mark("unsent")
    with pytest.raises(LockLost):
        claim.commit(inf, {"r1": 5}, {}, "ok")
    with pytest.raises(LockLost):
        claim.claim()
    assert not frt.redis.exists(BK.applied)
    assert frt.redis.hget(BK.inflight, "state") == "sending"


def test_a_batch_left_by_another_flush_is_adopted_and_the_slot_is_used_once(
        frt: Runtime, claim: Claim) -> None:
    pend(frt, r1=5)
    inf = claim.claim()
    assert inf is not None
    # The next owner (another flush under the same lock token) finds it and makes it its own.
    heir = Claim(frt, "b1", claim.lock, admitted=True)
    resumed = heir.claim()
    assert resumed is not None and resumed.id == claim.flush_id
    heir.adopt(resumed)
    assert resumed.id == heir.flush_id == frt.redis.hget(BK.inflight, "id")
    claim.mark("unsent")  # the old id marks nothing any more
    assert frt.redis.hget(BK.inflight, "state") == "sending"
    heir.mark("unsent", sent_at=1.0)
    assert frt.redis.hmget(BK.inflight, "state", "sent_at") == ["unsent", "1.0"]
    assert heir.max_wait() == ADMITTED and heir.max_wait() == 0.0
