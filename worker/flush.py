"""Flush: claim a battle's pending deltas, send them with OpType 1, settle the answer exactly once."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass

from worker import keys
from worker.battles import Battle
from worker.keys import BattleKeys
from worker.lock import BattleLock
from worker.ratelimit import RateLimitTimeout
from worker.runtime import Runtime
from worker.stats import bump
from worker.tencent.errors import BATTLE_NOT_RUNNING, Outcome, TencentError

log = logging.getLogger("scorer.flush")

#: Send → resolve rounds within one flush task before leaving the batch to the next tick.
MAX_ROUNDS = 3
#: A request whose answer we never got may still be applied for a while: Tencent may be
#: holding it. A read-back taken sooner could see "not applied", and a re-send would then count
#: the batch twice, so a batch is judged only once it cannot land any more (or after the end):
#: - its sender died (SIGKILL, lock taken over): LANDING_WINDOW after it was sent (the client
#:   reads for up to 5 s, so nothing is known to have ended the request sooner);
#: - its sender saw the request end (a reset, a timeout): AFTER_ERROR after that moment.
LANDING_WINDOW = 6.0
AFTER_ERROR = 1.0
#: A 100006 this close to the start may be our clock running ahead: retried, not final.
START_SKEW = 5.0
#: A battle is known to have ended (no call can land) this long after its end by our clock;
#: the margin covers a clock running a little ahead of Tencent's.
END_MARGIN = 0.25


class LockLost(RuntimeError):
    """Our battle lock expired under us: stop, the next owner resolves what we left."""


@dataclass
class Inflight:
    """The claimed batch of one flush: its id, state and per-room deltas."""

    id: str
    state: str  # sending | unsent | ambiguous
    scores: dict[str, int]
    sent_at: float = 0.0  # when the last request of the batch may have left (0: never sent)
    settle_at: float = 0.0  # when that request can no longer land (see LANDING_WINDOW)

    @classmethod
    def parse(cls, flat: list[str]) -> "Inflight":
        d = dict(zip(flat[::2], flat[1::2]))
        scores = {k[2:]: int(v) for k, v in d.items() if k.startswith("r:")}
        sent_at = float(d.get("sent_at") or d.get("at") or 0.0)
        return cls(d["id"], d.get("state", "sending"), scores, sent_at,
                   float(d.get("settle_at") or sent_at + LANDING_WINDOW))


class Flusher:
    """One flush of one battle, run while holding the battle's lock."""

    def __init__(self, rt: Runtime, battle_id: str, lock: BattleLock) -> None:
        self.rt = rt
        self.bk = BattleKeys(battle_id)
        self.battle_id = battle_id
        self.lock = lock
        self.flush_id = uuid.uuid4().hex[:16]

    def _check(self, res) -> None:
        if res == -1:
            raise LockLost(self.battle_id)

    def _mark(self, state: str, **fields: object) -> None:
        args: list = [self.flush_id, self.lock.token, "state", state]
        for name, value in fields.items():
            args += [name, value]
        self._check(self.rt.script("MARK")(keys=[self.bk.inflight, self.bk.lock], args=args))

    def _commit(self, inf: Inflight, applied: dict[str, int], unapplied: dict[str, int],
                outcome: str, request_id: str | None = None) -> None:
        args: list = []
        for room in inf.scores:
            args += [room, applied.get(room, 0), unapplied.get(room, 0)]
        record = json.dumps({"id": self.flush_id, "at": self.rt.clock(), "op": 1,
                             "scores": inf.scores, "outcome": outcome,
                             "request_id": request_id})
        res = self.rt.script("COMMIT")(
            keys=[self.bk.inflight, self.bk.applied, self.bk.unapplied, self.bk.flushes,
                  self.bk.lock],
            args=[self.flush_id, self.lock.token, record, len(inf.scores), *args])
        self._check(res)
        if unapplied:
            bump(self.rt.redis, "unapplied", sum(unapplied.values()))
            log.warning("flush %s of %s left %s unapplied (%s)", self.flush_id,
                        self.battle_id, unapplied, outcome)

    def run(self) -> str:
        """Claim (or resume) a batch and carry it to a settled state; returns an outcome name."""
        rt = self.rt
        res = rt.script("CLAIM")(keys=[self.bk.pending, self.bk.inflight, self.bk.lock],
                                 args=[self.flush_id, rt.clock(), self.lock.token])
        self._check(res)
        if not res:
            return "idle"
        inf = Inflight.parse(res)
        battle = Battle.load(rt, self.battle_id)
        if inf.state == "unsent" or inf.id == self.flush_id:
            if battle is not None and battle.has_ended(rt.clock(), END_MARGIN):
                # No call can land any more: keep the value as unapplied, make none.
                self._adopt(inf)
                self._commit(inf, {}, dict(inf.scores), "after_end")
                return "after_end"
        if inf.id != self.flush_id:  # left by an owner that died or gave up: adopt it
            self._adopt(inf)
            # DEBUG: an ambiguous batch is looked at every tick until its landing window ends.
            log.debug("resuming flush of %s left in state %s", self.battle_id, inf.state)
            if inf.state in ("sending", "ambiguous"):
                state = self.resolve(inf)
                if state != "unsent":
                    return state
        for _ in range(MAX_ROUNDS):
            state = self.send(inf)
            if state == "ambiguous":
                state = self.resolve(inf)
            if state != "unsent":
                return state
        return "retry_later"

    def _adopt(self, inf: Inflight) -> None:
        """Make a batch claimed under another flush id ours."""
        if inf.id != self.flush_id:
            self._check(self.rt.script("ADOPT")(keys=[self.bk.inflight, self.bk.lock],
                                                args=[inf.id, self.flush_id, self.lock.token]))
            inf.id = self.flush_id

    def send(self, inf: Inflight) -> str:
        """OpType 1 of the batch; returns the settled outcome, or unsent/ambiguous."""
        # "sending" from the moment an attempt may leave (a fresh claim already says it; an
        # `unsent` batch whose sender dies while the limiter holds it is rightly sent again).
        def leaving() -> None:  # each attempt, once the limiter admitted it: it may land now
            inf.sent_at = self.rt.clock()
            inf.settle_at = inf.sent_at + LANDING_WINDOW
            self._mark("sending", sent_at=inf.sent_at, settle_at=inf.settle_at)

        try:
            res = self.rt.client.set_battle_score(self.battle_id, 1, inf.scores,
                                                  on_send=leaving)
        except RateLimitTimeout:
            self._mark("unsent")
            return "rate_limited"
        except TencentError as err:
            return self._failed(inf, err)
        codes = res.codes()
        applied = {r: v for r, v in inf.scores.items() if codes.get(r, 0) == 0}
        unapplied = {r: v for r, v in inf.scores.items() if codes.get(r, 0) != 0}
        self._commit(inf, applied, unapplied, "ok", res.RequestId)
        return "ok"

    def _failed(self, inf: Inflight, err: TencentError) -> str:
        if err.outcome is Outcome.ambiguous:
            inf.settle_at = self.rt.clock() + AFTER_ERROR
            self._mark("ambiguous", settle_at=inf.settle_at)
            return "ambiguous"
        if err.outcome is Outcome.retryable:  # certainly not applied: same batch, next tick
            self._mark("unsent")
            return "retry_later"
        battle = Battle.load(self.rt, self.battle_id)
        if (err.code == BATTLE_NOT_RUNNING and battle
                and self.rt.clock() < battle.start + START_SKEW):
            self._mark("unsent")  # our clock may run ahead of Tencent's: not started there
            return "retry_later"
        if err.code == BATTLE_NOT_RUNNING and battle:
            # Tencent says it has ended: no later flush of this battle makes a call.
            self.rt.redis.hset(self.bk.meta, "ended_at", self.rt.clock())
        # Final: 100006 after the end, 100002, a configuration error... keep the value as
        # unapplied with the reason so an operator can see it; never retry forever.
        self._commit(inf, {}, dict(inf.scores), f"refused:{err.code}", err.request_id)
        return "refused"

    def resolve(self, inf: Inflight) -> str:
        """Settle a batch that may or may not have been applied, without double counting.

        We hold the battle's only write lock, so Tencent's score of each room is either
        applied (what we know we wrote) or applied + delta. Anything else means someone else
        wrote: settle with an idempotent OpType 2 of what the room must hold. The read is
        taken only once the request can no longer land (LANDING_WINDOW), or after the end.
        """
        battle = Battle.load(self.rt, self.battle_id)
        ended = battle is not None and battle.has_ended(self.rt.clock(), END_MARGIN)
        if self.rt.clock() < inf.settle_at and not ended:
            self._mark("ambiguous")
            return "unresolved"  # the tick brings it back; no call until it can be judged
        try:
            info = self.rt.client.get_battle_info(self.battle_id)
        except (TencentError, RateLimitTimeout) as err:
            log.warning("read-back of %s failed: %s", self.battle_id, err)
            self._mark("ambiguous")
            return "unresolved"
        held = {r.RoomId: r.Score for r in info.rooms}
        applied = {k: int(v) for k, v in self.rt.redis.hgetall(self.bk.applied).items()}
        verdicts = {}
        for room, d in inf.scores.items():
            a = applied.get(room, 0)
            s = held.get(room)
            verdicts[room] = ("absent" if s is None else "applied" if s == a + d
                              else "unsent" if s == a else "other")
        ended = self.rt.clock() >= info.EndTime > 0 or info.Status == 2
        if all(v in ("applied", "absent") for v in verdicts.values()) or ended:
            ok = {r: d for r, d in inf.scores.items() if verdicts[r] == "applied"}
            rest = {r: d for r, d in inf.scores.items() if verdicts[r] != "applied"}
            self._commit(inf, ok, rest, "read_back", info.RequestId)
            return "ok"
        if all(v in ("unsent", "absent") for v in verdicts.values()):
            self._mark("unsent")
            return "unsent"
        return self.overwrite(inf, applied)

    def overwrite(self, inf: Inflight, applied: dict[str, int]) -> str:
        """Set each room to applied + delta with OpType 2 (idempotent), then commit."""
        target = {r: applied.get(r, 0) + d for r, d in inf.scores.items()}
        try:
            res = self.rt.client.set_battle_score(self.battle_id, 2, target)
        except (TencentError, RateLimitTimeout) as err:
            log.warning("settling overwrite of %s failed: %s", self.battle_id, err)
            self._mark("ambiguous")
            return "unresolved"
        codes = res.codes()
        ok = {r: d for r, d in inf.scores.items() if codes.get(r, 0) == 0}
        rest = {r: d for r, d in inf.scores.items() if codes.get(r, 0) != 0}
        self._commit(inf, ok, rest, "overwrite", res.RequestId)
        return "ok"


def flush_battle(rt: Runtime, battle_id: str) -> str:
    """Flush one battle if no other process owns it right now; returns an outcome name."""
    bk = BattleKeys(battle_id)
    with BattleLock(rt.redis, bk.lock) as lock:
        if not lock.held:
            return "busy"
        try:
            outcome = Flusher(rt, battle_id, lock).run()
        except LockLost:
            log.error("lost the lock of %s mid-flush; its next owner resumes", battle_id)
            return "lock_lost"
        if outcome == "idle":
            _forget_if_idle(rt, bk)
        return outcome


def _forget_if_idle(rt: Runtime, bk: BattleKeys) -> None:
    """Take an idle battle off the due list without racing a concurrent ingest."""
    rt.redis.zrem(keys.FLUSH_DUE, bk.battle_id)
    # An ingest that added pending before our ZREM also ran its ZADD NX before it: re-add.
    if rt.redis.hlen(bk.pending) or rt.redis.exists(bk.inflight):
        rt.redis.zadd(keys.FLUSH_DUE, {bk.battle_id: rt.clock()}, nx=True)
