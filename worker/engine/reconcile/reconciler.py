"""Reconcile: compare each room's authoritative total (get_gift_count) with the ledger; fix drift.

A pass over one battle (`reconcile_battle`) reads the battle's reconcile state from Redis,
judges its stored reads with the rule in worker/engine/reconcile/judge.py (which has the
argument: Tencent's second, the baseline, two agreeing reads), decides confirmed drift in one
atomic step for the flush path to deliver, takes the new reads that could be judged, and
schedules the next pass. A battle not known to have started is handed to
worker/engine/battles/unstarted.py.
"""

from __future__ import annotations

import json
import logging

from worker.engine.battles import final_window, unstarted
from worker.engine.battles import registry as battles
from worker.engine.battles.records import Battle
from worker.engine.battles.unstarted import GIVEN_UP, give_up, give_up_after, resolve_unstarted
from worker.engine.flush import endgame
from worker.engine.flush.inflight import LockLost
from worker.engine.ingest import watermark
from worker.engine.reconcile import cadence, judge, record
from worker.engine.reconcile.band import Band, Read
from worker.engine.reconcile.cadence import FINAL_WINDOW, JUDGE_DELAY, PAIR_GAP
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.counters import bump
from worker.engine.state.keys import BattleKeys
from worker.engine.state.lock import RedisLock
from worker.engine.state.pipeline import pipeline
from worker.engine.tencent.errors import RateLimitTimeout, TencentError
from worker.engine.timers import TIMERS

#: The rule's timers and the unstarted battles' names stay importable from here.
__all__ = ["FINAL_WINDOW", "GIVEN_UP", "JUDGE_DELAY", "PAIR_GAP", "Reconciler",
           "give_up", "give_up_after", "next_due", "reconcile_battle", "resolve_unstarted"]

log = logging.getLogger("scorer.reconcile")


def _reads(updates: dict[str, str], recon: dict[str, str], room: str) -> list[Read]:
    """A room's stored reads, as this pass has updated them so far."""
    reads: list[Read] = json.loads(updates.get(f"obs:{room}") or recon.get(f"obs:{room}", "[]"))
    return reads


