"""The beat's tick: which due battles get a control task, in batches, and how a batch runs.

A tick reads the due lists (flush, reconcile, unresolved, audit), keeps within the API budget
(worker/engine/tick/schedule.py), and hands each kind's battle ids to `dispatch(kind, battle_ids)`
TIMERS.tick.batch at a time: the task layer (tasks/control.py) turns a kind into its Celery task.
It also sweeps held gifts, finalizes ended battles (worker/engine/battles/ending.py; what one
still holds past TIMERS.flush.give_up_after_end is given up: worker/engine/flush/settle.py)
and, every TIMERS.tick.safety_sweep s, marks due the battles an interrupted ingest left with
value but not due (an ingest that died between its two Redis commands).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import redis

from worker.engine.battles import final_window, turns
from worker.engine.battles import registry as battles
from worker.engine.battles.ending import FINAL_GRACE, finalize
from worker.engine.flush import audit, endgame, settle
from worker.engine.flush.flusher import flush_battle, forget_idle, holding_value
from worker.engine.ingest import drain, watermark
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.keys import BattleKeys
from worker.engine.state.lock import RedisLock
from worker.engine.state.pipeline import pipeline
from worker.engine.tick import schedule
from worker.engine.timers import TIMERS

log = logging.getLogger("scorer.control")

#: The tick's timers are TIMERS.tick (worker/engine/timers.py, TickTimers, each with its reason).

#: Sends one control message: `dispatch(kind, battle_ids)`, kind "flush", "reconcile" or "audit".
Dispatch = Callable[[str, list[str]], None]
#: The work of one battle in a control message (flush_battle, reconcile_battle, audit_battle).
BattleWork = Callable[[Runtime, str], str]

_pool: ThreadPoolExecutor | None = None
_pool_pid = 0


def run_many(rt: Runtime, fn: BattleWork, battle_ids: list[str]) -> dict[str, str]:
    """Run `fn(rt, battle_id)` for each battle on this process's thread pool."""
    global _pool, _pool_pid
    if len(battle_ids) == 1:
        return {battle_ids[0]: fn(rt, battle_ids[0])}
    if _pool is None or _pool_pid != os.getpid():
        _pool = ThreadPoolExecutor(TIMERS.tick.threads, thread_name_prefix="battle")
        _pool_pid = os.getpid()
    results = _pool.map(lambda bid: _safe(fn, rt, bid), battle_ids)
    return dict(zip(battle_ids, results, strict=True))


def _safe(fn: BattleWork, rt: Runtime, battle_id: str) -> str:
    try:
        return fn(rt, battle_id)
    except Exception:  # one battle's failure must not stop the others; its state is in Redis
        log.exception("control task failed", extra={"battle_id": battle_id})
        return "error"


def run(rt: Runtime, dispatch: Dispatch) -> dict[str, int]:
    """One tick of the beat under the tick lock ({} while another process holds it)."""
    endgame.ensure_runner(rt, flush_battle)  # the end game runs beside the tick, not in it
    with RedisLock(rt.redis, keys.TICK_LOCK, ttl_ms=5000) as lock:
        if not lock.held:
            return {}
        return run_tick(rt, dispatch)


def _due(rt: Runtime, zkey: str, now: float) -> list[str]:
    return rt.redis.zrangebyscore(zkey, "-inf", now, start=0, num=TIMERS.tick.max_dispatch)


def _keep_all(ids: list[str]) -> list[str]:
    return ids


def _pick(rt: Runtime, zkey: str, now: float, budget: int,
          keep: Callable[[list[str]], list[str]] = _keep_all,
          near_end_first: bool = True) -> list[str]:
    """Due battles of `zkey` within `budget`, oldest first, with battles near their end first
    if `near_end_first` (see worker/engine/tick/schedule.py); `keep(ids)` drops candidates that
    need no call."""
    if not near_end_first:  # the oldest due, page by page: no need to read them all
        chosen: list[str] = []
        seen: set[str] = set()
        low: float | str = "-inf"  # by score, not offset: `keep` may move some out of range
        step, ties = max(budget, 1), 0  # ties: seen ids scored `low` (read again)
        while len(chosen) < budget and len(seen) < TIMERS.tick.max_dispatch:
            page = rt.redis.zrangebyscore(zkey, low, now, start=0, num=step + ties,
                                          withscores=True)
            ids = [b for b, _ in page if b not in seen][:step]
            if not ids:
                break
            seen.update(ids)
            low = page[-1][1]
            ties = sum(1 for _, score in page if score == low)
            chosen += keep(ids)[:budget - len(chosen)]
        return chosen
    due = dict(rt.redis.zrangebyscore(zkey, "-inf", now, start=0, num=TIMERS.tick.max_dispatch,
                                      withscores=True))
    urgent = schedule.urgent_window(rt.settings.flush_interval) if near_end_first else 0.0
    if urgent:
        # The oldest `max_dispatch` may not include the battles about to end: add those due.
        ending = rt.redis.zrangebyscore(keys.ACTIVE, now - FINAL_GRACE, now + urgent,
                                        start=0, num=TIMERS.tick.max_dispatch)
        if ending:
            for bid, since in zip(ending, rt.redis.zmscore(zkey, ending), strict=True):
                if since is not None and since <= now:
                    due[bid] = since
    if not due:
        return []
    ends = dict(zip(due, rt.redis.zmscore(keys.ACTIVE, list(due)), strict=True))
    chosen = []
    order = schedule.choose(list(due.items()), ends, now, len(due), urgent)
    for i in range(0, len(order), max(budget, 1)):
        chosen += keep(order[i:i + budget])[:budget - len(chosen)]
        if len(chosen) >= budget:
            break
    return chosen


