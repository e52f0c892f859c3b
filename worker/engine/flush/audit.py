"""Score audit: compare the score Tencent holds with the ledger's applied total; heal a difference.

Why: exactly-once rests on our ledger, and some faults put a write on Tencent that the ledger
does not show: a request that lands after the client gave up on it (its batch was settled
meanwhile), a Redis that lost its last second (a claim, send and commit gone: the batch is
pending again and is sent twice), a foreign write. Reconcile compares gift counts, not the
score we wrote, so none of these would ever heal. An audit reads the battle's score
(`get_battle_info`, its own API budget) under the battle's lock with no batch in flight, when
the score Tencent holds must equal `applied`, and corrects a difference with one OpType 2 of
`applied` (idempotent), recorded in the battle's history, the `audit_corrections` counter
and the log.

When: every TIMERS.audit.interval s for each running battle (from its start), a settled
ambiguity AFTER_AMBIGUITY s after it settled (a late write lands by then) but no later than
END_LEAD s before the end, and every active battle at once after the tick sees Redis
restarted (`check_restart`). Audits never wait for a call slot under the lock.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from worker.engine.battles.registry import Battle, read_applied
from worker.engine.flush.inflight import LockLost
from worker.engine.flush.near_end import END_MARGIN, FINAL_LEAD, read_timeout
from worker.engine.flush.overwrite import overwrite
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.counters import bump
from worker.engine.state.keys import BattleKeys
from worker.engine.state.lock import RedisLock
from worker.engine.state.pipeline import pipeline
from worker.engine.tencent.client import ADMITTED
from worker.engine.tencent.errors import RateLimitTimeout, TencentError
from worker.engine.tencent.limiter import LOW
from worker.engine.tencent.models import OpType, SetBattleScoreResult
from worker.engine.timers import TIMERS

if TYPE_CHECKING:
    from redis.client import Pipeline

    from worker.engine.state.pipeline import SerialBatch

log = logging.getLogger("scorer.audit")

#: A settled ambiguity is audited AFTER_AMBIGUITY after it settled, but no later than END_LEAD
#: before the battle's end; an audit that could not run (no slot, lock busy, batch in flight)
#: is due again RETRY later; it waits TIMERS.audit.slot_wait for a get_battle_info slot (holding
#: no lock). Why each is what it is: worker/engine/timers.py (AuditTimers). Bound here because
#: tests read them:
AFTER_AMBIGUITY = TIMERS.audit.after_ambiguity
END_LEAD = TIMERS.audit.end_lead
RETRY = TIMERS.audit.retry


def schedule(rt: Runtime, battle_ids: list[str], at: float,
             pipe: Pipeline | SerialBatch | None = None) -> None:
    """Make the audits of these battles due at `at`, or sooner if already due sooner."""
    if battle_ids:
        (pipe or rt.redis).zadd(keys.AUDIT_DUE, {b: at for b in battle_ids}, lt=True)


def after_ambiguity(rt: Runtime, battle: Battle | None, battle_id: str) -> None:
    """Audit a battle whose ambiguous write was settled: once a late landing is possible no
    more, or just before the end if that comes first."""
    at = rt.clock() + AFTER_AMBIGUITY
    if battle is not None and battle.end:
        at = min(at, max(rt.clock(), battle.end - END_LEAD))
        # ... and one last absolute write just before the end (endgame.FINAL_LEAD), after
        # any late landing that audit could not wait for.
        rt.redis.zadd(keys.FINAL_DUE, {battle_id: battle.end - FINAL_LEAD}, nx=True)
    schedule(rt, [battle_id], at)


def check_restart(rt: Runtime) -> bool:
    """True when the Redis server restarted since the tick last looked: under `appendfsync
    everysec` its last second may be gone, with claims and commits of writes that Tencent did
    apply, and with the records of writes that may still land (held by Tencent past their
    client's timeout). So every active battle is audited now, again once such a write can have
    landed (AFTER_AMBIGUITY after the restart was seen: `_next` keeps that audit), and a
    battle ending before then gets the last absolute write just before its end (FINAL_DUE),
    as after any ambiguity."""
    run_id = rt.redis.info("server").get("run_id")
    last = rt.redis.getset(keys.REDIS_RUN, run_id)
    if last is None or last == run_id:
        return False
    now = rt.clock()
    rt.redis.set(keys.REDIS_RESTART_SEEN, repr(now), ex=int(TIMERS.audit.interval * 4))
    active = rt.redis.zrange(keys.ACTIVE, 0, -1, withscores=True)
    if active:
        pipe = pipeline(rt.redis)
        schedule(rt, [b for b, _ in active], now, pipe)
        pipe.sadd(keys.AUDIT_FORCED, *[b for b, _ in active])
        pipe.expire(keys.AUDIT_FORCED, int(TIMERS.audit.interval * 4))
        pipe.execute()
        for battle_id, _ in active:  # the last write where no audit can follow the landing
            battle = Battle.load(rt, battle_id)
            if battle is not None and battle.end and battle.end - END_LEAD < now + AFTER_AMBIGUITY:
                rt.redis.zadd(keys.FINAL_DUE, {battle_id: battle.end - FINAL_LEAD}, nx=True)
    log.warning("Redis restarted (run_id changed): auditing %d active battles", len(active))
    return True


def audit_battle(rt: Runtime, battle_id: str, forced: bool = False) -> str:
    """Audit one battle; returns an outcome name (ok, corrected, busy, ended, ...). A battle
    with nothing applied yet is not read unless `forced` or Redis restarted (its last second
    may have held the only commit)."""
    forced = forced or bool(rt.redis.sismember(keys.AUDIT_FORCED, battle_id))
    bk = BattleKeys(battle_id)
    battle = Battle.load(rt, battle_id)
    now = rt.clock()
    if battle is None or not battle.start or battle.has_ended(rt.tclock.earliest(), END_MARGIN):
        rt.redis.zrem(keys.AUDIT_DUE, battle_id)
        return "ended"
    if not rt.redis.exists(bk.applied) and not forced:
        _next(rt, battle)  # nothing written yet: Tencent holds 0 (a restart audit still reads)
        return "nothing"
    if rt.redis.exists(bk.inflight):  # the flush settles it first
        rt.redis.zadd(keys.AUDIT_DUE, {battle_id: now + RETRY}, xx=True)
        return "inflight"
    try:
        rt.client.limiter.acquire("get_battle_info", TIMERS.audit.slot_wait, LOW)
    except RateLimitTimeout:
        rt.redis.zadd(keys.AUDIT_DUE, {battle_id: now + RETRY}, xx=True)
        return "rate_limited"
    with RedisLock(rt.redis, bk.lock) as lock:
        if not lock.held or rt.redis.exists(bk.inflight):
            rt.redis.zadd(keys.AUDIT_DUE, {battle_id: now + RETRY}, xx=True)
            return "busy"
        outcome = _audit_locked(rt, battle, lock)
    if outcome in ("busy", "rate_limited", "failed"):
        rt.redis.zadd(keys.AUDIT_DUE, {battle_id: rt.clock() + RETRY}, xx=True)
    else:
        _next(rt, battle)
        if forced and not _restart_follow_up(rt):
            rt.redis.srem(keys.AUDIT_FORCED, battle_id)
    return outcome


def _restart_follow_up(rt: Runtime) -> float | None:
    """When the audit after a restart's landing window is due (check_restart), None if past."""
    seen = rt.redis.get(keys.REDIS_RESTART_SEEN)
    if seen is None or float(seen) + AFTER_AMBIGUITY <= rt.clock():
        return None
    return float(seen) + AFTER_AMBIGUITY


def _next(rt: Runtime, battle: Battle) -> None:
    """Due again TIMERS.audit.interval from now, once more just before the end, or no more."""
    at = rt.clock() + TIMERS.audit.interval
    follow_up = _restart_follow_up(rt)
    if follow_up is not None:
        # once more when a write held across the restart (its record lost) can have landed;
        # forced (AUDIT_FORCED stays until then): the lost second may have held the only commit
        at = min(at, follow_up)
    if battle.end - END_LEAD > rt.clock():
        at = min(at, battle.end - END_LEAD)  # one more just before the buzzer
    elif battle.end:
        rt.redis.zrem(keys.AUDIT_DUE, battle.battle_id)
        return
    rt.redis.zadd(keys.AUDIT_DUE, {battle.battle_id: at}, xx=True)


def _audit_locked(rt: Runtime, battle: Battle, lock: RedisLock) -> str:
    """Read the battle's score and overwrite any room that differs from `applied`."""
    bk = BattleKeys(battle.battle_id)
    try:
        info = rt.client.get_battle_info(battle.battle_id, max_wait=ADMITTED, max_attempts=1,
                                         read_timeout=read_timeout(rt, battle))
    except TencentError as err:
        log.warning("audit read of %s failed: %s", battle.battle_id, err)
        return "failed"
    if rt.tclock.earliest() >= info.EndTime > 0:  # never `Status`: its values are undocumented
        return "ended"  # no write can land: finalize compares the end scores
    applied = read_applied(rt, battle.battle_id)
    held = {r.RoomId: r.Score for r in info.rooms}
    diff = {room: (applied.get(room, 0), held[room]) for room in battle.rooms
            if room in held and held[room] != applied.get(room, 0)}
    if not diff:
        return "ok"
    target = {room: want for room, (want, _) in diff.items()}
    if rt.client.limiter.try_acquire("set_battle_score", LOW) > 0:
        return "rate_limited"  # never wait under the lock: due again in a moment
    res = _overwrite(rt, battle, lock, target, "audit overwrite")
    if res is None:
        return "failed"  # OpType 2 is idempotent: the next audit reads and writes again
    ok, _ = res.split(target)
    fixed = {r: diff[r] for r in ok}
    record = json.dumps({"id": "audit", "at": rt.clock(), "op": OpType.OVERWRITE,
                         "scores": target, "outcome": "audit",
                         "held_before": {r: h for r, (_, h) in fixed.items()},
                         "request_id": res.RequestId})
    pipe = pipeline(rt.redis)
    pipe.lpush(bk.flushes, record)
    pipe.ltrim(bk.flushes, 0, 99)
    bump(pipe, "audit_corrections", len(fixed))
    pipe.execute()
    log.warning("audit of %s corrected Tencent's score to the ledger: %s (ledger, held)",
                battle.battle_id, fixed, extra={"battle_id": battle.battle_id,
                                                "request_id": res.RequestId})
    return "corrected"


def last_write(rt: Runtime, battle: Battle | None) -> str:
    """The last absolute write of a battle whose ambiguous write may still land (keys.FINAL_DUE;
    the caller holds a call slot): under the lock, with nothing in flight, OpType 2 of the
    ledger for every room, unread (there is no time for a read). A batch in flight or
    pending value gets the end game's flush instead, which near the end writes absolute
    totals too."""
    if battle is None or battle.has_ended(rt.tclock.earliest(), END_MARGIN):
        return "ended"
    bk = BattleKeys(battle.battle_id)
    with RedisLock(rt.redis, bk.lock) as lock:
        if not lock.held or rt.redis.exists(bk.inflight):
            return "busy"
        applied = read_applied(rt, battle.battle_id)
        res = _overwrite(rt, battle, lock, {r: applied.get(r, 0) for r in battle.rooms},
                         "last write")
    return "failed" if res is None else "final"


def _overwrite(rt: Runtime, battle: Battle, lock: RedisLock, target: dict[str, int],
               what: str) -> SetBattleScoreResult | None:
    """OpType 2 of `target` under `lock`, on a slot the caller holds (overwrite.overwrite);
    the answer, or None (the lock was lost, or the call failed: an ambiguous one is audited
    again, since it may land after a later flush)."""
    try:
        return overwrite(rt, battle.battle_id, battle, lock, target, what, log,
                         on_ambiguous=lambda: after_ambiguity(rt, battle, battle.battle_id))
    except LockLost:  # frozen past the ttl: another writer may hold the battle now
        return None
