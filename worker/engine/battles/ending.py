"""The end of a battle: Tencent's final scores from the end webhook, then its close (finalize)."""

from __future__ import annotations

import json
import logging

from worker.engine.battles.records import Battle
from worker.engine.battles.registry import KEEP_AFTER_END, register
from worker.engine.battles.roomindex import index_value
from worker.engine.events import EndEvent
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.counters import bump
from worker.engine.state.keys import BattleKeys, RoomKeys
from worker.engine.state.pipeline import pipeline
from worker.engine.timers import TIMERS

log = logging.getLogger("scorer.control")

#: A battle is finalized this long after its end (late answers, the end webhook).
FINAL_GRACE = TIMERS.battles.final_grace
#: What an ended battle still holds this long after its end is given up (a batch that may have
#: landed, its read-back failing all along): worker/engine/timers.py, FlushTimers.
GIVE_UP_AFTER_END = TIMERS.flush.give_up_after_end


def end_of(battle: Battle | None) -> float:
    """When `battle` ended as far as we know: its end, or when Tencent told us it had ended if
    that came sooner (an early end); 0 if neither is known."""
    ends = [t for t in (battle.end, battle.ended_at) if t > 0] if battle else []
    return min(ends, default=0.0)


def record_end(rt: Runtime, ev: EndEvent) -> None:
    """Keep Tencent's final scores from the end webhook; finalize() compares them later.

    A battle first heard of at its end is registered from the end webhook itself, so gifts
    held for it are accounted as after-the-end rather than outside any battle.
    """
    bk = BattleKeys(ev.BattleId)
    battle = Battle.load(rt, ev.BattleId)
    if (battle is None or not battle.start) and ev.StartTime and ev.Duration:
        battle = register(rt, ev.BattleId, float(ev.StartTime), ev.Duration,
                          {r.RoomId: r.Owner_Account for r in ev.rooms}, "end_webhook")
    scores = {r.RoomId: r.Score for r in ev.rooms if r.Score is not None}
    mapping: dict[str, str | float] = {"end_scores": json.dumps(scores),
                                       "ended_by_webhook": rt.clock()}
    if ev.EndTime and battle and battle.start and ev.EndTime < battle.end:
        # Ended early (owners left): the window closes at EndTime.
        mapping["end"] = float(ev.EndTime)
        pipe = pipeline(rt.redis)
        for room, owner in battle.rooms.items():
            pipe.hset(RoomKeys(room).battles, ev.BattleId,
                      index_value(battle.start, float(ev.EndTime), owner))
        pipe.zadd(keys.ACTIVE, {ev.BattleId: float(ev.EndTime)})
        pipe.execute()
    pipe = pipeline(rt.redis)
    pipe.hset(bk.meta, mapping=mapping)
    if battle is None:  # an end we cannot place in any battle: keep it, but not forever
        pipe.expire(bk.meta, KEEP_AFTER_END)
    pipe.execute()


def finalize(rt: Runtime, battle_ids: list[str], overdue: list[str] | None = None) -> int:
    """Close ended battles once nothing is pending: compare, expire their keys, forget them;
    returns how many closed. (One read for them all: at 40 endings a second, a read per
    battle and per key made the tick too slow to tick.)

    A battle that still holds value (pending, or a batch in flight) is due a flush, which
    records what can no longer be written or settles the batch, and goes to the back of the line
    of ended battles (its ACTIVE score becomes now - FINAL_GRACE), so battles that cannot close
    (a read-back failing for minutes) never keep a later one from closing: the tick looks at
    the 200 first. One GIVE_UP_AFTER_END past its end is added to `overdue` (the tick gives it
    up: worker/engine/flush/settle.py, give_up)."""
    if not battle_ids:
        return 0
    pipe = pipeline(rt.redis)
    for bid in battle_ids:
        bk = BattleKeys(bid)
        pipe.hlen(bk.pending)
        pipe.exists(bk.inflight)
        pipe.hgetall(bk.meta)
        pipe.hgetall(bk.applied)
    res = pipe.execute()
    now, closed, waiting = rt.clock(), 0, []
    for i, bid in enumerate(battle_ids):
        pending, inflight, meta, applied = res[4 * i:4 * i + 4]
        if pending or inflight:
            waiting.append(bid)
            if (overdue is not None
                    and now >= end_of(Battle.from_meta(bid, meta)) + GIVE_UP_AFTER_END):
                overdue.append(bid)
            continue
        _close(rt, bid, meta, {k: int(v) for k, v in applied.items()})
        closed += 1
    if waiting:
        pipe = pipeline(rt.redis)
        # a flush gets 100006 and records the rest as unapplied, or settles the batch
        pipe.zadd(keys.FLUSH_DUE, {bid: now for bid in waiting}, nx=True)
        pipe.zadd(keys.ACTIVE, {bid: now - FINAL_GRACE for bid in waiting}, xx=True)
        pipe.execute()
    return closed


def _close(rt: Runtime, battle_id: str, meta: dict[str, str], applied: dict[str, int]) -> None:
    """Mark a battle finished (with any difference between the end scores and our ledger),
    let its keys expire KEEP_AFTER_END from now, and take it out of every schedule."""
    bk = BattleKeys(battle_id)
    battle = Battle.from_meta(battle_id, meta)
    end_scores = json.loads(meta.get("end_scores") or "null")
    mapping = {"status": "finished", "finished_at": rt.clock(),
               "final_applied": json.dumps(applied)}
    if end_scores is not None and battle is not None:
        diff = {r: (applied.get(r, 0), s) for r, s in end_scores.items()
                if applied.get(r, 0) != s and r in battle.rooms}
        if diff:
            bump(rt.redis, "end_mismatch")
            mapping["end_mismatch"] = json.dumps(diff)
            log.warning("battle %s ended with scores that differ from our ledger: %s",
                        battle_id, diff, extra={"battle_id": battle_id})
    pipe = pipeline(rt.redis)
    pipe.hset(bk.meta, mapping=mapping)
    expire_at = int(rt.clock() + KEEP_AFTER_END)
    for key in bk.all():
        if key not in (bk.lock, bk.rlock):
            pipe.expireat(key, expire_at)
    for zkey in (keys.ACTIVE, keys.FLUSH_DUE, keys.ENDGAME_DUE, keys.RECONCILE_DUE,
                 keys.UNRESOLVED, keys.AUDIT_DUE, keys.FINAL_DUE):
        pipe.zrem(zkey, battle_id)
    if battle is not None and battle.rooms:  # (reconcile's last pass may not come)
        pipe.zrem(keys.RECON_UNBASED, *(f"{battle_id}|{room}" for room in battle.rooms))
    # A safety net for rooms whose battle ended by a path that forgot them: a day on, gone.
    pipe.zremrangebyscore(keys.RECON_UNBASED, "-inf", rt.clock() - KEEP_AFTER_END)
    pipe.execute()
