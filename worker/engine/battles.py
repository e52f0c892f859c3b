"""Battles: registration from webhooks and get_battle_info, gift routing, and held gifts."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from worker.engine.state.pipeline import pipeline
from worker.engine import endgame
from worker.engine.state import keys
from worker.engine.schedule import AUDIT_INTERVAL
from worker.engine.state.keys import BattleKeys, RoomKeys
from worker.engine.runtime import Runtime
from worker.engine.state.lock import BattleLock
from worker.engine.state.counters import bump_many

log = logging.getLogger("scorer.battles")

#: A finished battle's keys (and its de-duplication set) live this long after its end: longer
#: than any battle, and than any redelivery or replay of its webhooks.
KEEP_AFTER_END = 24 * 3600
#: A gift whose room is in no known battle waits this long for a late start webhook.
HOLD_SECONDS = 60


@dataclass(frozen=True)
class Gift:
    """A validated gift, reduced to what scoring needs."""

    event_id: str
    room: str
    to: tuple[str, ...]
    second: int
    value: int

    def to_json(self, deadline: float) -> str:
        return json.dumps({"e": self.event_id, "r": self.room, "to": list(self.to),
                           "t": self.second, "v": self.value, "d": deadline})

    @classmethod
    def from_json(cls, raw: str) -> tuple["Gift", float]:
        d = json.loads(raw)
        return cls(d["e"], d["r"], tuple(d["to"]), int(d["t"]), int(d["v"])), float(d["d"])


@dataclass
class Battle:
    """A battle's registration as stored in its meta hash."""

    battle_id: str
    start: float  # 0 while unknown
    end: float
    rooms: dict[str, str | None]  # RoomId → owner (None while unknown)
    status: str = "running"
    ended_at: float = 0.0  # when Tencent told us it has ended (end webhook, 100006), else 0

    @classmethod
    def load(cls, rt: Runtime, battle_id: str) -> "Battle | None":
        return cls.from_meta(battle_id, rt.redis.hgetall(BattleKeys(battle_id).meta))

    @classmethod
    def from_meta(cls, battle_id: str, m: dict[str, str]) -> "Battle | None":
        """The battle of a meta hash read elsewhere (None if it is empty)."""
        if not m:
            return None
        return cls(battle_id, float(m.get("start", 0)), float(m.get("end", 0)),
                   json.loads(m.get("rooms", "{}")), m.get("status", "running"),
                   float(m.get("ended_at") or m.get("ended_by_webhook") or 0.0))

    def has_ended(self, now: float, margin: float) -> bool:
        """True once no write can land: Tencent said so, or `margin` s past its known end."""
        return bool(self.ended_at) or (self.start > 0 and self.end > 0
                                       and now >= self.end + margin)


def read_applied(rt: Runtime, battle_id: str) -> dict[str, int]:
    """RoomId → the score Tencent holds by our account (the `applied` ledger)."""
    return {k: int(v) for k, v in rt.redis.hgetall(BattleKeys(battle_id).applied).items()}


