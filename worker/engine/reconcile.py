"""Reconcile: compare each room's authoritative total (get_gift_count) with the ledger; fix drift.

The rule (docs/design.md has the argument):
- An observation is one `get_gift_count` read R of (room, owner) taken between wall times t0
  and t1. A gift's webhook may lead or trail Tencent's counting by up to SKEW seconds, so gifts
  with Time in [t0 - SKEW, t1 + SKEW] may or may not be in R.
- An observation is judged only once every webhook that could matter has been ingested (the
  ingest watermark, worker/engine/watermark.py, has passed t1 + SKEW: it counts a webhook only once
  it is stored), and only if no ingested gift of that room fell in its uncertain window:
  otherwise it is no evidence and is dropped.
- So a read is taken only when it can be judged: not while the watermark lags (a backlog),
  not while two reads of the room wait to be judged (the second, the confirming one, is taken
  PAIR_GAP after the first), and not when a gift of the room already lies in the new read's
  uncertain window; a pass comes back the moment such a room can be read. Reads stay bounded
  (two per room per judging cycle) whatever the load.
- Judged, K = R - (ingested value with Time < t0 - SKEW) is the room's total before the
  battle plus every error so far (lost webhooks add, approved-but-never-counted gifts
  subtract). The first K is the baseline; later drift = K - baseline - corrections so far.
- A drift is corrected only when two judged observations in a row agree on it: in-flight
  gifts never become a double count or a dip. The correction is decided in one atomic step:
  added to the room's corrections (so no later read decides it again) and to its pending
  value, which the flush path delivers exactly once like any gift (a negative delta as
  OpType 2 of the totals). Reconcile itself never writes a score.
- No drift, no write.
"""

from __future__ import annotations

import json
import logging
import math

from worker.engine import battles, endgame, watermark

from worker.engine.state import keys
from worker.engine.state.pipeline import pipeline
from worker.engine.battles import Battle
from worker.engine.flush import LockLost
from worker.engine.state.keys import BattleKeys, RoomKeys
from worker.engine.state.lock import BattleLock
from worker.engine.state.limiter import RateLimitTimeout
from worker.engine.runtime import Runtime
from worker.engine.state.counters import bump
from worker.engine.tencent.errors import TencentError

log = logging.getLogger("scorer.reconcile")

#: Webhooks lead or trail Tencent's counting by up to this many seconds (tencent-api.md §4).
SKEW = 2
#: Observations kept per room while waiting to be judged.
MAX_OBSERVATIONS = 6
#: In the last `FINAL_WINDOW` seconds plus one interval, reconcile runs every JUDGE_DELAY.
FINAL_WINDOW = 12.0
JUDGE_DELAY = SKEW + 1.5
#: No new read while the ingest watermark trails the present by more than this: the read
#: could not be judged until the backlog is gone, and a read then tells the same.
READ_LAG = SKEW + 3.0
#: How far the watermark trails the present when ingest keeps up (a tick or two).
TYPICAL_LAG = 0.6
#: A room's confirming read is taken this long after the first, not a judging cycle later:
#: the two are judged together, so a drift is confirmed in one cycle (a quiet window between
#: two bursts of gifts is often only a few seconds long).
PAIR_GAP = 1.0


def _last_second(secs: dict[str, int], room: str) -> int:
    """The latest second in which a gift of `room` was ingested (0 if none)."""
    last = 0
    for field_ in secs:
        r, _, sec = field_.rpartition("|")
        if r == room:
            last = max(last, int(sec))
    return last


def _sum_secs(secs: dict[str, int], room: str, lo: float, hi: float) -> int:
    """Ingested value of `room` with Time in [lo, hi]."""
    total = 0
    for field, value in secs.items():
        r, _, sec = field.rpartition("|")
        if r == room and lo <= int(sec) <= hi:
            total += int(value)
    return total


