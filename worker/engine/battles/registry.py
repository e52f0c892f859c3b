"""Battles: registration from webhooks and get_battle_info, gift routing, and held gifts.

Their records (Battle, Gift) are in worker/engine/battles/records.py, their end in
worker/engine/battles/ending.py.
"""

from __future__ import annotations

import json
import logging

from redis.client import Pipeline

from worker.engine.battles import final_window, turns
from worker.engine.battles.records import Battle, Gift
from worker.engine.battles.roomindex import find_battle, index_value
from worker.engine.deadletters import dead_letter
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.counters import bump_many
from worker.engine.state.keys import BattleKeys, RoomKeys
from worker.engine.state.lock import RedisLock
from worker.engine.state.pipeline import SerialBatch, pipeline
from worker.engine.tencent.models import BattleInfo
from worker.engine.timers import TIMERS

log = logging.getLogger("scorer.battles")

#: A finished battle's keys (and its de-duplication set) live this long after its end: longer
#: than any battle, and than any redelivery or replay of its webhooks.
KEEP_AFTER_END = TIMERS.battles.keep_after_end
#: A gift whose room is in no known battle waits this long for a late start webhook.
HOLD_SECONDS = TIMERS.battles.hold_seconds
#: A gift counted outside any battle is remembered at least this long (its buckets' length).
OUTSIDE_DEDUP = TIMERS.battles.outside_dedup


def read_applied(rt: Runtime, battle_id: str) -> dict[str, int]:
    """RoomId → the score Tencent holds by our account (the `applied` ledger)."""
    return {k: int(v) for k, v in rt.redis.hgetall(BattleKeys(battle_id).applied).items()}


def register(rt: Runtime, battle_id: str, start: float, duration_ms: int,
             rooms: dict[str, str | None], source: str) -> Battle:
    """Record a battle (start 0 = not known yet), index its rooms, then assign held gifts."""
    bk = BattleKeys(battle_id)
    known = Battle.load(rt, battle_id)
    if known and known.status == "given_up" and not start:
        return known  # a redelivered create webhook of a battle that never started
    if known and known.start and known.status != "created" and all(known.rooms.values()):
        return known  # a duplicate start/create webhook, or info we already have
    if known and known.start and not start:  # a create webhook after the start: keep timing
        start, duration_ms = known.start, round((known.end - known.start) * 1000)
    end = start + duration_ms / 1000.0 if start else 0.0
    if known:  # keep owners we already know when a later source lacks them
        rooms = {r: rooms.get(r) or known.rooms.get(r) for r in {**known.rooms, **rooms}}
    status = "running" if start and all(rooms.values()) else "created"
    expire_at = int((end or rt.clock()) + KEEP_AFTER_END + duration_ms / 1000.0)
    pipe = pipeline(rt.redis)
    pipe.hset(bk.meta, mapping={"start": start, "end": end, "duration_ms": duration_ms,
                                "rooms": json.dumps(rooms), "status": status,
                                "source": source, "registered_at": rt.clock()})
    pipe.expireat(bk.meta, expire_at)
    # The room index is written BEFORE held gifts are drained (see ROUTE_OR_HOLD).
    for room, owner in rooms.items():
        index_battle(rt, pipe, room, battle_id, index_value(start, end, owner), expire_at)
    if status == "running":
        pipe.zadd(keys.ACTIVE, {battle_id: end})
        pipe.zadd(keys.FLUSH_DUE, {battle_id: _first_turn(rt, end)}, nx=True)
        pipe.zadd(keys.RECONCILE_DUE, {battle_id: rt.clock()}, nx=True)
        # Its score audits (worker/engine/flush/audit.py): the first one interval after the
        # start.
        pipe.zadd(keys.AUDIT_DUE, {battle_id: max(rt.clock(), start) + TIMERS.audit.interval},
                  nx=True)
        pipe.zrem(keys.UNRESOLVED, battle_id)
    else:
        pipe.zadd(keys.UNRESOLVED, {battle_id: rt.clock()}, nx=True)
    pipe.execute()
    log.info("battle registered", extra={"battle_id": battle_id, "source": source,
                                         "status": status})
    battle = Battle(battle_id, start, end, rooms, status)
    if status == "running":
        # Drain only rooms that hold gifts (one round trip to know): registering thousands
        # of battles must not cost a lock per room.
        pipe = pipeline(rt.redis)
        for room in rooms:
            pipe.llen(RoomKeys(room).held)
        for room, n in zip(rooms, pipe.execute(), strict=True):
            if n:
                drain_held(rt, room)
    return battle


