"""Flush: claim a battle's pending deltas, send them, settle the answer exactly once."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass

from worker.engine import audit

from worker.engine.state import keys
from worker.engine.endgame import NEAR_END_READ, near_end, read_timeout
from worker.engine.state.pipeline import pipeline
from worker.engine.battles import Battle, read_applied
from worker.engine.state.keys import BattleKeys
from worker.engine.state.lock import BattleLock
from worker.engine.state.limiter import HIGH, LOW, RateLimitTimeout
from worker.engine.runtime import Runtime
from worker.engine.state.counters import bump
from worker.engine.tencent.client import ADMITTED
from worker.engine.tencent.errors import BATTLE_NOT_RUNNING, Outcome, TencentError
from worker.engine.tencent.models import MAX_SCORE

log = logging.getLogger("scorer.flush")

#: Send → resolve rounds within one flush (a read-back that finds the batch not applied sends
#: it again) before leaving the batch to the schedule. Only the first send may wait for the
#: limiter, and not under the lock (see `flush_battle`); later calls go only if a slot is free
#: at once. A retryable answer ends the flush: the battle is due again RETRY_SOON.
MAX_ROUNDS = 2
#: A flush waits this long for a battle lock another flush holds (its batch is about to settle)
#: before giving the battle back to the schedule.
LOCK_WAIT = 0.3
#: A freshness flush (LOW lane) waits this long for a call slot, holding no lock (a control
#: thread, though: the tick dispatched no more than the lane carries, so waits are short).
SLOT_WAIT = 0.5
#: A battle whose flush could not run (busy, no slot, a retryable answer) is due again this soon.
RETRY_SOON = 0.2
#: A request whose answer we never got may still be applied for a while: Tencent may be
#: holding it. A read-back taken sooner could see "not applied", and a re-send would then count
#: the batch twice, so a batch is judged only once it cannot land any more (or after the end):
#: - its sender died (SIGKILL, lock taken over): LANDING_WINDOW after it was sent (the client
#:   reads for up to 5 s, so nothing is known to have ended the request sooner);
#: - its sender saw the request end (a reset, a timeout): AFTER_ERROR after that moment.
LANDING_WINDOW = 6.0
AFTER_ERROR = 1.0
#: Near its end (endgame.near_end) a request is judged this long after it ended.
NEAR_END_AFTER = 0.3
#: A battle whose write was refused by our configuration or a proxy (401, 403, 70003, ...)
#: is tried again this much later: a key rotation or a proxy's limit may pass, and the value
#: stays pending until the battle ends (then it is recorded unapplied, with its reason).
REFUSED_RETRY = 5.0
#: A 100006 this close to the start may be our clock running ahead: retried, not final.
START_SKEW = 5.0
#: A battle is known to have ended (no call can land) this long after its end by the earliest
#: Tencent's clock may read (worker/engine/tencent/clock.py).
END_MARGIN = 0.05


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

    def __init__(self, rt: Runtime, battle_id: str, lock: BattleLock,
                 admitted: bool = False, battle: Battle | None = None) -> None:
        self.rt = rt
        self.bk = BattleKeys(battle_id)
        self.battle_id = battle_id
        self.lock = lock
        self.flush_id = uuid.uuid4().hex[:16]
        #: a set_battle_score slot taken before the lock: the first send uses it; any other
        #: call under the lock goes only if the limiter admits it at once (max_wait 0)
        self._slot = admitted
        #: the registration as read just before the lock (None: read it after the claim)
        self._battle = battle

    def _wait(self) -> float:
        if self._slot:
            self._slot = False
            return ADMITTED
        return 0.0

    def _ended(self, battle: Battle | None) -> bool:
        return battle is not None and battle.has_ended(self.rt.tclock.earliest(), END_MARGIN)

    def _near_end(self) -> bool:
        return near_end(self.rt, self._battle)

    def _check(self, res) -> None:
        if res == -1:
            raise LockLost(self.battle_id)

    def _mark(self, state: str, **fields: object) -> None:
        args: list = [self.flush_id, self.lock.token, "state", state]
        for name, value in fields.items():
            args += [name, value]
        self._check(self.rt.script("MARK")(keys=[self.bk.inflight, self.bk.lock], args=args))

    def _commit(self, inf: Inflight, applied: dict[str, int], unapplied: dict[str, int],
                outcome: str, request_id: str | None = None, op: int = 1) -> None:
        args: list = []
        for room in inf.scores:
            args += [room, applied.get(room, 0), unapplied.get(room, 0)]
        record = json.dumps({"id": self.flush_id, "at": self.rt.clock(), "op": op,
                             "scores": inf.scores, "outcome": outcome,
                             "request_id": request_id})
        res = self.rt.script("COMMIT")(
            keys=[self.bk.inflight, self.bk.applied, self.bk.unapplied, self.bk.flushes,
                  self.bk.lock],
            args=[self.flush_id, self.lock.token, record, len(inf.scores), *args])
        self._check(res)
        if unapplied:
            # Value only: a correction taking back gifts never counted (negative) that could
            # not be written is in the battle's record, not a negative count.
            lost = sum(v for v in unapplied.values() if v > 0)
            if lost:
                bump(self.rt.redis, "unapplied", lost)
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
        battle = self._battle = self._battle or Battle.load(rt, self.battle_id)
        if inf.state == "unsent" or inf.id == self.flush_id:
            if self._ended(battle):
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
        """OpType 1 of the batch (near the end, OpType 2 of the totals it makes); returns the
        settled outcome, or unsent/ambiguous."""
        if max(inf.scores.values(), default=0) > MAX_SCORE:
            # INGEST keeps every room's ledger within MAX_SCORE, so only a batch from an older
            # version can get here: it can never be sent, and retrying it for ever kept its
            # battle from finalizing. Kept unapplied, with its reason.
            self._commit(inf, {}, dict(inf.scores), "refused:out_of_bounds")
            return "refused"
        # "sending" from the moment an attempt may leave (a fresh claim already says it; an
        # `unsent` batch whose sender dies while the limiter holds it is rightly sent again).
        near = self._near_end()

        def leaving() -> None:  # each attempt, once the limiter admitted it: it may land now
            inf.sent_at = self.rt.clock()
            inf.settle_at = inf.sent_at + (NEAR_END_READ + 1.0 if near else LANDING_WINDOW)
            self._mark("sending", sent_at=inf.sent_at, settle_at=inf.settle_at)

        op, body, held = 1, inf.scores, {}
        near = near and self._battle is not None
        if near or min(inf.scores.values(), default=0) < 0:
            # OpType 2 of the totals (applied + delta). Near the end for every room: the same
            # score when Tencent holds `applied`, and it also overwrites an earlier write that
            # landed after its client gave up, which no audit could heal before the end. For a
            # reconcile correction of gifts never counted (a negative delta), the batch's rooms:
            # an accumulate by a negative Score is not documented to work.
            held = read_applied(self.rt, self.battle_id)
            rooms = {*self._battle.rooms, *inf.scores} if near else set(inf.scores)
            op, body = 2, totals(held, inf.scores, rooms)
        try:
            # One attempt: a retryable answer comes back through the schedule, not by sleeping
            # here with the lock held.
            res = self.rt.client.set_battle_score(
                self.battle_id, op, body, on_send=leaving, max_wait=self._wait(),
                max_attempts=1, read_timeout=read_timeout(self.rt, self._battle))
        except RateLimitTimeout:
            self._mark("unsent")
            return "rate_limited"
        except TencentError as err:
            return self._failed(inf, err)
        codes = res.codes()
        moved = inf.scores if op == 1 else {r: body[r] - held.get(r, 0) for r in inf.scores}
        applied = {r: moved[r] for r in inf.scores if codes.get(r, 0) == 0}
        unapplied = {r: v for r, v in inf.scores.items() if codes.get(r, 0) != 0}
        self._commit(inf, applied, unapplied, "ok", res.RequestId, op)
        return "ok"

    def _failed(self, inf: Inflight, err: TencentError) -> str:
        if err.outcome is Outcome.ambiguous:
            inf.settle_at = self.rt.clock() + (NEAR_END_AFTER if self._near_end()
                                               else AFTER_ERROR)
            self._mark("ambiguous", settle_at=inf.settle_at)
            return "ambiguous"
        if err.outcome is Outcome.retryable:  # certainly not applied: same batch, next tick
            self._mark("unsent")
            return "retry_later"
        if err.outcome is Outcome.refused:  # our configuration or a proxy: not applied
            self._mark("unsent")
            log.error("flush of %s refused (%s): kept pending, retried in %.0f s",
                      self.battle_id, err, REFUSED_RETRY)
            return "refused_later"
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

        We hold the battle's only write lock, so Tencent's score of each room is applied
        (what we know we wrote) or applied + delta, unless the request is still on its way or
        someone else wrote. A read showing every room at applied + delta settles the batch as
        applied; any other read settles it with an idempotent OpType 2 of what each room must
        hold (never a second OpType 1: a request read as "not applied" may land later), and
        the battle is audited once such a late landing is over. The read is taken once the
        request has ended (AFTER_ERROR) or its sender died (LANDING_WINDOW), or after the end.
        """
        ended = self._ended(Battle.load(self.rt, self.battle_id))
        if self.rt.clock() < inf.settle_at and not ended:
            self._mark("ambiguous")
            return "unresolved"  # the tick brings it back; no call until it can be judged
        try:
            info = self.rt.client.get_battle_info(
                self.battle_id, max_wait=0.0, max_attempts=1,
                read_timeout=read_timeout(self.rt, self._battle))
        except (TencentError, RateLimitTimeout) as err:
            log.warning("read-back of %s failed: %s", self.battle_id, err)
            self._mark("ambiguous")
            return "unresolved"
        held = {r.RoomId: r.Score for r in info.rooms}
        applied = read_applied(self.rt, self.battle_id)
        verdicts = {}
        for room, d in inf.scores.items():
            a = applied.get(room, 0)
            s = held.get(room)
            verdicts[room] = ("absent" if s is None else "applied" if s == max(0, a + d)
                              else "unsent" if s == a else "other")
        ended = self.rt.tclock.earliest() >= info.EndTime > 0 or info.Status == 2
        if all(v in ("applied", "absent") for v in verdicts.values()) or ended:
            moved = totals(applied, inf.scores, set(inf.scores))
            ok = {r: moved[r] - applied.get(r, 0) for r in inf.scores
                  if verdicts[r] == "applied"}
            rest = {r: d for r, d in inf.scores.items() if verdicts[r] != "applied"}
            self._commit(inf, ok, rest, "read_back", info.RequestId)
            return "ok"
        # Not (all) applied by the read: the request may still land (a write can outlive its
        # client's timeout), so OpType 1 is never sent again here. The absolute total is set
        # with OpType 2 (idempotent), and an audit after the landing window catches a write
        # that lands after it (worker/engine/audit.py).
        audit.after_ambiguity(self.rt, self._battle, self.battle_id)
        return self.overwrite(inf, applied)

    def overwrite(self, inf: Inflight, applied: dict[str, int]) -> str:
        """Set each room to applied + delta with OpType 2 (idempotent), then commit."""
        target = totals(applied, inf.scores, set(inf.scores))
        if self.lock.lost:  # frozen past the ttl: the next owner settles this batch
            raise LockLost(self.battle_id)
        try:
            res = self.rt.client.set_battle_score(
                self.battle_id, 2, target, max_wait=self._wait(), max_attempts=1,
                read_timeout=read_timeout(self.rt, self._battle))
        except (TencentError, RateLimitTimeout) as err:
            log.warning("settling overwrite of %s failed: %s", self.battle_id, err)
            self._mark("ambiguous")
            return "unresolved"
        codes = res.codes()
        ok = {r: target[r] - applied.get(r, 0) for r in inf.scores if codes.get(r, 0) == 0}
        rest = {r: d for r, d in inf.scores.items() if codes.get(r, 0) != 0}
        self._commit(inf, ok, rest, "overwrite", res.RequestId, 2)
        return "ok"