class Reconciler:
    """One reconcile pass over one battle, run while holding its reconcile lock (not the
    battle's: reads and their waits never hold what a flush needs)."""

    def __init__(self, rt: Runtime, battle: Battle, lock: RedisLock) -> None:
        self.sooner: float | None = None
        self.lag = 0.3
        self.all_waiting = False
        self.rt = rt
        self.battle = battle
        self.bk = BattleKeys(battle.battle_id)
        self.lock = lock
        self.band = Band.from_settings(rt.settings)
        #: Room → how often its reads pay (cadence.read_wanted), as this pass judged it.
        self.need: dict[str, int] = {}

    def run(self) -> dict[str, int]:
        """Judge stored reads, hand confirmed drift to the flush path, take new reads; returns
        the drift decided."""
        rt, bk = self.rt, self.bk
        # The watermark before the ledger: a webhook it counts as in is then in the ledger read
        # after it (read the other way round, one ingested in between would read as lost).
        mark = watermark.current(rt)
        now = rt.clock()
        pipe = pipeline(rt.redis)
        for key in (bk.recon, bk.secs, bk.corr):
            pipe.hgetall(key)
        recon, secs_raw, corr_raw = pipe.execute()
        secs = {k: int(v) for k, v in secs_raw.items()}
        corr = {k: int(v) for k, v in corr_raw.items()}
        self.lag = cadence.watermark_lag(mark, now)
        updates: dict[str, str] = {}
        fixes: dict[str, int] = {}
        judged = drifted = dropped = 0
        heal: dict[str, float] = {}  # room → seconds from its drift's first proof to its fix
        based: list[str] = []
        unbased: list[str] = []
        ledgers: dict[str, dict[int, int]] = {}
        #: When a sooner pass pays off: an unconfirmed drift wants its second read, and a
        #: waiting read can be judged as soon as its webhooks are surely in.
        self.sooner = None
        for room, owner in self.battle.rooms.items():
            if not owner:
                continue
            ledgers[room] = judge.room_ledger(secs, room)
            done = corr.get(room, 0)
            j = judge.judge_room(_reads({}, recon, room), ledgers[room],
                                 judge.parse_base(recon.get(f"base:{room}")),
                                 judge.parse_last(recon.get(f"last:{room}"), done), done, mark, now,
                                 (self.battle.start, self.battle.end), self.band,
                                 judge.Rebase.loads(recon.get(f"proposal:{room}")))
            self._soon(j.sooner)
            if j.fix:
                fixes[room] = j.fix
            fields, healed, self.need[room] = record.room_fields(room, j, recon, done, now)
            updates.update(fields)
            if healed is not None:
                heal[room] = healed
            if j.base is None or j.base_taken:  # (a room with a baseline is left alone)
                (unbased if j.base is None else based).append(f"{self.battle.battle_id}|{room}")
            judged += j.judged + j.base_taken
            drifted += j.drifted
            dropped += j.dropped
        # (Tencent's clock is read only when there is something to decide.)
        ended = bool(fixes) and self.battle.has_ended(rt.tclock.earliest(), endgame.END_MARGIN)
        fixes, late = judge.decide(fixes, ended)
        if late:
            # Judged after the end: no write can land any more, so nothing is decided; the
            # drift is logged, and the reads stay judged.
            log.warning("drift of %s confirmed after its end, not corrected: %s",
                        self.battle.battle_id, late,
                        extra={"battle_id": self.battle.battle_id})
            bump(rt.redis, "late_drift", len(late))
        if fixes:
            self.correct(fixes, int(1000 * sum(heal.get(r, 0.0) for r in fixes)))
        readable = self._readable(updates, recon, mark, now)
        taken = self.observe(updates, recon, readable)
        # The pass's counters, once it has stored what it judged (one that lost its lock
        # counts nothing: the next pass judges the same reads again).
        pipe = pipeline(rt.redis)
        if unbased:
            pipe.zadd(keys.RECON_UNBASED, dict.fromkeys(unbased, self.battle.start), nx=True)
        if based:
            pipe.zrem(keys.RECON_UNBASED, *based)
        for name, n in (("reconcile_reads", taken), ("reconcile_reads_judged", judged),
                        ("reconcile_reads_drifted", drifted), ("reconcile_reads_dropped", dropped)):
            bump(pipe, name, n)
        pipe.execute()
        # Every room waits on a read: a pass before the first can be judged is wasted.
        self.all_waiting = all(_reads(updates, recon, r)
                               for r, owner in self.battle.rooms.items() if owner)
        return fixes

    def _readable(self, updates: dict[str, str], recon: dict[str, str], mark: float,
                  now: float) -> dict[str, str]:
        """Rooms whose fresh read could be judged (see reconcile/judge.py) → their owner."""
        # While the watermark lags (a backlog, a frozen consumer), only a room's baseline read
        # is taken: its moment cannot wait (a drift before it is absorbed: a lost webhook
        # 6 s into a battle whose first read a 6 s freeze held back went unhealed), its judging
        # can. One read a room at most, so a backlog does not grow the reads.
        blocked = cadence.reads_blocked(mark, now)
        #: Rooms whose baseline read is taken or waits: none of their reads while blocked.
        owned = [room for room, owner in self.battle.rooms.items() if owner]
        served = {room for room in owned if blocked and (
            _reads(updates, recon, room) or self._based(updates, recon, room))}
        if blocked and served.issuperset(owned):
            return {}
        tclock, edge = self.rt.tclock, self.band.edge
        early = self.battle.starts_in(tclock.earliest() - edge)
        if early:
            # Not surely started on Tencent's clock, with the gifts just before the start
            # surely counted: they are not the battle's (no ledger holds them), and one
            # counted after such a read would read as a lost webhook, a correction of value
            # that never drifted (the finale: 8 rooms over, up to 659 coins, all read before
            # their start). The judge drops such a read as well.
            self._soon(now + early)
            return {}
        if cadence.reads_over(self.battle.end, tclock.latest(), self.band):
            return {}  # judged too late to correct anything before the end
        if self.rt.client.limiter.reserved("set_battle_score") >= TIMERS.reconcile.yield_reserve:
            # A crowded ending: its last writes need the CPU; read once it has passed.
            bump(self.rt.redis, "reconcile_reads_yielded")
            self._soon(now + PAIR_GAP)
            return {}
        rooms: dict[str, str] = {}
        for room, owner in self.battle.rooms.items():
            if not owner:
                continue
            if room in served:
                continue
            read_at = recon.get(f"read_at:{room}")
            wanted, sooner = cadence.read_wanted(
                _reads(updates, recon, room), now, self.need.get(room, cadence.BUSY),
                None if read_at is None else float(read_at), self.rt.settings.reconcile_interval)
            if wanted:
                rooms[room] = owner
            self._soon(sooner)
        return rooms

    @staticmethod
    def _based(updates: dict[str, str], recon: dict[str, str], room: str) -> bool:
        """Whether the room has a baseline (taken in this pass or before)."""
        return judge.parse_base(updates.get(f"base:{room}", recon.get(f"base:{room}"))) is not None

    def _soon(self, t: float | None) -> None:
        """Bring the next pass forward to `t` (None: no change)."""
        if t is not None:
            self.sooner = t if self.sooner is None else min(self.sooner, t)

    def correct(self, fixes: dict[str, int], heal_ms: int = 0) -> None:
        """Decide confirmed drift: add it to the rooms' corrections and to their pending value,
        in one step. The flush path then delivers it exactly once, like a gift (a batch with a
        negative delta goes as OpType 2 of the totals), with its retries, its settling of
        ambiguity and its end game: a correction is never written by a second path."""
        rt = self.rt
        args: list[str | int | float] = [
            int(max(rt.clock(), self.battle.end) + battles.KEEP_AFTER_END), self.lock.token]
        for room, d in fixes.items():
            args += [room, d]
        res = rt.script("CORRECT")(keys=[self.bk.pending, self.bk.corr, self.bk.rlock],
                                   args=args)
        if res == -1:  # frozen past the ttl: the next pass judges the same reads again
            raise LockLost(self.battle.battle_id)
        now = rt.clock()
        pipe = pipeline(rt.redis)
        pipe.zadd(keys.FLUSH_DUE, {self.battle.battle_id: now}, nx=True)
        if final_window.in_window(self.battle.end, rt.tclock.latest()):
            final_window.mark(pipe, [self.battle.battle_id], now)
        bump(pipe, "reconcile_corrections", len(fixes))
        bump(pipe, "reconcile_heal_ms", heal_ms)  # with it: no later pass decides it again
        pipe.execute()
        log.warning("reconcile corrects %s of %s", fixes, self.battle.battle_id,
                    extra={"battle_id": self.battle.battle_id})

    def observe(self, updates: dict[str, str], recon: dict[str, str],
                rooms: dict[str, str]) -> int:
        """Take a fresh read of `rooms` (room → owner; while the battle runs), until one finds
        no call slot in time, and store the updates; returns how many reads it took."""
        rt = self.rt
        read_n = 0
        if rt.clock() < self.battle.end:
            for room, owner in rooms.items():
                t0 = rt.clock()
                try:
                    count = rt.client.get_gift_count(room, owner,
                                                     max_wait=TIMERS.reconcile.slot_wait)
                except RateLimitTimeout:
                    # The budget is taken: the other rooms would wait as long. Back a pair's
                    # gap later (the same 1 s); the tick dispatches passes within the budget,
                    # so this cannot snowball.
                    bump(rt.redis, "reconcile_reads_deferred")
                    self._soon(rt.clock() + PAIR_GAP)
                    break
                except TencentError as err:
                    log.warning("gift count of %s failed: %s", room, err)
                    continue
                t1 = rt.clock()
                # Tencent's clock at the read, by the estimate this very answer narrowed.
                lo, hi = rt.tclock.bounds()
                reads, sooner = cadence.add_read(
                    _reads(updates, recon, room),
                    {"t0": t0, "t1": t1, "R": count.TotalCoins, "lo": t0 + lo, "hi": t1 + hi},
                    self.lag, self.need.get(room, cadence.BUSY), self.band)
                self._soon(sooner)
                updates[f"obs:{room}"] = json.dumps(reads)
                updates[f"read_at:{room}"] = repr(t1)
                read_n += 1
        if updates:
            args: list[str] = [self.lock.token]
            for k, v in updates.items():
                args += [k, v]
            if rt.script("RECON_STORE")(keys=[self.bk.recon, self.bk.rlock], args=args) == -1:
                raise LockLost(self.battle.battle_id)  # frozen past the lease: the next pass
        return read_n


