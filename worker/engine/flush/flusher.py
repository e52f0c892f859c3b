"""Flush: claim a battle's pending deltas, send them, settle the answer exactly once.

The batch's record and its scripts are in worker/engine/flush/inflight.py, the settling of a batch
that may have landed in worker/engine/flush/settle.py, the one OpType 2 writer in
worker/engine/flush/overwrite.py and the due list in worker/engine/flush/due.py.
"""

from __future__ import annotations

import logging
import time

from worker.engine.battles.registry import Battle, read_applied
from worker.engine.flush import audit, settle
from worker.engine.flush.due import (  # noqa: F401 (re-exported: the tick and tests use them)
    RETRY_SOON,
    due_at,
    due_soon,
    first_in_line,
    forget_idle,
    forget_if_idle,
    holding_value,
    needs,
    needs_and_battle,
    settle_time,
)
from worker.engine.flush.inflight import (  # noqa: F401 (re-exported: reconcile and tests use them)
    AFTER_ERROR,
    LANDING_WINDOW,
    Claim,
    Inflight,
    LockLost,
)
from worker.engine.flush.near_end import read_timeout
from worker.engine.flush.overwrite import moved, totals
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.keys import BattleKeys
from worker.engine.state.lock import RedisLock
from worker.engine.tencent.errors import (
    BATTLE_NOT_RUNNING,
    Fenced,
    Outcome,
    RateLimitTimeout,
    TencentError,
)
from worker.engine.tencent.limiter import HIGH, LOW
from worker.engine.tencent.models import MAX_SCORE, OpType
from worker.engine.timers import TIMERS

log = logging.getLogger("scorer.flush")

#: The flush's timers are TIMERS.flush (worker/engine/timers.py, FlushTimers, each with its
#: reason). Only the first send may wait for the limiter, and not under the lock (see
#: `flush_battle`); later calls go only if a slot is free at once. A retryable answer ends the
#: flush: the battle is due again RETRY_SOON. Bound here because tests read them:
REFUSED_RETRY = TIMERS.flush.refused_retry
START_SKEW = TIMERS.flush.start_skew


class Flusher(Claim):
    """One flush of one battle, run while holding the battle's lock."""

    def run(self) -> str:
        """Claim (or resume) a batch and carry it to a settled state; returns an outcome name."""
        inf = self.claim()
        if inf is None:
            return "idle"
        battle = self.battle = self.battle or Battle.load(self.rt, self.battle_id)
        if (inf.state == "unsent" or inf.id == self.flush_id) and self.ended(battle):
            # No call can land any more: keep the value as unapplied, make none.
            self.adopt(inf)
            self.commit(inf, {}, dict(inf.scores), "after_end")
            return "after_end"
        if inf.id != self.flush_id:  # left by an owner that died or gave up: adopt it
            self.adopt(inf)
            # DEBUG: an ambiguous batch is looked at every tick until its landing window ends.
            log.debug("resuming flush of %s left in state %s", self.battle_id, inf.state)
            if inf.state in ("sending", "ambiguous"):
                state = settle.resolve(self, inf)
                if state != "unsent":
                    return state
        for _ in range(TIMERS.flush.max_rounds):
            state = self.send(inf)
            if state == "ambiguous":
                state = settle.resolve(self, inf)
            if state != "unsent":
                return state
        return "retry_later"

    def send(self, inf: Inflight) -> str:
        """OpType 1 of the batch (near the end, OpType 2 of the totals it makes); returns the
        settled outcome, or unsent/ambiguous."""
        if max(inf.scores.values(), default=0) > MAX_SCORE:
            # INGEST keeps every room's ledger within MAX_SCORE, so only a batch from an older
            # version can get here: it can never be sent, and retrying it for ever kept its
            # battle from finalizing. Kept unapplied, with its reason.
            self.commit(inf, {}, dict(inf.scores), "refused:out_of_bounds")
            return "refused"
        # "sending" from the moment an attempt may leave (a fresh claim already says it; an
        # `unsent` batch whose sender dies while the limiter holds it is rightly sent again).
        ending = self.ending()
        near = ending is not None

        def leaving() -> None:  # each attempt, once the limiter admitted it: it may land now
            inf.sending(self.rt.clock(), near)
            self.mark("sending", sent_at=inf.sent_at, settle_at=inf.settle_at)

        op, body, held = OpType.ACCUMULATE, inf.scores, {}
        if near or min(inf.scores.values(), default=0) < 0:
            # OpType 2 of the totals (applied + delta). Near the end for every room: the same
            # score when Tencent holds `applied`, and it also overwrites an earlier write that
            # landed after its client gave up, which no audit could heal before the end. For a
            # reconcile correction of gifts never counted (a negative delta), the batch's rooms:
            # an accumulate by a negative Score is not documented to work.
            held = read_applied(self.rt, self.battle_id)
            rooms = {*ending.rooms, *inf.scores} if ending else set(inf.scores)
            op, body = OpType.OVERWRITE, totals(held, inf.scores, rooms)
        try:
            # One attempt: a retryable answer comes back through the schedule, not by sleeping
            # here with the lock held.
            res = self.rt.client.set_battle_score(
                self.battle_id, op, body, on_send=leaving, max_wait=self.max_wait(),
                max_attempts=1, read_timeout=read_timeout(self.rt, self.battle),
                fence=self.lock.fresh)
        except Fenced:  # never sent, but marked sending: the next owner reads it back
            raise LockLost(self.battle_id) from None
        except RateLimitTimeout:
            self.mark("unsent")
            return "rate_limited"
        except TencentError as err:
            self.turned(inf)
            return self._failed(inf, err)
        self.turned(inf)
        ok, failed = res.split(inf.scores)
        applied = ({r: inf.scores[r] for r in ok} if op is OpType.ACCUMULATE
                   else moved(body, held, ok))
        self.commit(inf, applied, {r: inf.scores[r] for r in failed}, "ok", res.RequestId, op)
        return "ok"

    def turned(self, inf: Inflight) -> None:
        """Record the battle's turn, when its request left (worker/engine/battles/turns.py: the
        tick plans the next one from it). After the call, not before: a round trip between the
        call slot's stamp and the request leaving bunches requests at Tencent."""
        if inf.sent_at:
            self.rt.redis.hset(self.bk.meta, "turned_at", inf.sent_at)

    def _failed(self, inf: Inflight, err: TencentError) -> str:
        """Settle what a failed send leaves: ambiguous (judged soon), unsent (sent again
        later) or refused for good; returns the outcome name."""
        if err.outcome is Outcome.ambiguous:
            inf.unanswered(self.rt.clock(), self.near_end())
            self.mark("ambiguous", settle_at=inf.settle_at)
            return "ambiguous"
        if err.outcome is Outcome.retryable:  # certainly not applied: same batch, next tick
            self.mark("unsent")
            return "retry_later"
        if err.outcome is Outcome.refused:  # our configuration or a proxy: not applied
            self.mark("unsent")
            log.error("flush of %s refused (%s): kept pending, retried in %.0f s",
                      self.battle_id, err, REFUSED_RETRY)
            return "refused_later"
        battle = Battle.load(self.rt, self.battle_id)
        if (err.code == BATTLE_NOT_RUNNING and battle
                and self.rt.clock() < battle.start + START_SKEW):
            self.mark("unsent")  # our clock may run ahead of Tencent's: not started there
            return "retry_later"
        if err.code == BATTLE_NOT_RUNNING and battle:
            # Tencent says it has ended: no later flush of this battle makes a call.
            self.rt.redis.hset(self.bk.meta, "ended_at", self.rt.clock())
        # Final: 100006 after the end, 100002, a configuration error... keep the value as
        # unapplied with the reason so an operator can see it; never retry forever.
        self.commit(inf, {}, dict(inf.scores), f"refused:{err.code}", err.request_id)
        return "refused"