def totals(held: dict[str, int], deltas: dict[str, int], rooms: set[str]) -> dict[str, int]:
    """What each of `rooms` must hold once `deltas` land on `held`: the body of an OpType 2.
    Never below zero (a correction of gifts never counted cannot take a room under it)."""
    return {r: max(0, held.get(r, 0) + deltas.get(r, 0)) for r in rooms}


def needs(rt: Runtime, battle_id: str) -> str:
    """What a flush of this battle would do now, read without the lock: `idle` (nothing to
    send), `busy` (another flush holds the battle, its batch in flight), `unsettled` (a batch
    left by its sender must settle first: no call yet), `free` (settle or record without a
    set_battle_score call: the battle has ended) or `call`."""
    return _needs(rt, battle_id)[0]


def _needs(rt: Runtime, battle_id: str) -> tuple[str, Battle | None]:
    """`needs`, and the battle's registration read with it (one round trip)."""
    bk = BattleKeys(battle_id)
    pipe = pipeline(rt.redis)
    pipe.hlen(bk.pending)
    pipe.hmget(bk.inflight, "state", "settle_at", "sent_at", "at")
    pipe.hgetall(bk.meta)
    pipe.exists(bk.lock)
    pending, (state, settle_at, sent_at, at), meta, locked = pipe.execute()
    battle = Battle.from_meta(battle_id, meta)
    if battle is not None and battle.has_ended(rt.tclock.earliest(), END_MARGIN):
        return ("free" if pending or state else "idle"), battle
    if state in ("sending", "ambiguous"):
        settle = float(settle_at or float(sent_at or at or 0) + LANDING_WINDOW)
        if rt.clock() < settle:
            # Held: a live flush is sending it and settles it in a moment, so this is only
            # busy. Taken for unsettled, an end-game flush that met a freshness flush's
            # request in flight put the battle off until the request's landing window closed,
            # past its end: its last value missed the end (1 battle in 2,000, twice).
            return ("busy" if locked else "unsettled"), battle
        return "call", battle
    return ("call" if pending or state else "idle"), battle


