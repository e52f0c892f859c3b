"""A flush's in-flight batch: its Redis record, when it can be judged, the scripts that move it."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass

from worker.engine.battles import registry
from worker.engine.battles.registry import Battle
from worker.engine.flush.near_end import END_MARGIN, NEAR_END_READ, near_end
from worker.engine.runtime import Runtime
from worker.engine.state.counters import bump
from worker.engine.state.keys import BattleKeys
from worker.engine.state.lock import RedisLock
from worker.engine.tencent.client import ADMITTED
from worker.engine.tencent.models import OpType
from worker.engine.timers import TIMERS

log = logging.getLogger("scorer.flush")

#: A request whose answer we never got may still be applied for a while: Tencent may be
#: holding it. A read-back taken sooner could see "not applied", and a re-send would then count
#: the batch twice, so a batch is judged only once it cannot land any more (or after the end):
#: - its sender died (SIGKILL, lock taken over): LANDING_WINDOW after it was sent;
#: - its sender saw the request end (a reset, a timeout): AFTER_ERROR after that moment;
#: - near its end (near_end.near_end): NEAR_END_AFTER after it ended.
#: Why each is what it is: worker/engine/timers.py (FlushTimers).
LANDING_WINDOW = TIMERS.flush.landing_window
AFTER_ERROR = TIMERS.flush.after_error
NEAR_END_AFTER = TIMERS.flush.near_end_after


#: A field of the in-flight hash as Redis answers it, or as already parsed.
Field = str | bytes | float | None
#: An argument of a Lua script.
Arg = str | int | float


class LockLost(RuntimeError):
    """Our battle lock expired under us: stop, the next owner resolves what we left."""


def settle_of(settle_at: Field, sent_at: Field, at: Field) -> float:
    """When a batch recorded with these fields can be judged (see LANDING_WINDOW): its
    `settle_at`, or LANDING_WINDOW after it was sent (`at`: a record of an older version)."""
    return float(settle_at or float(sent_at or at or 0) + LANDING_WINDOW)


@dataclass
class Inflight:
    """The claimed batch of one flush: its id, state and per-room deltas."""

    id: str
    state: str  # sending | unsent | ambiguous
    scores: dict[str, int]
    sent_at: float = 0.0  # when the last request of the batch may have left (0: never sent)
    settle_at: float = 0.0  # when that request can no longer land (see LANDING_WINDOW)

    @classmethod
    def parse(cls, flat: list[str]) -> Inflight:
        """The batch of a CLAIM's answer (the in-flight hash, flattened)."""
        d = dict(zip(flat[::2], flat[1::2], strict=False))
        scores = {k[2:]: int(v) for k, v in d.items() if k.startswith("r:")}
        sent_at = float(d.get("sent_at") or d.get("at") or 0.0)
        return cls(d["id"], d.get("state", "sending"), scores, sent_at,
                   settle_of(d.get("settle_at"), sent_at, None))

    def sending(self, now: float, near: bool) -> None:
        """An attempt leaves now: it can land until its answer is due (near the end), or for
        the whole LANDING_WINDOW."""
        self.sent_at = now
        self.settle_at = now + (NEAR_END_READ + 1.0 if near else LANDING_WINDOW)

    def unanswered(self, now: float, near: bool) -> None:
        """Its request ended now without an answer: judged a moment later."""
        self.settle_at = now + (NEAR_END_AFTER if near else AFTER_ERROR)


class Claim:
    """One flush's hold on a battle's in-flight batch, under the battle's lock: the Lua scripts
    that claim, mark, adopt and commit it, each fenced by the lock's token."""

    def __init__(self, rt: Runtime, battle_id: str, lock: RedisLock,
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
        self.battle = battle

    def max_wait(self) -> float:
        """max_wait of the next set_battle_score: the slot taken before the lock, once."""
        if self._slot:
            self._slot = False
            return ADMITTED
        return 0.0

    def ended(self, battle: Battle | None) -> bool:
        """True once no call of `battle` can land any more."""
        return battle is not None and battle.has_ended(self.rt.tclock.earliest(), END_MARGIN)

    def near_end(self) -> bool:
        """True when the battle may end within near_end.NEAR_END s."""
        return near_end(self.rt, self.battle)

    def ending(self) -> Battle | None:
        """The battle's registration when it may end within NEAR_END s, else None."""
        return self.battle if self.near_end() else None

    def check(self, res: object) -> None:
        """Raise LockLost when a script refused our token (it answers -1)."""
        if res == -1:
            raise LockLost(self.battle_id)

    def claim(self) -> Inflight | None:
        """Claim the pending deltas as a batch, or resume the batch in flight (None: idle)."""
        res = self.rt.script("CLAIM")(keys=[self.bk.pending, self.bk.inflight, self.bk.lock],
                                      args=[self.flush_id, self.rt.clock(), self.lock.token])
        self.check(res)
        return Inflight.parse(res) if res else None

    def mark(self, state: str, **fields: Arg) -> None:
        """Set the batch's state (and `fields`) in its record."""
        args: list[Arg] = [self.flush_id, self.lock.token, "state", state]
        for name, value in fields.items():
            args += [name, value]
        self.check(self.rt.script("MARK")(keys=[self.bk.inflight, self.bk.lock], args=args))

    def adopt(self, inf: Inflight) -> None:
        """Make a batch claimed under another flush id ours."""
        if inf.id != self.flush_id:
            self.check(self.rt.script("ADOPT")(keys=[self.bk.inflight, self.bk.lock],
                                                args=[inf.id, self.flush_id, self.lock.token]))
            inf.id = self.flush_id

    def commit(self, inf: Inflight, applied: dict[str, int], unapplied: dict[str, int],
               outcome: str, request_id: str | None = None,
               op: OpType = OpType.ACCUMULATE) -> None:
        """Settle the batch once: `applied` into the ledger, `unapplied` kept with `outcome`,
        and a record in the battle's history."""
        args: list[Arg] = []
        for room in inf.scores:
            args += [room, applied.get(room, 0), unapplied.get(room, 0)]
        record = json.dumps({"id": self.flush_id, "at": self.rt.clock(), "op": op,
                             "scores": inf.scores, "outcome": outcome,
                             "request_id": request_id})
        res = self.rt.script("COMMIT")(
            keys=[self.bk.inflight, self.bk.applied, self.bk.unapplied, self.bk.flushes,
                  self.bk.lock, self.bk.meta],
            args=[self.flush_id, self.lock.token, record, len(inf.scores), *args,
                  registry.KEEP_AFTER_END])
        self.check(res)
        if unapplied:
            # Value only: a correction taking back gifts never counted (negative) that could
            # not be written is in the battle's record, not a negative count.
            lost = sum(v for v in unapplied.values() if v > 0)
            if lost:
                bump(self.rt.redis, "unapplied", lost)
            log.warning("flush %s of %s left %s unapplied (%s)", self.flush_id,
                        self.battle_id, unapplied, outcome)
