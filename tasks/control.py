"""Control tasks on their own queue: the beat tick, per-battle flush and reconcile."""

from __future__ import annotations

import json
import logging
import time

from worker.batch import pipeline
from worker import app, battles, keys, schedule
from worker.battles import Battle
from worker.flush import flush_battle
from worker.keys import BattleKeys
from worker.lock import BattleLock
from worker.reconcile import reconcile_battle
from worker.runtime import Runtime, get_runtime
from worker.stats import bump

log = logging.getLogger("scorer.control")

#: Battles dispatched per tick and per kind: bounds one tick's work under a flood.
MAX_DISPATCH = 2000
#: A battle is finalized this long after its end (late answers, the end webhook).
FINAL_GRACE = 10.0
#: Every this many seconds the tick re-checks active battles for pending value not marked due
#: (an ingest that died between its two Redis commands).
SAFETY_SWEEP = 5.0
#: A dispatched control task older than this is dropped; the next tick sends a fresh one.
TASK_EXPIRES = 30


@app.task(name="scorer.flush", ignore_result=True)
def flush(battle_id: str) -> str:
    """Send one battle's pending deltas with OpType 1 (one owner at a time)."""
    return flush_battle(get_runtime(), battle_id)


@app.task(name="scorer.reconcile", ignore_result=True)
def reconcile(battle_id: str) -> str:
    """Compare one battle with get_gift_count and correct confirmed drift with OpType 2."""
    return reconcile_battle(get_runtime(), battle_id)


@app.task(name="scorer.tick", ignore_result=True)
def tick() -> dict[str, int]:
    """Dispatch due flushes and reconciles, sweep held gifts, finalize ended battles."""
    rt = get_runtime()
    with BattleLock(rt.redis, keys.TICK_LOCK, ttl_ms=5000) as lock:
        if not lock.held:
            return {}
        return run_tick(rt)


def _due(rt: Runtime, zkey: str, now: float) -> list[str]:
    return rt.redis.zrangebyscore(zkey, "-inf", now, start=0, num=MAX_DISPATCH)


def _pick(rt: Runtime, zkey: str, now: float, budget: int) -> list[str]:
    """Due battles of `zkey` within `budget`, near-end first (see worker/schedule.py)."""
    due = rt.redis.zrangebyscore(zkey, "-inf", now, start=0, num=MAX_DISPATCH,
                                 withscores=True)
    if not due:
        return []
    ends = dict(zip([b for b, _ in due], rt.redis.zmscore(keys.ACTIVE, [b for b, _ in due])))
    return schedule.choose(due, ends, now, budget,
                           schedule.urgent_window(rt.settings.flush_interval))


def run_tick(rt: Runtime, dispatch=None) -> dict[str, int]:
    """One tick; `dispatch(task, battle_id)` sends a control task (tests pass their own)."""
    dispatch = dispatch or (lambda task, bid: task.apply_async((bid,), expires=TASK_EXPIRES))
    now = rt.clock()
    out = {"flush": 0, "reconcile": 0, "resolve": 0, "held_rooms": 0, "finalized": 0}
    s = rt.settings
    # Flushes: at most one per battle per SCORER_FLUSH_INTERVAL, within the API budget.
    due = _pick(rt, keys.FLUSH_DUE, now, schedule.per_tick_budget(s.api_rate, s.flush_interval))
    if due:
        rt.redis.zadd(keys.FLUSH_DUE, {b: now + s.flush_interval for b in due}, xx=True)
        for bid in due:
            dispatch(flush, bid)
        out["flush"] = len(due)
    # Reconciles read get_gift_count once per room (2 per battle): half that budget per tick.
    recon_budget = schedule.per_tick_budget(s.api_rate, s.flush_interval, share=0.5)
    for zkey, name in ((keys.RECONCILE_DUE, "reconcile"), (keys.UNRESOLVED, "resolve")):
        due = _pick(rt, zkey, now, recon_budget)
        if due:
            # Provisional: the task itself sets the real next time when it runs.
            rt.redis.zadd(zkey, {b: now + 5 for b in due}, xx=True)
            for bid in due:
                dispatch(reconcile, bid)
            out[name] = len(due)
    for room in _due(rt, keys.HELD_ROOMS, now)[:200]:
        battles.drain_held(rt, room, sweep=True)
        out["held_rooms"] += 1
    for bid in rt.redis.zrangebyscore(keys.ACTIVE, "-inf", now - FINAL_GRACE, start=0,
                                      num=200):
        out["finalized"] += finalize(rt, bid, dispatch)
    last = float(rt.redis.get(keys.SAFETY_SWEEP) or 0)
    if now - last >= SAFETY_SWEEP:
        rt.redis.set(keys.SAFETY_SWEEP, now)
        safety_sweep(rt)
    return out


def safety_sweep(rt: Runtime) -> None:
    """Mark due every active battle that has pending or in-flight value."""
    active = rt.redis.zrange(keys.ACTIVE, 0, -1)
    pipe = pipeline(rt.redis)
    for bid in active:
        bk = BattleKeys(bid)
        pipe.hlen(bk.pending)
        pipe.exists(bk.inflight)
    res = pipe.execute()
    for i, bid in enumerate(active):
        if res[2 * i] or res[2 * i + 1]:
            rt.redis.zadd(keys.FLUSH_DUE, {bid: rt.clock()}, nx=True)


def finalize(rt: Runtime, battle_id: str, dispatch) -> int:
    """Close an ended battle once nothing is pending: compare, expire its keys, forget it."""
    bk = BattleKeys(battle_id)
    if rt.redis.hlen(bk.pending) or rt.redis.exists(bk.inflight):
        rt.redis.zadd(keys.FLUSH_DUE, {battle_id: rt.clock()}, nx=True)
        return 0  # a flush will get 100006 and record the rest as unapplied
    battle = Battle.load(rt, battle_id)
    meta = rt.redis.hgetall(bk.meta)
    applied = {k: int(v) for k, v in rt.redis.hgetall(bk.applied).items()}
    end_scores = json.loads(meta.get("end_scores") or "null")
    mapping = {"status": "finished", "finished_at": time.time(),
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
    expire_at = int(rt.clock() + battles.KEEP_AFTER_END)
    for key in bk.all():
        if key != bk.lock:
            pipe.expireat(key, expire_at)
    for zkey in (keys.ACTIVE, keys.FLUSH_DUE, keys.RECONCILE_DUE, keys.UNRESOLVED):
        pipe.zrem(zkey, battle_id)
    pipe.execute()
    return 1