def _index_value(start: float, end: float, owner: str | None) -> str:
    return f"{start!r} {end!r} {owner or '-'}"


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
        start, duration_ms = known.start, int(round((known.end - known.start) * 1000))
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
        rk = RoomKeys(room)
        pipe.hset(rk.battles, battle_id, _index_value(start, end, owner))
        pipe.expireat(rk.battles, expire_at)
    if status == "running":
        pipe.zadd(keys.ACTIVE, {battle_id: end})
        pipe.zadd(keys.RECONCILE_DUE, {battle_id: rt.clock()}, nx=True)
        # Its score audits (worker/engine/audit.py): the first one interval after the start.
        pipe.zadd(keys.AUDIT_DUE, {battle_id: max(rt.clock(), start) + AUDIT_INTERVAL},
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
        for room, n in zip(rooms, pipe.execute()):
            if n:
                drain_held(rt, room)
    return battle


def register_info(rt: Runtime, info) -> Battle:
    """Register from a get_battle_info answer (fills in a battle the worker never heard of)."""
    rooms = {r.RoomId: r.Owner_Account for r in info.rooms}
    return register(rt, info.BattleId, float(info.StartTime), info.Duration, rooms,
                    "get_battle_info")


def find_battle(index: dict[str, str], second: int) -> tuple[str, str, float] | None:
    """(BattleId, owner, end) of the battle of a room's `index` that a gift at `second` scores.

    The routing rule (ROUTE_OR_HOLD in worker/engine/state/scripts.py is a Lua copy; keep both alike):
    among the battles whose window [start, end) holds `second`, with start > 0 and owner
    known, the one with the LATEST start wins; on equal starts, the greater BattleId (byte
    order). A room is in one battle at a time, but a battle that ended early (its end webhook
    lost) keeps its planned window in the index, and the room's next battle may start inside
    it: from that start on, the gifts are the new battle's.
    """
    best: tuple[float, str, str, float] | None = None  # (start, BattleId, owner, end)
    for battle_id, value in index.items():
        start_s, end_s, owner = value.split(" ", 2)
        start, end = float(start_s), float(end_s)
        if start > 0 and owner != "-" and start <= second < end:
            if best is None or (start, battle_id) > (best[0], best[1]):
                best = (start, battle_id, owner, end)
    return None if best is None else (best[1], best[2], best[3])


def route(rt: Runtime, gifts: list[Gift]) -> dict[str, int]:
    """Score, hold or set aside a batch of gifts in two Redis round trips; returns counts."""
    counts = {"ingested": 0, "duplicate": 0, "held": 0, "not_to_owner": 0}
    if not gifts:
        return counts
    rooms = sorted({g.room for g in gifts})
    pipe = pipeline(rt.redis)
    for room in rooms:
        pipe.hgetall(RoomKeys(room).battles)
    index = dict(zip(rooms, pipe.execute()))

    pipe = pipeline(rt.redis)
    plan: list[tuple[str, Gift, int]] = []  # (what, gift, position of its reply)
    by_battle: dict[str, list[Gift]] = {}
    ending: set[str] = set()  # battles in their end game: flushed at once (worker/engine/endgame.py)
    ends: dict[str, float] = {}
    now, latest = rt.clock(), rt.tclock.latest()
    for g in gifts:
        hit = find_battle(index[g.room], g.second)
        if hit is None:
            rk = RoomKeys(g.room)
            plan.append(("hold", g, len(pipe)))
            rt.script("ROUTE_OR_HOLD")(keys=[rk.battles, rk.held],
                                       args=[g.second, g.to_json(now + HOLD_SECONDS)],
                                       client=pipe)
            pipe.zadd(keys.HELD_ROOMS, {g.room: now + HOLD_SECONDS}, nx=True)
            continue
        battle_id, owner, end = hit
        if owner not in g.to:  # a gift to a guest, not the room owner: not a battle score
            plan.append(("not_to_owner", g, len(pipe)))
            _count_outside(pipe, g)
            continue
        by_battle.setdefault(battle_id, []).append(g)
        ends[battle_id] = end
        if endgame.in_window(end, latest):
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
        pipe.zadd(keys.FLUSH_DUE, {battle_id: now for battle_id in by_battle}, nx=True)
        endgame.mark(pipe, sorted(ending), now)
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
        for g, flag in zip(bgifts, results[pos]):
            if flag == 2:
                refused.append(g)
            else:
                counts["ingested" if flag == 1 else "duplicate"] += 1
    if refused:  # kept with the reason, never silently dropped
        from worker.engine.ingest import dead_letter  # (ingest imports this module)
        for g in refused:
            dead_letter(rt, {"gift": json.loads(g.to_json(0))}, g.event_id,
                        "room total would exceed MAX_SCORE (2**53)")
        counts["dead_lettered"] = counts.get("dead_lettered", 0) + len(refused)
    if late_routed:
        for k, v in route(rt, late_routed).items():
            counts[k] = counts.get(k, 0) + v
    return counts


def _count_outside(pipe, g: Gift) -> None:
    """Queue counting a gift as outside any battle score, once per event id."""
    rk = RoomKeys(g.room)
    pipe.sadd(rk.seen_outside, g.event_id)
    pipe.expire(rk.seen_outside, KEEP_AFTER_END * 2)


def drain_held(rt: Runtime, room: str, sweep: bool = False) -> dict[str, int]:
    """Assign a room's held gifts to battles now known; past their deadline, count them outside.

    One drainer per room at a time (items are removed by position). A drain that finds the
    room busy skips: the sweep at the gifts' deadline routes them again before it gives up.
    Ingest and outside counting are idempotent by event id, so a crash mid-drain is harmless.
    """
    rk = RoomKeys(room)
    with BattleLock(rt.redis, rk.drain, ttl_ms=10_000) as lock:
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
        kept = [(x, d) for x, (g, d) in zip(raw, items)
                if d > now and not find_battle(index, g.second)]
        counts = route(rt, routable) if routable else {}
        counts["held"] = counts.get("held", 0) - len(routable)  # no longer held
        if expired:
            pipe = pipeline(rt.redis)
            for g in expired:
                _count_outside(pipe, g)
            added = pipe.execute()[::2]
            counts["outside"] = sum(1 for a in added if a == 1)
            counts["duplicate"] = counts.get("duplicate", 0) + len(expired) - counts["outside"]
            counts["held"] -= len(expired)
        # Not MULTI: the keys live in different cluster slots, and the drain lock already
        # keeps other drainers out (a concurrent hold only appends, which LTRIM preserves).
        pipe = pipeline(rt.redis)
        pipe.ltrim(rk.held, len(raw), -1)
        if kept:
            pipe.rpush(rk.held, *[x for x, _ in kept])
            pipe.zadd(keys.HELD_ROOMS, {room: min(d for _, d in kept)})
        pipe.execute()
    bump_many(rt.redis, counts)
    return counts


def record_end(rt: Runtime, ev) -> None:
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
    mapping = {"end_scores": json.dumps(scores), "ended_by_webhook": rt.clock()}
    if ev.EndTime and battle and battle.start and ev.EndTime < battle.end:
        # Ended early (owners left): the window closes at EndTime.
        mapping["end"] = float(ev.EndTime)
        pipe = pipeline(rt.redis)
        for room, owner in battle.rooms.items():
            pipe.hset(RoomKeys(room).battles, ev.BattleId,
                      _index_value(battle.start, float(ev.EndTime), owner))
        pipe.zadd(keys.ACTIVE, {ev.BattleId: float(ev.EndTime)})
        pipe.execute()
    pipe = pipeline(rt.redis)
    pipe.hset(bk.meta, mapping=mapping)
    if battle is None:  # an end we cannot place in any battle: keep it, but not forever
        pipe.expire(bk.meta, KEEP_AFTER_END)
    pipe.execute()