def _with_value(rt: Runtime, battle_ids: list[str], round_s: float = 0.0,
                windows: dict[str, float] | None = None, early: bool = False) -> list[str]:
    """The battles a flush would send something for now: no idle flush, none in the end game
    (worker/engine/flush/endgame.py has those), none while a batch must settle first, none
    whose end game starts within a flush interval (schedule.skips_turn: those are due again
    when it starts, and the end game promotes them), and none whose turn, planned again in a
    round of `round_s` s (turns.turn_after), is still to come: it was planned when the round
    was shorter. Fills `windows` with when each kept battle's end game starts (its end
    known), which plans its next turn. `early`: battles taken before their turn (`_ahead`):
    an idle one keeps its turn, and none with a batch in flight or whose request left within
    TIMERS.flush.refused_retry (a backoff, or at most one flush per interval)."""
    if not battle_ids:
        return []
    pipe = pipeline(rt.redis)
    pipe.zmscore(keys.ACTIVE, battle_ids)
    for bid in battle_ids:
        bk = BattleKeys(bid)
        pipe.hlen(bk.pending)
        pipe.hget(bk.inflight, "state")
        pipe.zscore(keys.ENDGAME_DUE, bid)
        pipe.hmget(bk.meta, "turned_at", "start")
    ends, *res = pipe.execute()
    now, every = rt.clock(), rt.settings.flush_interval
    latest = rt.tclock.latest()  # the end game starts by the latest Tencent's clock
    recent = now - max(every, TIMERS.flush.refused_retry)
    out, idle, later = [], [], {}
    for i, bid in enumerate(battle_ids):
        pending, state, endgame_due, (turned_at, start) = res[4 * i:4 * i + 4]
        if endgame_due is not None:
            continue
        if early and (not pending or state or (turns.seconds(turned_at) or 0.0) > recent):
            continue
        if not pending and not state:
            idle.append(bid)
            continue
        window_at = final_window.starts_at(ends[i], latest, now) if ends[i] else None
        if window_at is not None:
            if schedule.skips_turn(window_at - now, every):
                later[bid] = max(now, window_at)
                continue
            turn = turns.turn_after(turned_at, start, window_at, round_s, every)
            if not early and turn > now + schedule.tick_seconds(every):
                later[bid] = turn
                continue
            if windows is not None:
                windows[bid] = window_at
        out.append(bid)
    forget_idle(rt, idle)  # checked again against a concurrent ingest
    if later:
        rt.redis.zadd(keys.FLUSH_DUE, later, xx=True)
    return out


def _ahead(rt: Runtime, now: float, budget: int, round_s: float,
           windows: dict[str, float]) -> list[str]:
    """What the budget has left after the due battles: battles with value whose turn comes
    soonest, taken early (`_with_value(early=True)`), so no slot the budget carries goes unused
    (at 10,000 battles a first turn planned early in the round often found no value yet: 116
    calls a second went in the first 10 s, and the schedule fell 15 s behind later; and a turn
    planned under a long round is not kept once the round is short)."""
    if budget <= 0:
        return []
    soon = rt.redis.zrangebyscore(keys.FLUSH_DUE, f"({now}", "+inf", start=0, num=2 * budget)
    return _with_value(rt, soon, round_s, windows, early=True)[:budget]


