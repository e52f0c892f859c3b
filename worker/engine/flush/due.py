"""The flush due list (keys.FLUSH_DUE): what a battle's flush would do now, and when it is due."""

from __future__ import annotations

from worker.engine.battles.registry import Battle
from worker.engine.flush.inflight import settle_of
from worker.engine.flush.near_end import END_MARGIN
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.keys import BattleKeys
from worker.engine.state.pipeline import pipeline
from worker.engine.timers import TIMERS

#: A battle whose flush could not run (busy, no slot, a retryable answer) is due again this soon.
RETRY_SOON = TIMERS.flush.retry_soon


def needs(rt: Runtime, battle_id: str) -> str:
    """What a flush of this battle would do now, read without the lock: `idle` (nothing to
    send), `busy` (another flush holds the battle, its batch in flight), `unsettled` (a batch
    left by its sender must settle first: no call yet), `free` (settle or record without a
    set_battle_score call: the battle has ended), `early` (value to send, but the battle has
    not surely started on Tencent's clock: a call would be refused 100006) or `call`."""
    return needs_and_battle(rt, battle_id)[0]


def needs_and_battle(rt: Runtime, battle_id: str) -> tuple[str, Battle | None]:
    """`needs`, and the battle's registration read with it (one round trip)."""
    bk = BattleKeys(battle_id)
    pipe = pipeline(rt.redis)
    pipe.hlen(bk.pending)
    pipe.hmget(bk.inflight, "state", "settle_at", "sent_at", "at")
    pipe.hgetall(bk.meta)
    pipe.exists(bk.lock)
    pending, (state, settle_at, sent_at, at), meta, locked = pipe.execute()
    battle = Battle.from_meta(battle_id, meta)
    earliest = rt.tclock.earliest()
    if battle is not None and battle.has_ended(earliest, END_MARGIN):
        return ("free" if pending or state else "idle"), battle
    if state in ("sending", "ambiguous"):
        if rt.clock() < settle_of(settle_at, sent_at, at):
            # Held: a live flush is sending it and settles it in a moment, so this is only
            # busy. Taken for unsettled, an end-game flush that met a freshness flush's
            # request in flight put the battle off until the request's landing window closed,
            # past its end: its last value missed the end (1 battle in 2,000, twice).
            return ("busy" if locked else "unsettled"), battle
        return "call", battle
    if (pending or state) and battle is not None and battle.starts_in(earliest):
        # A webhook can come up to 0.5 s before Tencent counts its gift (tencent-api.md), so
        # value of a gift counted just after the start lands just before it: a call then was
        # refused 100006 and sent again (the finale: a battle's first of two 100006).
        return "early", battle
    return ("call" if pending or state else "idle"), battle


def settle_time(rt: Runtime, battle_id: str) -> float:
    """When the battle's in-flight batch can be judged (now if there is none)."""
    bk = BattleKeys(battle_id)
    settle_at, sent_at, at = rt.redis.hmget(bk.inflight, "settle_at", "sent_at", "at")
    if settle_at is None and sent_at is None and at is None:
        return rt.clock()
    return settle_of(settle_at, sent_at, at)


def due_at(rt: Runtime, battle_id: str, at: float, **flags: bool) -> None:
    """Make the battle's flush due at `at` (`flags`: ZADD's xx, nx, ...)."""
    rt.redis.zadd(keys.FLUSH_DUE, {battle_id: at}, **flags)


def due_soon(rt: Runtime, battle_id: str) -> None:
    """Due again RETRY_SOON from now: its flush could not run."""
    due_at(rt, battle_id, rt.clock() + RETRY_SOON)


def first_in_line(rt: Runtime, battle_id: str) -> None:
    """Due again at the head of the queue: a flush that found no call slot keeps its turn.
    (Due RETRY_SOON, it went behind every battle already waiting and waited a whole round
    more: max freshness twice the fair share at 2,000 battles.)"""
    head = rt.redis.zrange(keys.FLUSH_DUE, 0, 0, withscores=True)
    now = rt.clock()
    due_at(rt, battle_id, min(head[0][1], now) - 0.001 if head else now)


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