def next_due(rt: Runtime, battle: Battle) -> float | None:
    """When this battle should be reconciled next (None once it has ended)."""
    return cadence.next_due_at(rt.clock(), battle.end, rt.settings.reconcile_interval)


def reconcile_battle(rt: Runtime, battle_id: str) -> str:
    """Reconcile one battle (or learn it with get_battle_info first); returns an outcome."""
    bk = BattleKeys(battle_id)
    with RedisLock(rt.redis, bk.rlock, ttl_ms=TIMERS.reconcile.lock_ttl_ms) as lock:
        if not lock.held:
            return "busy"
        meta = rt.redis.hgetall(bk.meta)
        battle = Battle.from_meta(battle_id, meta)
        if battle is not None and battle.status == GIVEN_UP:
            return unstarted.given_up_pass(rt, battle_id)
        if battle is None or battle.status == "created" or not all(battle.rooms.values()):
            return resolve_unstarted(rt, battle_id, meta)
        rec = Reconciler(rt, battle, lock)
        try:
            fixes = rec.run()
        except LockLost:
            return "lock_lost"
        due = cadence.reschedule(next_due(rt, battle), rec.sooner, rec.all_waiting, rt.clock())
        if due is None:
            rt.redis.zrem(keys.RECONCILE_DUE, battle_id)
            rt.redis.zrem(keys.RECON_UNBASED, *(f"{battle_id}|{room}" for room in battle.rooms))
        else:
            rt.redis.zadd(keys.RECONCILE_DUE, {battle_id: due})
        return "corrected" if fixes else "ok"
