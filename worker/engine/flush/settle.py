"""Settling a batch that may or may not have landed: read back, then accept or overwrite it."""

from __future__ import annotations

import logging

from worker.engine.battles.registry import Battle, read_applied
from worker.engine.flush import audit
from worker.engine.flush.inflight import Claim, Inflight
from worker.engine.flush.near_end import read_timeout
from worker.engine.flush.overwrite import moved, overwrite, totals
from worker.engine.tencent.errors import TencentError
from worker.engine.tencent.models import OpType

log = logging.getLogger("scorer.flush")


def verdict(held: int | None, applied: int, target: int) -> str:
    """What a read of one room says of a batch: `absent` (not in the read), `applied` (it
    holds applied + delta), `unsent` (it holds applied) or `other` (someone else wrote)."""
    if held is None:
        return "absent"
    if held == target:
        return "applied"
    return "unsent" if held == applied else "other"


def resolve(claim: Claim, inf: Inflight) -> str:
    """Settle a batch that may or may not have been applied, without double counting.

    We hold the battle's only write lock, so Tencent's score of each room is applied
    (what we know we wrote) or applied + delta, unless the request is still on its way or
    someone else wrote. A read showing every room at applied + delta settles the batch as
    applied; any other read settles it with an idempotent OpType 2 of what each room must
    hold (never a second OpType 1: a request read as "not applied" may land later), and
    the battle is audited once such a late landing is over. The read is taken once the
    request has ended (AFTER_ERROR) or its sender died (LANDING_WINDOW), or after the end.
    """
    rt = claim.rt
    ended = claim.ended(Battle.load(rt, claim.battle_id))
    if rt.clock() < inf.settle_at and not ended:
        claim.mark("ambiguous")
        return "unresolved"  # the tick brings it back; no call until it can be judged
    try:
        info = rt.client.get_battle_info(
            claim.battle_id, max_wait=0.0, max_attempts=1,
            read_timeout=read_timeout(rt, claim.battle))
    except TencentError as err:
        log.warning("read-back of %s failed: %s", claim.battle_id, err)
        claim.mark("ambiguous")
        return "unresolved"
    held = {r.RoomId: r.Score for r in info.rooms}
    applied = read_applied(rt, claim.battle_id)
    target = totals(applied, inf.scores, set(inf.scores))
    verdicts = {room: verdict(held.get(room), applied.get(room, 0), target[room])
                for room in inf.scores}
    ended = rt.tclock.earliest() >= info.EndTime > 0 or info.Status == 2
    if all(v in ("applied", "absent") for v in verdicts.values()) or ended:
        ok = moved(target, applied, [r for r in inf.scores if verdicts[r] == "applied"])
        rest = {r: d for r, d in inf.scores.items() if verdicts[r] != "applied"}
        claim.commit(inf, ok, rest, "read_back", info.RequestId)
        return "ok"
    # Not (all) applied by the read: the request may still land (a write can outlive its
    # client's timeout), so OpType 1 is never sent again here. The absolute total is set
    # with OpType 2 (idempotent), and an audit after the landing window catches a write
    # that lands after it (worker/engine/flush/audit.py).
    audit.after_ambiguity(rt, claim.battle, claim.battle_id)
    return overwrite_batch(claim, inf, applied, target)


def overwrite_batch(claim: Claim, inf: Inflight, applied: dict[str, int],
                    target: dict[str, int]) -> str:
    """Set each room to `target` (applied + delta) with OpType 2 (idempotent), then commit."""
    res = overwrite(claim.rt, claim.battle_id, claim.battle, claim.lock, target,
                    "settling overwrite", log, max_wait=claim.max_wait())
    if res is None:
        claim.mark("ambiguous")
        return "unresolved"
    ok, failed = res.split(inf.scores)
    claim.commit(inf, moved(target, applied, ok), {r: inf.scores[r] for r in failed},
                 "overwrite", res.RequestId, OpType.OVERWRITE)
    return "ok"
