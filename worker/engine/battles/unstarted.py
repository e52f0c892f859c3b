"""Battles not known to have started (bs:unresolved): learn them, or give them up.

A reconcile pass over a battle known only from its create webhook (or without its owners)
asks get_battle_info instead of reconciling (`resolve_unstarted`); one that never starts is
given up (`give_up`), and a very late webhook may revive it (`revived`). Not to be confused
with the flush path's resolving of an in-flight batch (worker/engine/flush/flusher.py).
"""

from __future__ import annotations

import json
import logging

from worker.engine.battles import registry as battles
from worker.engine.battles.records import Battle
from worker.engine.battles.roomindex import index_value
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.counters import bump
from worker.engine.state.keys import BattleKeys, RoomKeys
from worker.engine.state.pipeline import pipeline
from worker.engine.tencent.errors import TencentError
from worker.engine.timers import TIMERS

#: The reconcile pass's logger: these are its outcomes.
log = logging.getLogger("scorer.reconcile")

#: A battle known only from its create webhook (a PK invitation: start unknown), or without
#: its owners, is asked about with get_battle_info: RESOLVE_MIN_DELAY apart at first (never
#: faster: the old fixed retry), then further apart, half the time waited so far, at most
#: RESOLVE_MAX_DELAY (a start webhook registers it at once anyway; this is the fallback).
RESOLVE_MIN_DELAY = TIMERS.battles.resolve_min_delay
RESOLVE_MAX_DELAY = TIMERS.battles.resolve_max_delay
#: An invitation that is declined or times out never starts, and nothing else would ever stop
#: the polling: the battle is given up `give_up_after(duration)` after it was first seen
#: unresolved (meta `unresolved_since`, taken from `registered_at` on the first pass:
#: register() rewrites `registered_at` at every registration, a redelivered create webhook
#: included). That is its planned Duration (at least GIVE_UP_MIN_DURATION: a create webhook may
#: carry none) plus GIVE_UP_GRACE for the invitation to be answered (worker/engine/timers.py,
#: BattleTimers, says why). A start known but owners missing: at its end + grace.
GIVE_UP_MIN_DURATION = TIMERS.battles.give_up_min_duration
GIVE_UP_GRACE = TIMERS.battles.give_up_grace
GIVEN_UP = "given_up"


def give_up_after(duration_s: float) -> float:
    """Seconds after it was first seen unresolved that a battle not started is given up."""
    return max(duration_s, GIVE_UP_MIN_DURATION) + GIVE_UP_GRACE


def _unresolved_since(rt: Runtime, bk: BattleKeys, meta: dict[str, str], now: float) -> float:
    """When the battle was first seen unresolved (recorded in its meta on the first pass)."""
    if meta.get("unresolved_since"):
        return float(meta["unresolved_since"])
    since = rt.script("UNRESOLVED_SINCE")(keys=[bk.meta], args=[meta.get("registered_at") or now])
    # No meta at all (it expired, or never was): nothing to wait for; one try, then give up.
    return float(since) if since else 0.0


def resolve_unstarted(rt: Runtime, battle_id: str, meta: dict[str, str]) -> str:
    """Learn a battle known only by id (or without its owners) from get_battle_info, or give
    it up once it is past its bound; returns resolved, unresolved or given_up."""
    bk = BattleKeys(battle_id)
    since = _unresolved_since(rt, bk, meta, rt.clock())
    end = float(meta.get("end") or 0)
    deadline = max(since + give_up_after(float(meta.get("duration_ms") or 0) / 1000.0),
                   end + GIVE_UP_GRACE if end else 0.0)
    try:
        info = rt.client.get_battle_info(battle_id)
    except TencentError as err:  # the limiter's timeout included
        log.warning("get_battle_info of %s failed: %s", battle_id, err)
        why = f"get_battle_info failed: {err}"[:200]
    else:
        if not info.StartTime:
            why = "not started"
        elif battles.register_info(rt, info).status != "created":
            return "resolved"  # started (or its start is known): registered as always
        else:
            why = "owners unknown"
    now = rt.clock()
    if now >= deadline:
        return give_up(rt, battle_id, now - since if since else None, why)
    delay = min(RESOLVE_MAX_DELAY, max(RESOLVE_MIN_DELAY, (now - since) / 2))
    # The last try falls on the deadline (never sooner than RESOLVE_MIN_DELAY). XX: a start
    # webhook registered meanwhile has taken it out, and it must stay out.
    nxt = now + max(RESOLVE_MIN_DELAY, min(delay, deadline - now))
    rt.redis.zadd(keys.UNRESOLVED, {battle_id: nxt}, xx=True)
    return "unresolved"


def give_up(rt: Runtime, battle_id: str, waited: float | None, why: str) -> str:
    """Stop polling a battle that never started: status given_up, out of bs:unresolved, its
    rooms' index entries gone (no gift is routed or held for it), every key expiring within
    KEEP_AFTER_END. A later start webhook still registers it (register() accepts a battle
    whose start is unknown)."""
    bk = BattleKeys(battle_id)
    now = rt.clock()
    done, rooms = rt.script("GIVE_UP")(keys=bk.all(),
                                       args=[now, why, battles.KEEP_AFTER_END])
    if not done:  # registered as running meanwhile (a start webhook): nothing to give up
        return "resolved"
    rooms = json.loads(rooms or "{}")
    pipe = pipeline(rt.redis)
    pipe.zrem(keys.UNRESOLVED, battle_id)
    pipe.zrem(keys.RECONCILE_DUE, battle_id)
    for room in rooms:
        pipe.hdel(RoomKeys(room).battles, battle_id)
    bump(pipe, GIVEN_UP)
    pipe.execute()
    if revived(rt, battle_id):
        return "resolved"
    log.warning("battle %s given up: not started %s after it was created (%s)", battle_id,
                f"{waited:.0f} s" if waited is not None else "long", why,
                extra={"battle_id": battle_id})
    return GIVEN_UP


def given_up_pass(rt: Runtime, battle_id: str) -> str:
    """A stray pass over a battle given up: out of both schedules, no call; returns resolved
    if a register() revived it meanwhile, else given_up."""
    # Only a start (or create) webhook brings it back, through register().
    pipe = pipeline(rt.redis)
    pipe.zrem(keys.UNRESOLVED, battle_id)
    pipe.zrem(keys.RECONCILE_DUE, battle_id)
    pipe.execute()
    return "resolved" if revived(rt, battle_id) else GIVEN_UP


def revived(rt: Runtime, battle_id: str) -> bool:
    """A register() (a very late webhook) that ran while the battle was being given up wins:
    put back its room index entries and its place in the schedule. True if it did."""
    battle = Battle.load(rt, battle_id)
    if battle is None or battle.status == GIVEN_UP:
        return False
    now = rt.clock()
    expire_at = int((battle.end or now) + battles.KEEP_AFTER_END
                    + (battle.end - battle.start if battle.start else 0))
    pipe = pipeline(rt.redis)
    for room, owner in battle.rooms.items():
        battles.index_battle(rt, pipe, room, battle_id,
                             index_value(battle.start, battle.end, owner), expire_at)
    zkey = keys.RECONCILE_DUE if battle.status == "running" else keys.UNRESOLVED
    pipe.zadd(zkey, {battle_id: now}, nx=True)
    pipe.execute()
    return True