def index_battle(rt: Runtime, pipe: Pipeline | SerialBatch, room: str, battle_id: str,
                 value: str, expire_at: int) -> None:
    """Queue writing a battle into its room's index (the index then expires at `expire_at`),
    pruning the battles that ended KEEP_AFTER_END ago: the index stays a day of battles."""
    rt.script("INDEX_BATTLE")(keys=[RoomKeys(room).battles],
                              args=[battle_id, value, expire_at, rt.clock() - KEEP_AFTER_END],
                              client=pipe)


def _first_turn(rt: Runtime, end: float, now: float | None = None,
                latest: float | None = None) -> float:
    """When a battle ending at `end` (0: not known) is first due a flush: its first turn
    (worker/engine/battles/turns.py) in the round the tick last published."""
    now = rt.clock() if now is None else now
    latest = rt.tclock.latest() if latest is None else latest
    window_at = final_window.starts_at(end, latest, now) if end else None
    return turns.first_turn(now, window_at, turns.current_round(rt), rt.settings.flush_interval)


def register_info(rt: Runtime, info: BattleInfo) -> Battle:
    """Register from a get_battle_info answer (fills in a battle the worker never heard of)."""
    rooms = {r.RoomId: r.Owner_Account for r in info.rooms}
    return register(rt, info.BattleId, float(info.StartTime), info.Duration, rooms,
                    "get_battle_info")


def route(rt: Runtime, gifts: list[Gift]) -> dict[str, int]:
    """Score, hold or set aside a batch of gifts in two Redis round trips; returns counts."""
    counts = {"ingested": 0, "duplicate": 0, "held": 0, "not_to_owner": 0}
    if not gifts:
        return counts
    rooms = sorted({g.room for g in gifts})
    pipe = pipeline(rt.redis)
    for room in rooms:
        pipe.hgetall(RoomKeys(room).battles)
    index = dict(zip(rooms, pipe.execute(), strict=True))

    pipe = pipeline(rt.redis)
    plan: list[tuple[str, Gift, int]] = []  # (what, gift, position of its reply)
    by_battle: dict[str, list[Gift]] = {}
    ending: set[str] = set()  # in their end game: flushed at once (worker/engine/flush/endgame.py)
    ends: dict[str, float] = {}
    now, latest = rt.clock(), rt.tclock.latest()
    for g in gifts:
        hit = find_battle(index[g.room], g.second)
        if hit is None:
            rk = RoomKeys(g.room)
            plan.append(("hold", g, len(pipe)))
            rt.script("ROUTE_OR_HOLD")(keys=[rk.battles, rk.held],
                                       args=[g.second, g.to_json(now + HOLD_SECONDS),
                                             KEEP_AFTER_END],
                                       client=pipe)
            pipe.zadd(keys.HELD_ROOMS, {g.room: now + HOLD_SECONDS}, nx=True)
            continue
        battle_id, owner, end = hit
        if owner not in g.to:  # a gift to a guest, not the room owner: not a battle score
            plan.append(("not_to_owner", g, len(pipe)))
            count_outside(rt, pipe, g.room, g.event_id, now)
            continue
        by_battle.setdefault(battle_id, []).append(g)
        ends[battle_id] = end
        if final_window.in_window(end, latest):
            ending.add(battle_id)
    scored: list[tuple[list[Gift], int]] = []  # (a battle's gifts, position of its flags)
    for battle_id, bgifts in by_battle.items():
        bk = BattleKeys(battle_id)
        # Its keys live a day past its end (finalize sets the same), never longer.
        args: list = [int(max(now, ends[battle_id]) + KEEP_AFTER_END)]
        for g in bgifts:
            args += [g.event_id, g.room, g.value, g.second]
        scored.append((bgifts, len(pipe)))
        rt.script("INGEST")(keys=[bk.seen, bk.pending, bk.ledger, bk.secs], args=args,
                            client=pipe)
    if by_battle:  # one command for every battle of the batch (after their INGEST, as before)
        # A battle not due yet takes its first turn (worker/engine/battles/turns.py): at once
        # while the budget keeps up, else a whole number of rounds before its end game.
        pipe.zadd(keys.FLUSH_DUE, {bid: _first_turn(rt, ends[bid], now, latest)
                                   for bid in by_battle}, nx=True)
        final_window.mark(pipe, sorted(ending), now)
    results = pipe.execute()
    late_routed: list[Gift] = []
    for kind, g, pos in plan:
        res = results[pos]
        if kind == "hold":
            if res:  # its battle was registered between our two round trips
                late_routed.append(g)
            else:
                counts["held"] += 1
        else:
            counts[kind if res == 1 else "duplicate"] += 1
    refused: list[Gift] = []
    for bgifts, pos in scored:
        for g, flag in zip(bgifts, results[pos], strict=True):
            if flag == 2:
                refused.append(g)
            else:
                counts["ingested" if flag == 1 else "duplicate"] += 1
    if refused:  # kept with the reason, never silently dropped
        for g in refused:
            dead_letter(rt, {"gift": json.loads(g.to_json(0))}, g.event_id,
                        "room total would exceed MAX_SCORE (2**53)")
        counts["dead_lettered"] = counts.get("dead_lettered", 0) + len(refused)
    if late_routed:
        for k, v in route(rt, late_routed).items():
            counts[k] = counts.get(k, 0) + v
    return counts