def flush_battle(rt: Runtime, battle_id: str, lane: str = LOW, admitted: bool = False,
                 slot_wait: float = TIMERS.flush.slot_wait, final: bool = False) -> str:
    """Flush one battle; returns an outcome name.

    Nothing waits while holding the battle's lock: the call slot is taken first (`admitted`:
    the caller already holds one), and a lock held by another flush is waited for a moment
    (`TIMERS.flush.lock_wait`), the time its batch takes to settle, before the battle goes back
    to the schedule. A battle with nothing to send, or whose batch must settle first, takes no
    slot.
    """
    bk = BattleKeys(battle_id)
    need, battle = needs_and_battle(rt, battle_id)
    if need == "idle" and final:
        return audit.last_write(rt, battle)
    if need == "idle":
        forget_if_idle(rt, bk)
        return "idle"
    if need == "busy":
        due_soon(rt, battle_id)
        return "busy"
    if need == "unsettled":
        due_at(rt, battle_id, settle_time(rt, battle_id), xx=True)
        return "unsettled"
    if need == "early" and battle is not None:
        due_at(rt, battle_id, rt.clock() + battle.starts_in(rt.tclock.earliest()), xx=True)
        return "early"
    if need == "call" and not admitted:
        try:
            rt.client.limiter.acquire("set_battle_score", slot_wait, lane)
        except RateLimitTimeout:
            first_in_line(rt, battle_id)
            return "rate_limited"
    deadline = time.monotonic() + TIMERS.flush.lock_wait
    while True:
        with RedisLock(rt.redis, bk.lock) as lock:
            if lock.held:
                try:
                    outcome = Flusher(rt, battle_id, lock, admitted=need == "call",
                                      battle=battle).run()
                except LockLost:
                    # Frozen or cut off past the lease: a write of ours may still land after
                    # the next owner's, which its read-back cannot see: audit the battle.
                    log.error("lost the lock of %s mid-flush; its next owner resumes, and the "
                              "battle is audited", battle_id)
                    audit.after_ambiguity(rt, battle, battle_id)
                    return "lock_lost"
                break
        if time.monotonic() >= deadline:
            due_soon(rt, battle_id)
            return "busy"
        time.sleep(0.01)
    if outcome == "idle":
        forget_if_idle(rt, bk)
    elif outcome in ("retry_later", "rate_limited"):
        due_soon(rt, battle_id)
    elif outcome == "unresolved":
        at = settle_time(rt, battle_id)
        due_at(rt, battle_id, at, xx=True)
        if lane == HIGH:  # in its end game: judged the moment it can be, not at a tick
            rt.redis.zadd(keys.ENDGAME_DUE, {battle_id: at}, nx=True)
    elif outcome == "refused_later":
        due_at(rt, battle_id, rt.clock() + REFUSED_RETRY)
    return outcome