def settle_time(rt: Runtime, battle_id: str) -> float:
    """When the battle's in-flight batch can be judged (now if there is none)."""
    bk = BattleKeys(battle_id)
    settle_at, sent_at, at = rt.redis.hmget(bk.inflight, "settle_at", "sent_at", "at")
    if settle_at is None and sent_at is None and at is None:
        return rt.clock()
    return float(settle_at or float(sent_at or at or 0) + LANDING_WINDOW)


def flush_battle(rt: Runtime, battle_id: str, lane: str = LOW, admitted: bool = False,
                 slot_wait: float = SLOT_WAIT, final: bool = False) -> str:
    """Flush one battle; returns an outcome name.

    Nothing waits while holding the battle's lock: the call slot is taken first (`admitted`:
    the caller already holds one), and a lock held by another flush is waited for a moment
    (`LOCK_WAIT`), the time its batch takes to settle, before the battle goes back to the
    schedule. A battle with nothing to send, or whose batch must settle first, takes no slot.
    """
    bk = BattleKeys(battle_id)
    need, battle = _needs(rt, battle_id)
    if need == "idle" and final:
        return audit.last_write(rt, battle)
    if need == "idle":
        forget_if_idle(rt, bk)
        return "idle"
    if need == "busy":
        _due_soon(rt, battle_id)
        return "busy"
    if need == "unsettled":
        rt.redis.zadd(keys.FLUSH_DUE, {battle_id: settle_time(rt, battle_id)}, xx=True)
        return "unsettled"
    if need == "call" and not admitted:
        try:
            rt.client.limiter.acquire("set_battle_score", slot_wait, lane)
        except RateLimitTimeout:
            _first_in_line(rt, battle_id)
            return "rate_limited"
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        with BattleLock(rt.redis, bk.lock) as lock:
            if lock.held:
                try:
                    outcome = Flusher(rt, battle_id, lock, admitted=need == "call",
                                      battle=battle).run()
                except LockLost:
                    log.error("lost the lock of %s mid-flush; its next owner resumes",
                              battle_id)
                    return "lock_lost"
                break
        if time.monotonic() >= deadline:
            _due_soon(rt, battle_id)
            return "busy"
        time.sleep(0.01)
    if outcome == "idle":
        forget_if_idle(rt, bk)
    elif outcome in ("retry_later", "rate_limited"):
        _due_soon(rt, battle_id)
    elif outcome == "unresolved":
        settle = settle_time(rt, battle_id)
        rt.redis.zadd(keys.FLUSH_DUE, {battle_id: settle}, xx=True)
        if lane == HIGH:  # in its end game: judged the moment it can be, not at a tick
            rt.redis.zadd(keys.ENDGAME_DUE, {battle_id: settle}, nx=True)
    elif outcome == "refused_later":
        rt.redis.zadd(keys.FLUSH_DUE, {battle_id: rt.clock() + REFUSED_RETRY})
    return outcome