class Reconciler:
    """One reconcile pass over one battle, run while holding its reconcile lock (not the
    battle's: reads and their waits never hold what a flush needs)."""

    def __init__(self, rt: Runtime, battle: Battle, lock: BattleLock) -> None:
        self.sooner: float | None = None
        self.lag = 0.3
        self.all_waiting = False
        self.rt = rt
        self.battle = battle
        self.bk = BattleKeys(battle.battle_id)
        self.lock = lock

    def run(self) -> dict[str, int]:
        """Judge stored reads, hand confirmed drift to the flush path, take new reads; returns
        the drift decided."""
        rt, bk = self.rt, self.bk
        recon = rt.redis.hgetall(bk.recon)
        secs = {k: int(v) for k, v in rt.redis.hgetall(bk.secs).items()}
        corr = {k: int(v) for k, v in rt.redis.hgetall(bk.corr).items()}
        mark = watermark.current(rt)
        now = rt.clock()
        #: A waiting read is judged once the watermark passes t1 + SKEW + 1; it trails the
        #: present by a few ticks, or by the whole backlog (then passes back off with it).
        self.lag = max(0.3, now - mark)
        updates: dict[str, str] = {}
        fixes: dict[str, int] = {}
        #: When a sooner pass pays off: an unconfirmed drift wants its second read, and a
        #: waiting read can be judged as soon as its webhooks are surely in.
        self.sooner: float | None = None
        for room, owner in self.battle.rooms.items():
            if not owner:
                continue
            obs = json.loads(recon.get(f"obs:{room}", "[]"))
            base = recon.get(f"base:{room}")
            last = recon.get(f"last:{room}") or None  # "" once a correction consumed it
            waiting = []
            for o in obs:
                if mark <= o["t1"] + SKEW:
                    waiting.append(o)
                    self._soon(self._judgeable_at(o["t1"], now))
                    continue
                lo, hi = math.floor(o["t0"]) - SKEW, math.ceil(o["t1"]) + SKEW
                if _sum_secs(secs, room, lo, hi):
                    continue  # a gift in the uncertain window: no evidence either way
                k = o["R"] - _sum_secs(secs, room, 0, lo - 1)
                if base is None:
                    base = str(k)
                    updates[f"base:{room}"] = base
                    continue
                drift = k - int(base) - corr.get(room, 0) - fixes.get(room, 0)
                if drift and last is not None and int(last) == drift:
                    fixes[room] = fixes.get(room, 0) + drift
                    last = None
                else:
                    last = str(drift)
                    if drift:
                        self._soon(now + 1.0)
                updates[f"last:{room}"] = "" if last is None else last
            updates[f"obs:{room}"] = json.dumps(waiting)
        fixes = {r: d for r, d in fixes.items() if d}
        if fixes and self.battle.has_ended(rt.tclock.earliest(), endgame.END_MARGIN):
            # Judged after the end (a read of the last seconds is judged ~2.6 s later): no
            # write can land any more, so nothing is decided; the drift is logged, and the
            # reads stay judged.
            log.warning("drift of %s confirmed after its end, not corrected: %s",
                        self.battle.battle_id, fixes,
                        extra={"battle_id": self.battle.battle_id})
            bump(rt.redis, "late_drift", len(fixes))
            fixes = {}
        if fixes:
            self.correct(fixes)
        readable = self._readable(updates, recon, secs, mark, now)
        self.observe(updates, recon, readable)
        # Every room waits on a read: a pass before the first can be judged is wasted.
        self.all_waiting = all(
            json.loads(updates.get(f"obs:{r}") or recon.get(f"obs:{r}", "[]"))
            for r, owner in self.battle.rooms.items() if owner)
        return fixes

    def _readable(self, updates: dict[str, str], recon: dict[str, str],
                  secs: dict[str, int], mark: float, now: float) -> list[str]:
        """Rooms whose fresh read could be judged (see the module docstring)."""
        if now - mark > READ_LAG:
            return []
        rooms = []
        for room, owner in self.battle.rooms.items():
            waiting = json.loads(updates.get(f"obs:{room}") or recon.get(f"obs:{room}", "[]"))
            last = _last_second(secs, room)
            if not owner:
                continue
            if last >= math.floor(now) - SKEW:
                if last < math.floor(now) - 1:  # its burst is over: read when it can be judged
                    self._soon(last + SKEW + 1.05)
                # (a room in a steady stream of gifts waits for the schedule: no polling)
            elif not waiting:
                rooms.append(room)
            elif len(waiting) == 1 and now - waiting[0]["t1"] >= PAIR_GAP:
                rooms.append(room)  # the confirming read of the pair
            elif len(waiting) == 1:
                self._soon(waiting[0]["t1"] + PAIR_GAP)
        return rooms

    def _judgeable_at(self, t1: float, now: float) -> float:
        """When a read that ended at `t1` should be judgeable; past that, back off with the
        watermark's lag (a backlog), so waiting passes do not poll."""
        expected = t1 + SKEW + TYPICAL_LAG
        return expected if expected > now else now + min(max(0.5, self.lag), READ_LAG)

    def _soon(self, t: float) -> None:
        self.sooner = t if self.sooner is None else min(self.sooner, t)

    def correct(self, fixes: dict[str, int]) -> None:
        """Decide confirmed drift: add it to the rooms' corrections and to their pending value,
        in one step. The flush path then delivers it exactly once, like a gift (a batch with a
        negative delta goes as OpType 2 of the totals), with its retries, its settling of
        ambiguity and its end game: a correction is never written by a second path."""
        rt = self.rt
        args: list = [int(max(rt.clock(), self.battle.end) + battles.KEEP_AFTER_END),
                      self.lock.token]
        for room, d in fixes.items():
            args += [room, d]
        res = rt.script("CORRECT")(keys=[self.bk.pending, self.bk.corr, self.bk.rlock],
                                   args=args)
        if res == -1:  # frozen past the ttl: the next pass judges the same reads again
            raise LockLost(self.battle.battle_id)
        now = rt.clock()
        pipe = pipeline(rt.redis)
        pipe.zadd(keys.FLUSH_DUE, {self.battle.battle_id: now}, nx=True)
        if endgame.in_window(self.battle.end, rt.tclock.latest()):
            endgame.mark(pipe, [self.battle.battle_id], now)
        bump(pipe, "reconcile_corrections", len(fixes))
        pipe.execute()
        log.warning("reconcile corrects %s of %s", fixes, self.battle.battle_id,
                    extra={"battle_id": self.battle.battle_id})

    def observe(self, updates: dict[str, str], recon: dict[str, str],
                rooms: list[str]) -> None:
        """Take a fresh read of `rooms` (while the battle runs) and store the updates."""
        rt = self.rt
        if rt.clock() < self.battle.end:
            for room in rooms:
                owner = self.battle.rooms[room]
                t0 = rt.clock()
                try:
                    count = rt.client.get_gift_count(room, owner)
                except (TencentError, RateLimitTimeout) as err:
                    log.warning("gift count of %s failed: %s", room, err)
                    continue
                t1 = rt.clock()
                obs = json.loads(updates.get(f"obs:{room}") or recon.get(f"obs:{room}", "[]"))
                obs.append({"t0": t0, "t1": t1, "R": count.TotalCoins})
                self._soon(self._judgeable_at(t1, t1))
                if len(obs) == 1:
                    self._soon(t1 + PAIR_GAP)
                updates[f"obs:{room}"] = json.dumps(obs[-MAX_OBSERVATIONS:])
        if updates:
            rt.redis.hset(self.bk.recon, mapping=updates)