def run_tick(rt: Runtime, dispatch: Dispatch) -> dict[str, int]:
    """One tick; `dispatch(kind, battle_ids)` sends a control task (see Dispatch)."""
    send = _Batched(dispatch)
    out = {"flush": 0, "reconcile": 0, "resolve": 0, "held_rooms": 0, "finalized": 0}
    try:  # the ingest side: what reconcile may judge, and batches of dead drains
        out["given_back"] = watermark.give_back_stuck(rt) + drain.recover(rt)
        out["ingest_lag_ms"] = int(watermark.advance(rt).lag * 1000)
    except redis.RedisError as err:
        log.warning("ingest watermark not advanced: %s", type(err).__name__)
    now = rt.clock()
    s = rt.settings
    last = rt.redis.getset(keys.TICK_AT, now)
    span = schedule.tick_span(now, None if last is None else float(last), s.flush_interval)
    # The end game first: its battles and the share of the budget it keeps.
    out["reserve"] = reserved = endgame.plan(rt, now)
    # Flushes: at most one per battle per SCORER_FLUSH_INTERVAL, within what the budget has
    # left after the end game's reserve, oldest first (fair share: the end game has deadlines).
    budget = schedule.per_tick_budget(s.api_rate, s.flush_interval, reserved=reserved,
                                      span=span)
    # Turns planned back from each battle's end game (worker/engine/battles/turns.py), over
    # the whole budget: a battle's end-game flush is its last turn.
    round_s = turns.round_seconds(rt.redis.zcard(keys.FLUSH_DUE), s.api_rate)
    turns.publish_round(rt, round_s)
    windows: dict[str, float] = {}
    due = _pick(rt, keys.FLUSH_DUE, now, budget,
                keep=lambda ids: _with_value(rt, ids, round_s, windows), near_end_first=False)
    due += _ahead(rt, now, budget - len(due), round_s, windows)
    if due:
        rt.redis.zadd(keys.FLUSH_DUE, {
            b: turns.next_turn(now, windows.get(b), round_s, s.flush_interval) for b in due},
            xx=True)
        send("flush", due)
        out["flush"] = len(due)
    # Reconciles read get_gift_count once per room (2 per battle): half that budget per tick.
    recon_budget = schedule.per_tick_budget(s.api_rate, s.flush_interval, share=0.5,
                                            span=span)
    for zkey, name in ((keys.RECONCILE_DUE, "reconcile"), (keys.UNRESOLVED, "resolve")):
        due = _pick(rt, zkey, now, recon_budget)
        if due:
            # Provisional: the task itself sets the real next time when it runs; if it dies,
            # this retries soon (a late first read would make a late baseline).
            retry = now + max(1.0, min(5.0, s.reconcile_interval))
            rt.redis.zadd(zkey, {b: retry for b in due}, xx=True)
            send("reconcile", due)
            out[name] = len(due)
    # Audits read get_battle_info, which only read-backs and unresolved battles share: a
    # quarter of its budget (an audit per battle every 30 s up to 1,350 battles; beyond,
    # oldest first), after a Redis restart every active battle at once.
    try:
        out["redis_restarted"] = int(audit.check_restart(rt))
    except redis.RedisError as err:
        log.warning("Redis restart check failed: %s", type(err).__name__)
    audit_budget = schedule.per_tick_budget(s.api_rate, s.flush_interval, share=0.25,
                                            span=span)
    due = _pick(rt, keys.AUDIT_DUE, now, audit_budget)
    if due:
        rt.redis.zadd(keys.AUDIT_DUE, {b: now + 5.0 for b in due}, xx=True)  # provisional
        send("audit", due)
        out["audit"] = len(due)
    for room in _due(rt, keys.HELD_ROOMS, now)[:200]:
        battles.drain_held(rt, room, sweep=True)
        out["held_rooms"] += 1
    # The 200 first in the line of ended battles (one that cannot close goes to its back); one
    # past the give-up bound is given up and closed, 20 a tick (a lock and a few scripts each).
    ended = rt.redis.zrangebyscore(keys.ACTIVE, "-inf", now - FINAL_GRACE, start=0, num=200)
    overdue: list[str] = []
    out["finalized"] = finalize(rt, ended, overdue)
    out["finalized"] += finalize(rt, [b for b in overdue[:20] if settle.give_up(rt, b)])
    swept = float(rt.redis.get(keys.SAFETY_SWEEP) or 0)
    if now - swept >= TIMERS.tick.safety_sweep:
        rt.redis.set(keys.SAFETY_SWEEP, now)
        safety_sweep(rt)
    return out


class _Batched:
    """Collects battle ids per kind and sends them TIMERS.tick.batch at a time."""

    def __init__(self, send: Dispatch) -> None:
        self.send = send

    def __call__(self, kind: str, battle_ids: list[str] | str) -> None:
        ids = [battle_ids] if isinstance(battle_ids, str) else list(battle_ids)
        batch = TIMERS.tick.batch
        for i in range(0, len(ids), batch):
            self.send(kind, ids[i:i + batch])


def safety_sweep(rt: Runtime) -> None:
    """Mark due every active battle that has pending or in-flight value."""
    held = holding_value(rt, rt.redis.zrange(keys.ACTIVE, 0, -1))
    if held:
        rt.redis.zadd(keys.FLUSH_DUE, {bid: rt.clock() for bid in held}, nx=True)