def count_outside(rt: Runtime, pipe: Pipeline | SerialBatch, room: str, event_id: str,
                  now: float) -> None:
    """Queue counting a gift as outside any battle score, once per event id (its reply: 1 if
    new). Ids are kept in OUTSIDE_DEDUP-long buckets that expire whole, so a room's ids of
    the last one to two buckets are all it keeps, however busy it stays."""
    rk, bucket = RoomKeys(room), int(now // OUTSIDE_DEDUP)
    rt.script("COUNT_OUTSIDE")(
        keys=[rk.seen_outside(bucket), rk.seen_outside(bucket - 1), rk.seen_outside(bucket + 1)],
        args=[event_id, (bucket + 2) * OUTSIDE_DEDUP], client=pipe)


def outside_ids(rt: Runtime, room: str) -> set[str]:
    """The event ids a room remembers as counted outside any battle (its live buckets)."""
    rk, bucket = RoomKeys(room), int(rt.clock() // OUTSIDE_DEDUP)
    return set().union(*(rt.redis.smembers(rk.seen_outside(b))
                         for b in (bucket - 1, bucket, bucket + 1)))


def drain_held(rt: Runtime, room: str, sweep: bool = False) -> dict[str, int]:
    """Assign a room's held gifts to battles now known; past their deadline, count them outside.

    One drainer per room at a time (items are removed by position). A drain that finds the
    room busy skips: the sweep at the gifts' deadline routes them again before it gives up.
    Ingest and outside counting are idempotent by event id, so a crash mid-drain is harmless.
    """
    rk = RoomKeys(room)
    with RedisLock(rt.redis, rk.drain, ttl_ms=10_000) as lock:
        if not lock.held:
            return {}
        raw = rt.redis.lrange(rk.held, 0, -1)
        if not raw:
            if sweep:
                rt.redis.zrem(keys.HELD_ROOMS, room)
                if rt.redis.llen(rk.held):  # a gift was held meanwhile: keep the room swept
                    rt.redis.zadd(keys.HELD_ROOMS, {room: rt.clock()})
            return {}
        now = rt.clock()
        index = rt.redis.hgetall(rk.battles)
        items = [Gift.from_json(x) for x in raw]
        routable = [g for g, _ in items if find_battle(index, g.second)]
        expired = [g for g, d in items if d <= now and not find_battle(index, g.second)]
        kept = [(x, d) for x, (g, d) in zip(raw, items, strict=True)
                if d > now and not find_battle(index, g.second)]
        counts = route(rt, routable) if routable else {}
        counts["held"] = counts.get("held", 0) - len(routable)  # no longer held
        if expired:
            pipe = pipeline(rt.redis)
            for g in expired:
                count_outside(rt, pipe, g.room, g.event_id, now)
            added = pipe.execute()
            counts["outside"] = sum(1 for a in added if a == 1)
            counts["duplicate"] = counts.get("duplicate", 0) + len(expired) - counts["outside"]
            counts["held"] -= len(expired)
        # Not MULTI: the keys live in different cluster slots, and the drain lock already
        # keeps other drainers out (a concurrent hold only appends, which LTRIM preserves).
        pipe = pipeline(rt.redis)
        pipe.ltrim(rk.held, len(raw), -1)
        if kept:
            pipe.rpush(rk.held, *[x for x, _ in kept])
            # The trim may have emptied (deleted) the list: the push makes it afresh.
            pipe.expire(rk.held, KEEP_AFTER_END)
            pipe.zadd(keys.HELD_ROOMS, {room: min(d for _, d in kept)})
        pipe.execute()
    bump_many(rt.redis, counts)
    return counts