def next_due(rt: Runtime, battle: Battle) -> float | None:
    """When this battle should be reconciled next (None once it has ended)."""
    now = rt.clock()
    if now >= battle.end:
        return None
    interval = rt.settings.reconcile_interval
    if battle.end - now <= interval + FINAL_WINDOW:
        return now + min(interval, JUDGE_DELAY)
    return now + interval


# -- Battles not known to have started (bs:unresolved) ----------------------------------------
#: A battle known only from its create webhook (a PK invitation: start unknown), or without
#: its owners, is asked about with get_battle_info: RESOLVE_MIN_DELAY apart at first (never
#: faster: the old fixed retry), then further apart, half the time waited so far, at most
#: RESOLVE_MAX_DELAY (a start webhook registers it at once anyway; this is the fallback).
RESOLVE_MIN_DELAY = 5.0
RESOLVE_MAX_DELAY = 60.0
#: An invitation that is declined or times out never starts, and nothing else would ever stop
#: the polling: the battle is given up `give_up_after(duration)` after it was first seen
#: unresolved (meta `unresolved_since`, taken from `registered_at` on the first pass:
#: register() rewrites `registered_at` at every registration, a redelivered create webhook
#: included). That is its planned Duration (at least GIVE_UP_MIN_DURATION: a create webhook may
#: carry none) plus GIVE_UP_GRACE for the invitation to be answered: by then even a battle that
#: did start within the grace, its start webhook lost, has ended, so no score could be written
#: any more. With 60 s + 60 s a typical 5-minute PK is given up 6 minutes after its creation,
#: after 14 get_battle_info calls. A start known but owners missing: at its end + grace.
GIVE_UP_MIN_DURATION = 60.0
GIVE_UP_GRACE = 60.0
GIVEN_UP = "given_up"

