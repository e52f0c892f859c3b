"""The one OpType 2 writer: set rooms' absolute scores under a battle's lock, in one attempt."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from worker.engine.battles.registry import Battle
from worker.engine.flush.inflight import LockLost
from worker.engine.flush.near_end import read_timeout
from worker.engine.runtime import Runtime
from worker.engine.state.lock import RedisLock
from worker.engine.tencent.client import ADMITTED
from worker.engine.tencent.errors import Fenced, Outcome, TencentError
from worker.engine.tencent.models import OpType, SetBattleScoreResult


def totals(held: dict[str, int], deltas: dict[str, int], rooms: set[str]) -> dict[str, int]:
    """What each of `rooms` must hold once `deltas` land on `held`: the body of an OpType 2.
    Never below zero (a correction of gifts never counted cannot take a room under it)."""
    return {r: max(0, held.get(r, 0) + deltas.get(r, 0)) for r in rooms}


def moved(target: dict[str, int], held: dict[str, int], rooms: Iterable[str]) -> dict[str, int]:
    """How far an OpType 2 of `target` moved each of `rooms` from `held` (the ledger's
    applied), which is what it adds to `applied`."""
    return {r: target[r] - held.get(r, 0) for r in rooms}


def overwrite(rt: Runtime, battle_id: str, battle: Battle | None, lock: RedisLock,
              target: dict[str, int], what: str, log: logging.Logger, *,
              max_wait: float = ADMITTED,
              on_ambiguous: Callable[[], None] | None = None) -> SetBattleScoreResult | None:
    """OpType 2 of `target` (idempotent) under `lock`, one attempt, on the call slot the caller
    holds (`max_wait` ADMITTED; 0.0: only if the limiter admits it at once). Returns the
    answer, or None when the call failed (logged to `log` as "`what` of ... failed";
    `on_ambiguous()` when it may still land). Raises LockLost, before any call, when the
    lock was lost: the battle may have another writer now."""
    if not lock.fresh():  # frozen past the lease: the next owner settles the battle
        raise LockLost(battle_id)
    try:
        return rt.client.set_battle_score(battle_id, OpType.OVERWRITE, target,
                                          max_wait=max_wait, max_attempts=1,
                                          read_timeout=read_timeout(rt, battle),
                                          fence=lock.fresh)
    except Fenced:  # stopped before it left: as above
        raise LockLost(battle_id) from None
    except TencentError as err:
        log.warning("%s of %s failed: %s", what, battle_id, err)
        if on_ambiguous is not None and err.outcome is Outcome.ambiguous:
            on_ambiguous()
        return None