def _due_soon(rt: Runtime, battle_id: str) -> None:
    rt.redis.zadd(keys.FLUSH_DUE, {battle_id: rt.clock() + RETRY_SOON})


def _first_in_line(rt: Runtime, battle_id: str) -> None:
    """Due again at the head of the queue: a flush that found no call slot keeps its turn.
    (Due RETRY_SOON, it went behind every battle already waiting and waited a whole round
    more: max freshness twice the fair share at 2,000 battles.)"""
    head = rt.redis.zrange(keys.FLUSH_DUE, 0, 0, withscores=True)
    now = rt.clock()
    rt.redis.zadd(keys.FLUSH_DUE, {battle_id: min(head[0][1], now) - 0.001 if head else now})


def forget_if_idle(rt: Runtime, bk: BattleKeys) -> None:
    """Take an idle battle off the due list without racing a concurrent ingest."""
    forget_idle(rt, [bk.battle_id])


def holding_value(rt: Runtime, battle_ids: list[str]) -> list[str]:
    """The battles that have pending or in-flight value (one round trip)."""
    pipe = pipeline(rt.redis)
    for bid in battle_ids:
        bk = BattleKeys(bid)
        pipe.hlen(bk.pending)
        pipe.exists(bk.inflight)
    res = pipe.execute()
    return [b for i, b in enumerate(battle_ids) if res[2 * i] or res[2 * i + 1]]


def forget_idle(rt: Runtime, battle_ids: list[str]) -> None:
    """Take idle battles off the due list without racing a concurrent ingest (three round
    trips however many: the tick forgets dozens at a time)."""
    if not battle_ids:
        return
    rt.redis.zrem(keys.FLUSH_DUE, *battle_ids)
    # An ingest that added pending before our ZREM also ran its ZADD NX before it: re-add.
    back = holding_value(rt, battle_ids)
    if back:
        rt.redis.zadd(keys.FLUSH_DUE, {b: rt.clock() for b in back}, nx=True)