def give_up_after(duration_s: float) -> float:
    """Seconds after it was first seen unresolved that a battle not started is given up."""
    return max(duration_s, GIVE_UP_MIN_DURATION) + GIVE_UP_GRACE


def _unresolved_since(rt: Runtime, bk: BattleKeys, meta: dict[str, str], now: float) -> float:
    if meta.get("unresolved_since"):
        return float(meta["unresolved_since"])
    since = rt.script("UNRESOLVED_SINCE")(keys=[bk.meta], args=[meta.get("registered_at") or now])
    # No meta at all (it expired, or never was): nothing to wait for; one try, then give up.
    return float(since) if since else 0.0


def resolve(rt: Runtime, battle_id: str, meta: dict[str, str]) -> str:
    """Learn a battle known only by id (or without its owners) from get_battle_info, or give
    it up once it is past its bound; returns resolved, unresolved or given_up."""
    bk = BattleKeys(battle_id)
    since = _unresolved_since(rt, bk, meta, rt.clock())
    end = float(meta.get("end") or 0)
    deadline = max(since + give_up_after(float(meta.get("duration_ms") or 0) / 1000.0),
                   end + GIVE_UP_GRACE if end else 0.0)
    try:
        info = rt.client.get_battle_info(battle_id)
    except (TencentError, RateLimitTimeout) as err:
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
    if _revived(rt, battle_id):
        return "resolved"
    log.warning("battle %s given up: not started %s after it was created (%s)", battle_id,
                f"{waited:.0f} s" if waited is not None else "long", why,
                extra={"battle_id": battle_id})
    return GIVEN_UP


def _revived(rt: Runtime, battle_id: str) -> bool:
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
        rk = RoomKeys(room)
        pipe.hset(rk.battles, battle_id, battles._index_value(battle.start, battle.end, owner))
        pipe.expireat(rk.battles, expire_at)
    zkey = keys.RECONCILE_DUE if battle.status == "running" else keys.UNRESOLVED
    pipe.zadd(zkey, {battle_id: now}, nx=True)
    pipe.execute()
    return True


def reconcile_battle(rt: Runtime, battle_id: str) -> str:
    """Reconcile one battle (or learn it with get_battle_info first); returns an outcome."""
    bk = BattleKeys(battle_id)
    with BattleLock(rt.redis, bk.rlock) as lock:
        if not lock.held:
            return "busy"
        meta = rt.redis.hgetall(bk.meta)
        battle = Battle.from_meta(battle_id, meta)
        if battle is not None and battle.status == GIVEN_UP:
            # Only a start (or create) webhook brings it back, through register().
            pipe = pipeline(rt.redis)
            pipe.zrem(keys.UNRESOLVED, battle_id)
            pipe.zrem(keys.RECONCILE_DUE, battle_id)
            pipe.execute()
            return "resolved" if _revived(rt, battle_id) else GIVEN_UP
        if battle is None or battle.status == "created" or not all(battle.rooms.values()):
            return resolve(rt, battle_id, meta)
        rec = Reconciler(rt, battle, lock)
        try:
            fixes = rec.run()
        except LockLost:
            return "lock_lost"
        due = next_due(rt, battle)
        if due is not None and rec.sooner is not None:
            due = max(rt.clock() + 0.5, rec.sooner if rec.all_waiting else min(due, rec.sooner))
        if due is None:
            rt.redis.zrem(keys.RECONCILE_DUE, battle_id)
        else:
            rt.redis.zadd(keys.RECONCILE_DUE, {battle_id: due})
        return "corrected" if fixes else "ok"
