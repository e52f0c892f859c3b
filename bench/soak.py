"""`python -m bench.soak`: months of webhooks in minutes; does Redis, or a gift's cost, grow?

A team runs the worker for months, forwarding every approved gift (most of them outside any PK
battle) for thousands of rooms that battle many times a day. This soak replays that history,
compressed, and prints per simulated day what the worker keeps in Redis and what each ingested
gift costs. Done when both are flat: memory bounded, and day 30's cost per gift within 10 % of
day 1's (issue 28).

**Time compression: only the retention timers are scaled.** The engine's clock is real time
(`rt.clock()`, the webhooks' Tencent times, Redis's EXPIREAT), so battles last real seconds and
the end game, the flushes and finalize run as in production. What is compressed is how long
the worker KEEPS things. `scale_retention(day_seconds)` builds a `Timers` with
`dataclasses.replace` in which every field of `TIMERS.battles` of an hour or more (a retention:
`keep_after_end`, a day: a battle's keys, its de-duplication set, its room index entries; and
`outside_dedup`, an hour: the buckets of ids counted outside a battle) is divided by the scale
86400 / `--day-seconds` (kept whole seconds, at least 1: EXPIREAT takes seconds), and patches
it into the engine's modules before the run: every module's `TIMERS`, and the names modules
bound from those fields at import (the field's name in capitals: registry.KEEP_AFTER_END,
ending.KEEP_AFTER_END, registry.OUTSIDE_DEDUP, registry.HOLD_SECONDS). The first line printed
says the scale and every name rebound. Redis's own expiry then runs as in production, that many
times sooner: the default day of 40 s is x2160, a battle's keys live 40 s past its end.
`hold_seconds` (a gift in no known battle waits a minute for a late start webhook) is a
latency, not a retention: scaled too, but not below `--hold-seconds` (5 s), else every room
would be swept every few milliseconds (and longer holds make every registration drain more
held gifts: 5 s balances the producer's and the control process's share). Nothing else is
scaled: finalize comes 10 s after a battle's end, locks and the end game keep their timings.

**Two processes, the engine's own functions, one redis-server** of the bench's own on a free
loopback port (no Celery):
- the producer (this process) plans the webhooks and ingests them through
  `worker.engine.ingest.intake.store_items`, the function the Celery task `scorer.webhooks`
  calls: every 50 ms the start webhooks due, then the gifts due, in one call each (a producer
  batching as bench.peak's bulk mode does); at each day's end it reads Redis's figures;
- the control process (forked once the retention is scaled) runs the beat's tick every
  0.25 s (`worker.engine.tick.dispatch.run_tick`: flush dispatch, held-gift sweeps, finalize)
  and what it dispatches on the tick's thread pool (`run_many`, as a control worker does), the
  end game as the dedicated end-game process runs it (`endgame.run_dedicated`), and ingests
  the end webhooks; it holds Tencent: the sandbox's model (`SandboxState`) reached by a
  `TencentClient` whose HTTP exchange is replaced (`InProcessTencent`: the client's retries,
  outcome classification and parsing, no HTTP, no rate limiter: the HTTP sandbox would add a
  request's CPU on both sides to every call, and the point is state and per-gift cost). It applies
  set_battle_score, answers get_battle_info and get_gift_count, refuses writes outside a
  battle (100006), forgets a battle a minute after its end, and loses the answer of a few
  writes it applied (ambiguous). SCORER_API_RATE is 100,000 (the settings' highest): the
  tick's flush budget follows it, and at 200 the 190 battles a second that end in a
  compressed day queued for it (bs:active grew to 13,000). Reconcile passes run with
  `--reconcile` only (CPU).
One process could not keep up (a first version, everything in one process, fell 15 s behind
with 30-s days): the issue's workload is 7,500 battles a simulated day, and a battle costs
several ms of CPU (registration, flushes, end, finalize, and Redis's share), a gift ~0.1 ms.

**The workload, per simulated day** (seeded): `--rooms` rooms (1,000), each in 10-20 battles
(`--battles-per-room-day`; pairs of rooms, 1 s long by Tencent's clock, a room in one at a
time), and `--gifts-per-room-day` gifts per room (60): 20 % to a room's owner in a battle, 80 %
outside any battle (to rooms not in one, and 10 % of those to a guest of a room in one); gift
ids unique, 0.5 % delivered twice, 0.1 % of gift webhooks first delivered 12-20 s late (after
their battle was finalized), 0.1 % of gift webhooks and 0.2 % of start webhooks lost (Tencent
counts the gift; a battle whose start webhook was lost is learnt from its end webhook), 1 % of
end webhooks lost, 0.5 % of writes ambiguous, 5 invalid bodies (dead letters) a day. A warm-up
day (day 0, `--warmup-days`) comes first and is not judged: day 1 starts with a day of history
behind it, as any day of a worker that has run for months does.

**What it prints, per simulated day**: gift webhooks ingested; the producer's CPU in the gift
ingest calls per gift (time.thread_time around those calls only, µs), Redis's own µs per
HGETALL (the room index is read whole per routed room); CPU per start and per end webhook; the
control process's CPU (tick, flushes, end game) and Redis's; Redis's used_memory and keys; the
largest room index (fields) and a room's outside ids (all its `seen_outside` keys: members and
bytes); gifts held; battles not finalized yet (bs:active); how late the producer delivered (a
day over 10 s late, marked *, is not judged: its webhooks came after their battles closed).
At the end, each "flat" or "growing" (`summarize` says how): cost per gift, day 30 against
day 1 (verdict on the medians of the last and first 5 days: one day's figure moves by 10 %
with the machine's other load); memory and keys of the last third of the days against the
highest before them; and the battle and room keys left with no expiry (they stay for ever).
`--json FILE` keeps every figure (keys by kind, schedules, dead letters, counts).

    python -m bench.soak           # 1,000 rooms, 1 + 30 days of 40 s: ~21 minutes on 2 cores
    python -m bench.soak --rooms 200 --days 6 --day-seconds 20     # ~2.5 minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import importlib
import json
import logging
import math
import multiprocessing as mp
import os
import pkgutil
import queue
import random
import statistics
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scorer_local.bodies import end_body, gift_body, start_body
from scorer_local.sandbox_auth import Reject
from scorer_local.sandbox_model import SandboxState
from scorer_local.stack import RedisServer, process_tree_cpu
from worker.engine.settings import Settings
from worker.engine.tencent.client import TencentClient
from worker.engine.tencent.errors import Outcome, TencentError, classify_code
from worker.engine.tencent.limiter import NoLimiter

DAY = 86_400
SDKAPPID = 1400000001
SECRET = "soak-secret-key-0123456789abcdef"
TICK = 0.25  # the beat's tick (min(0.25, SCORER_FLUSH_INTERVAL / 4))
STEP = 0.05  # the generator's loop: webhooks due are delivered in one call per kind per step
#: Bound of a verdict "flat": the last days' cost per gift within this of the first days',
#: and their memory (and keys) within this of the first days' once retention has cycled.
FLAT = 0.10
#: A day whose webhooks arrived later than this (s) is not judged: finalize's grace, after
#: which they came after their battle was closed (the producer fell behind: the machine).
LATE_OK = 10.0
#: SCORER_API_RATE of the soak's worker: the settings' highest (see Soak.run).
API_RATE = 100_000
#: Tencent's model forgets a battle this long after its end (real seconds).
FORGET_AFTER = 60.0


# -- time compression ---------------------------------------------------------------------


@dataclass
class Scaled:
    """What `scale_retention` changed, to print and to undo."""

    scale: float
    day_seconds: float
    hold_seconds: float
    fields: dict[str, tuple[Any, Any]]  # "battles.keep_after_end" -> (old, new)
    names: list[str]  # module.NAME rebound
    _undo: list[tuple[Any, str, Any]] = field(default_factory=list, repr=False)

    def restore(self) -> None:
        """Put every patched name back (tests)."""
        for mod, name, old in reversed(self._undo):
            setattr(mod, name, old)
        self._undo.clear()


#: Module-level names the engine binds from a scaled timer at import, besides the field's own
#: name in capitals (registry.KEEP_AFTER_END, registry.HOLD_SECONDS, registry.OUTSIDE_DEDUP).
BOUND_NAMES: dict[str, tuple[str, ...]] = {}


def _engine_modules() -> Iterator[Any]:
    import worker.engine

    yield worker.engine
    for info in pkgutil.walk_packages(worker.engine.__path__, "worker.engine."):
        yield importlib.import_module(info.name)


def scale_retention(day_seconds: float, min_hold: float = 5.0,
                    final_grace: float | None = None) -> Scaled:
    """Make a simulated day last `day_seconds` real seconds for what the worker keeps.

    Every field of TIMERS.battles of an hour or more (a retention: `keep_after_end` today) is
    divided by 86400 / day_seconds (kept whole: EXPIREAT takes seconds), and `hold_seconds`
    too but not below `min_hold`. The scaled `Timers` (dataclasses.replace) replaces `TIMERS`
    in every engine module, and the names modules bound from those fields at import
    (BOUND_NAMES, e.g. registry.KEEP_AFTER_END) are rebound. In this process (and the
    processes it forks) only, and before the run: a module imported later keeps the defaults.

    `final_grace` (not a retention: finalize waits this long after a battle's end, 10 s) is
    replaced only when given: the short test's 4-s days would otherwise keep a battle's keys
    for less time than it takes to finalize it."""
    from worker.engine import timers

    scale = DAY / day_seconds
    old = timers.TIMERS
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(old.battles):
        value = getattr(old.battles, f.name)
        if f.name == "hold_seconds":
            changes[f.name] = max(min_hold, value / scale)
        elif isinstance(value, int | float) and value >= 3600:
            changes[f.name] = max(1, round(value / scale))
        elif f.name == "final_grace" and final_grace is not None:
            changes[f.name] = final_grace
    new = dataclasses.replace(old, battles=dataclasses.replace(old.battles, **changes))
    out = Scaled(scale, day_seconds, changes["hold_seconds"],
                 {f"battles.{k}": (getattr(old.battles, k), v) for k, v in changes.items()}, [])
    for mod in _engine_modules():
        if getattr(mod, "TIMERS", None) is old:
            out._undo.append((mod, "TIMERS", old))
            mod.TIMERS = new
        for fname, value in changes.items():
            for name in (fname.upper(), *BOUND_NAMES.get(fname, ())):
                if getattr(mod, name, None) == getattr(old.battles, fname):
                    out._undo.append((mod, name, getattr(mod, name)))
                    setattr(mod, name, value)
                    out.names.append(f"{mod.__name__.removeprefix('worker.engine.')}.{name}")
    return out


# -- Tencent, in this process -------------------------------------------------------------


class InProcessTencent(TencentClient):
    """The Tencent client with its HTTP exchange replaced by the sandbox's model, in-process:
    retries, outcome classification and answer parsing are the client's own. A share
    `ambiguous` of the set_battle_score calls the model applied lose their answer (the
    client sees a read timeout: may have landed)."""

    def __init__(self, settings: Settings, model: SandboxState, ambiguous: float,
                 seed: int) -> None:
        super().__init__(settings, NoLimiter(), sleep=lambda s: None)
        self.model, self.ambiguous = model, ambiguous
        self.rng = random.Random(seed)
        self.calls: Counter[str] = Counter()

    def _send_once(self, api: str, body: dict[str, Any],
                   on_send: Callable[[], None] | None = None, max_wait: float | None = None,
                   lane: str = "high", read_timeout: float | None = None) -> dict[str, Any]:
        if on_send is not None:
            on_send()
        try:
            data = {"ErrorCode": 0, "Response": self.model.apply(api, body),
                    "RequestId": uuid.uuid4().hex}
        except Reject as r:
            data = {"ErrorCode": r.code, "ErrorInfo": r.info}
        code = int(data["ErrorCode"])
        self.calls[f"{api} {code}"] += 1
        if code == 0 and api == "set_battle_score" and self.rng.random() < self.ambiguous:
            self.calls["set_battle_score lost answer"] += 1
            raise TencentError(api, Outcome.ambiguous, "ReadTimeout (soak: answer lost)")
        outcome = classify_code(code)
        if outcome is not Outcome.success:
            raise TencentError(api, outcome, str(data.get("ErrorInfo", "")), code=code,
                               status=200)
        return data


# -- the workload -------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """What a simulated day holds (see the module's docstring)."""

    rooms: int = 1000
    days: int = 30
    day_seconds: int = 40
    gifts_per_room_day: int = 60
    battles_per_room_day: tuple[int, int] = (10, 20)
    battle_seconds: int = 1
    in_battle: float = 0.20  # share of gifts to a room owner in a battle
    to_guest: float = 0.10  # share of the outside gifts sent to a guest of a room in a battle
    duplicate: float = 0.005
    lost_gift: float = 0.001
    lost_start: float = 0.002
    lost_end: float = 0.01
    late: float = 0.001  # share of gift webhooks first delivered `late_delay` s late (a retry)
    late_delay: tuple[float, float] = (12.0, 20.0)  # after their battle was finalized
    ambiguous: float = 0.005
    dead_letters_per_day: int = 5
    reconcile: bool = False
    hold_seconds: float = 5.0
    warmup_days: int = 1
    final_grace: float | None = None  # None: the engine's own (10 s, not scaled)
    seed: int = 1


@dataclass(order=True)
class Delivery:
    """One webhook (or Tencent counting a lost one) at `t`."""

    t: float
    seq: int
    kind: str = field(compare=False)  # "start" | "gift" | "end" | "count"
    item: Any = field(compare=False)


class World:
    """The webhooks, planned ahead: battles a day at a time, gifts a second at a time, every
    delivery in one heap by time; what Tencent must learn (battles created, gifts counted,
    battles ended) is queued in `ops` for the control process, which holds its model."""

    def __init__(self, w: Workload, t0: int) -> None:
        self.w, self.t0 = w, t0
        self.rng = random.Random(w.seed)
        self.rooms = [f"room{i}" for i in range(w.rooms)]
        self.owner = {r: f"owner{i}" for i, r in enumerate(self.rooms)}
        self.heap: list[Delivery] = []
        self.ops: list[tuple] = [("rooms", self.owner)]
        self.seq = 0
        self.planned_seconds = 0  # seconds since t0 whose gifts are planned
        self.planned_days = 0
        #: second since t0 -> [(battle id, rooms)] of the battles running in it
        self.by_second: dict[int, list[tuple[str, list[str]]]] = defaultdict(list)
        self.gifts = 0
        self.battles = 0

    def push(self, t: float, kind: str, item: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, Delivery(t, self.seq, kind, item))

    def plan_day(self, day: int) -> None:
        """Pair rooms into battles over the day's seconds, each room within its quota."""
        w, rng = self.w, self.rng
        lo, hi = w.battles_per_room_day
        quota = {r: rng.randint(lo, hi) for r in self.rooms}
        busy_until = dict.fromkeys(self.rooms, 0)
        first = day * w.day_seconds
        slots = w.day_seconds - w.battle_seconds + 1
        for j in range(slots):
            s = first + j
            left = slots - j
            pick = [r for r in self.rooms if busy_until[r] <= s and quota[r]
                    and rng.random() < quota[r] / left * w.battle_seconds]
            rng.shuffle(pick)
            for a, b in zip(pick[::2], pick[1::2], strict=False):
                bid = f"d{day}-b{self.battles}"
                self.battles += 1
                quota[a] -= 1
                quota[b] -= 1
                busy_until[a] = busy_until[b] = s + w.battle_seconds
                start, end = self.t0 + s, self.t0 + s + w.battle_seconds
                rooms = {a: self.owner[a], b: self.owner[b]}
                self.ops.append(("battle", bid, rooms, w.battle_seconds * 1000, start))
                for k in range(w.battle_seconds):
                    self.by_second[s + k].append((bid, [a, b]))
                if rng.random() >= w.lost_start:
                    body = start_body(bid, start, w.battle_seconds * 1000, rooms)
                    self.push(start + rng.uniform(0.0, 0.03), "start", body)
                self.push(end + rng.uniform(0.1, 0.5), "end",
                          ("end", bid, start, end, rooms, rng.random() < w.lost_end))
        for k in range(w.dead_letters_per_day):  # invalid bodies: a negative coin count
            t = self.t0 + first + rng.uniform(0, w.day_seconds)
            body = gift_body(rng.choice(self.rooms), "x", 1, t)
            body["GiftWater"]["Coins"] = -1
            self.push(t, "gift", (body, f"d{day}-bad{k}", None))
        self.planned_days = day + 1

    def plan_second(self, s: int) -> None:
        """The gifts of second `s` (since t0): to owners in battles, outside, to guests."""
        w, rng = self.w, self.rng
        running = self.by_second.pop(s, [])
        in_battle = {r for _, rooms in running for r in rooms}
        free = [r for r in self.rooms if r not in in_battle] or self.rooms
        per_second = w.rooms * w.gifts_per_room_day / w.day_seconds
        n = int(per_second) + (rng.random() < per_second % 1)
        t_s = self.t0 + s
        for _ in range(n):
            u = rng.random()
            if running and u < w.in_battle:
                room = rng.choice(rng.choice(running)[1])
                to, at = self.owner[room], t_s + rng.uniform(0.03, 0.6)
            elif running and u < w.in_battle + (1 - w.in_battle) * w.to_guest:
                room = rng.choice(rng.choice(running)[1])
                to, at = f"guest{rng.randrange(50)}", t_s + rng.uniform(0.03, 0.95)
            else:
                room = rng.choice(free)
                to, at = self.owner[room], t_s + rng.uniform(0.03, 0.95)
            eid = f"g{self.gifts}"
            self.gifts += 1
            coins, sender = rng.choice((1, 5, 10, 99)), f"viewer{rng.randrange(1000)}"
            counted = ("count", room, to, coins, sender)
            if rng.random() < w.lost_gift:  # Tencent counts it; its webhook never comes
                self.push(at, "count", counted)
                continue
            body = gift_body(room, to, coins, t_s, sender=sender)
            if rng.random() < w.late:  # after its battle was finalized (10 s after its end)
                at += rng.uniform(*w.late_delay)
            self.push(at, "gift", (body, eid, counted))
            if rng.random() < w.duplicate:
                self.push(at + rng.uniform(0.1, 2.0), "gift", (body, eid, None))

    def plan_until(self, now: float) -> None:
        """Plan every second that starts within 1 s of `now` (and its day first)."""
        horizon = int(now - self.t0) + 1
        while self.planned_seconds <= horizon:
            s = self.planned_seconds
            if s // self.w.day_seconds >= self.planned_days:
                self.plan_day(s // self.w.day_seconds)
            self.plan_second(s)
            self.planned_seconds += 1

    def due(self, now: float) -> list[Delivery]:
        out = []
        while self.heap and self.heap[0].t <= now:
            out.append(heapq.heappop(self.heap))
        return out


# -- the control process: Tencent's model, the tick, the end game, end webhooks -----------


class Maintenance:
    """The beat's tick every TICK s, running what it dispatches on its thread pool (as a
    control worker does), and the end game (as the dedicated end-game process runs it)."""

    def __init__(self, rt: Any, reconcile: bool) -> None:
        from worker.engine.flush import audit
        from worker.engine.flush.flusher import flush_battle
        from worker.engine.reconcile.reconciler import reconcile_battle

        self.rt = rt
        self.work = {"flush": flush_battle, "audit": audit.audit_battle,
                     "reconcile": reconcile_battle if reconcile else None}
        self.stop = threading.Event()
        self.ticks = 0
        self.tick_max = 0.0
        self.errors: Counter[str] = Counter()
        self.threads = [threading.Thread(target=self._tick_loop, daemon=True, name="tick"),
                        threading.Thread(target=self._endgame, daemon=True, name="endgame")]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)

    def _dispatch(self, kind: str, ids: list[str]) -> None:
        from worker.engine.tick.dispatch import run_many

        fn = self.work.get(kind)
        if fn is not None:
            run_many(self.rt, fn, ids)

    def _tick_loop(self) -> None:
        from worker.engine.tick.dispatch import run_tick

        nxt = time.monotonic()
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                run_tick(self.rt, self._dispatch)
            except Exception as err:  # counted and shown: the tick goes on, as beat's would
                if not self.errors[type(err).__name__]:  # the first of each kind, in full
                    traceback.print_exc()
                self.errors[type(err).__name__] += 1
            self.ticks += 1
            self.tick_max = max(self.tick_max, time.monotonic() - t)
            nxt = max(nxt + TICK, time.monotonic())
            self.stop.wait(nxt - time.monotonic())

    def _endgame(self) -> None:
        from worker.engine.flush import endgame
        from worker.engine.flush.flusher import flush_battle

        endgame.run_dedicated(self.rt, flush_battle, self.stop)


def control_main(ops_in: Any, figures_out: Any, settings: Settings, w: Workload) -> None:
    """The control process (forked once the retention is scaled): Tencent's model and the
    client that reaches it, the tick and the end game in threads, and, in this thread, what
    the producer sends: battles created, gifts counted, battles ended (their end webhooks,
    with Tencent's final scores, ingested here), and requests for figures."""
    from worker.engine import runtime as runtime_mod
    from worker.engine.ingest import intake

    logging.getLogger("scorer").setLevel(logging.CRITICAL)
    model = SandboxState(SDKAPPID, SECRET, rate=10**9)
    rt = runtime_mod.build_runtime(settings)
    rt.client = InProcessTencent(settings, model, w.ambiguous, w.seed)
    runtime_mod.set_runtime(rt)
    maint = Maintenance(rt, w.reconcile)
    maint.start()
    forget: deque[tuple[float, str]] = deque()
    ends, end_cpu = 0, 0.0
    while True:
        ops = ops_in.recv()
        bodies = []
        for op in ops:
            if op[0] == "count":
                _, room, to, coins, sender = op
                model.count_gifts([{"RoomId": room, "To_Account": [to], "Coins": coins,
                                    "Count": 1, "From_Account": sender}])
            elif op[0] == "battle":
                _, bid, rooms, duration_ms, start = op
                model.create_battle([{"RoomId": r, "Owner_Account": o} for r, o in rooms.items()],
                                    duration_ms, start=start, battle_id=bid)
            elif op[0] == "end":
                _, bid, start, end, rooms, lost = op
                with model.lock:  # (forgotten already: the producer fell a minute behind)
                    b = model.battles.get(bid) or {"scores": dict.fromkeys(rooms, 0)}
                    scores = dict(b["scores"])
                    model.history.clear()
                forget.append((end + FORGET_AFTER, bid))
                if not lost:
                    bodies.append({"body": end_body(bid, start, end, scores, rooms),
                                   "event_id": None})
            elif op[0] == "rooms":
                for room, owner in op[1].items():
                    model.create_room(room, owner)
            elif op[0] in ("figures", "stop"):  # after every op of the day before it
                if op[0] == "stop":
                    maint.close()
                figures_out.send({"day": op[1], "end_cpu": end_cpu, "ends": ends,
                                  "ticks": maint.ticks, "tick_max": maint.tick_max,
                                  "errors": dict(maint.errors), "calls": dict(rt.client.calls)})
                maint.tick_max = 0.0
                if op[0] == "stop":
                    return
        while forget and forget[0][0] <= time.time():
            with model.lock:
                model.battles.pop(forget.popleft()[1], None)
        if bodies:
            c0 = time.thread_time()
            intake.store_items(rt, bodies, _no_drain)
            end_cpu += time.thread_time() - c0
            ends += len(bodies)


def _no_drain(token: str) -> None:
    """No Celery here: a drain is never sent (the queue stays empty)."""


# -- the producer: webhooks, ingest, figures ----------------------------------------------


@dataclass
class DayFigures:
    """What one simulated day measured (the Redis figures taken at its end)."""

    day: int
    gifts: int = 0  # gift webhooks delivered (duplicates and dead letters included)
    ingest_cpu: float = 0.0  # the producer's CPU in the gift ingest calls, s
    starts: int = 0
    start_cpu: float = 0.0  # ... in the start webhooks' ingest calls
    ends: int = 0
    end_cpu: float = 0.0  # the control process's CPU in the end webhooks' ingest calls
    control_cpu: float = 0.0  # the control process's CPU but for the end webhooks
    generator_cpu: float = 0.0  # the producer's CPU outside the ingest calls
    redis_cpu: float = 0.0
    ticks: int = 0
    tick_max: float = 0.0
    late: float = 0.0  # the latest delivery, s after its time
    counts: dict[str, int] = field(default_factory=dict)  # ingest's counts of the gifts
    redis: dict[str, Any] = field(default_factory=dict)

    @property
    def us_per_gift(self) -> float:
        return self.ingest_cpu / self.gifts * 1e6 if self.gifts else 0.0


def _kind(key: str) -> str:
    """A key's kind: `battle:seen`, `room:battles`, `room:seen_outside` (every bucket), or the
    key itself for a global one."""
    if key.startswith(("bs:{b:", "bs:{r:")):
        return ("battle:" if key[4] == "b" else "room:") + key.split("}:", 1)[1].split(":")[0]
    if key.startswith("bs:drain:claim:"):
        return "drain:claim"
    return key


def _room(key: str) -> str:
    return key[len("bs:{r:"):key.index("}:")]


def redis_figures(r: Any, rooms: list[str]) -> dict[str, Any]:
    """Memory, keys by kind, the largest room index and seen_outside (every bucket of a room
    summed: found by kind, whatever the key layout), held gifts, schedules and dead letters,
    Redis's CPU and its HGETALL and EVALSHA stats (cumulative)."""
    from worker.engine.state import keys
    from worker.engine.state.keys import RoomKeys

    info = r.info()
    stats = r.info("commandstats")
    kinds: Counter[str] = Counter()
    outside_keys: list[str] = []
    for key in r.scan_iter(count=5000):
        kind = _kind(key)
        kinds[kind] += 1
        if kind == "room:seen_outside":
            outside_keys.append(key)
    pipe = r.pipeline(transaction=False)
    for room in rooms:
        rk = RoomKeys(room)
        pipe.hlen(rk.battles)
        pipe.llen(rk.held)
    for key in outside_keys:
        pipe.scard(key)
        pipe.memory_usage(key)
    res = pipe.execute()
    n = 2 * len(rooms)
    index, held = res[0:n:2], res[1:n:2]
    outside: Counter[str] = Counter()
    outside_bytes: Counter[str] = Counter()
    for key, size, used in zip(outside_keys, res[n::2], res[n + 1::2], strict=True):
        outside[_room(key)] += size
        outside_bytes[_room(key)] += used or 0
    biggest_outside = max(outside, key=outside.__getitem__) if outside else None
    biggest_index = rooms[max(range(len(rooms)), key=index.__getitem__)]
    pipe = r.pipeline(transaction=False)
    for z in (keys.ACTIVE, keys.FLUSH_DUE, keys.RECONCILE_DUE, keys.UNRESOLVED, keys.AUDIT_DUE,
              keys.HELD_ROOMS, keys.ENDGAME_DUE, keys.FINAL_DUE):
        pipe.zcard(z)
    pipe.llen(keys.DEAD_LETTERS)
    pipe.memory_usage(keys.DEAD_LETTERS)
    pipe.memory_usage(RoomKeys(biggest_index).battles)
    (active, flush_due, recon_due, unresolved, audit_due, held_rooms, endgame_due, final_due,
     dead, dead_bytes, index_bytes) = pipe.execute()

    def cmd(name: str) -> tuple[int, int]:
        s = stats.get(f"cmdstat_{name}") or {}
        return int(s.get("calls", 0)), int(s.get("usec", 0))

    return {
        "used_memory": info["used_memory"], "keys": sum(kinds.values()), "kinds": dict(kinds),
        "index_max": max(index), "index_mean": sum(index) / len(index),
        "index_max_bytes": index_bytes or 0,
        "outside_max": outside[biggest_outside] if biggest_outside else 0,
        "outside_mean": sum(outside.values()) / len(rooms),
        "outside_max_bytes": outside_bytes[biggest_outside] if biggest_outside else 0,
        "outside_keys": len(outside_keys),
        "held": sum(held), "held_max": max(held),
        "active": active, "flush_due": flush_due, "reconcile_due": recon_due,
        "unresolved": unresolved, "audit_due": audit_due, "held_rooms": held_rooms,
        "endgame_due": endgame_due, "final_due": final_due,
        "dead_letters": dead, "dead_letter_bytes": dead_bytes or 0,
        "cpu": info["used_cpu_user"] + info["used_cpu_sys"],
        "hgetall": cmd("hgetall"), "evalsha": cmd("evalsha"),
    }


def expiry_audit(r: Any) -> dict[str, dict[str, int]]:
    """Keys by kind at the end: how many, how many with no expiry (they stay until deleted),
    and of those, how many belong to a battle still in bs:active (its keys get their expiry
    when it is finalized, 10 s after its end: expected) or bs:unresolved."""
    from worker.engine.state import keys

    live = set(r.zrange(keys.ACTIVE, 0, -1)) | set(r.zrange(keys.UNRESOLVED, 0, -1))
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"keys": 0, "no_expiry": 0,
                                                          "no_expiry_live": 0})
    batch: list[str] = []

    def run() -> None:
        pipe = r.pipeline(transaction=False)
        for k in batch:
            pipe.ttl(k)
        for k, ttl in zip(batch, pipe.execute(), strict=True):
            kind = out[_kind(k)]
            kind["keys"] += 1
            if ttl == -1:
                kind["no_expiry"] += 1
                kind["no_expiry_live"] += (k.startswith("bs:{b:")
                                           and k[len("bs:{b:"):k.index("}:")] in live)
        batch.clear()

    for key in r.scan_iter(count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            run()
    run()
    return dict(out)


class Link:
    """The producer's side of the control process: ops go through a sender thread (the
    producer never waits for the control process to read them), figures come back on a pipe
    of their own, its CPU is read from /proc."""

    def __init__(self, ops: Any, figures: Any, pid: int) -> None:
        self.ops, self.figures, self.pid = ops, figures, pid
        self.queue: queue.SimpleQueue[list[tuple] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._send, daemon=True, name="soak-ops")
        self.thread.start()

    def send(self, ops: list[tuple]) -> None:
        self.queue.put(ops)

    def _send(self) -> None:
        while (ops := self.queue.get()) is not None:
            self.ops.send(ops)

    def receive(self, timeout: float = 120.0) -> dict[str, Any]:
        if not self.figures.poll(timeout):
            raise RuntimeError(f"the control process (pid {self.pid}) sent nothing in {timeout} s")
        return self.figures.recv()

    def control_cpu(self) -> float:
        return process_tree_cpu(self.pid)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(10)


class Soak:
    """One run: the Redis server, the control process, and the producer (this process)."""

    def __init__(self, w: Workload, out: Callable[[str], None] = print) -> None:
        self.w, self.out = w, out
        self.days: list[DayFigures] = []

    def run(self) -> dict[str, Any]:
        from worker.engine import runtime as runtime_mod

        w = self.w
        server = RedisServer().start()
        scaled = scale_retention(w.day_seconds, w.hold_seconds, w.final_grace)
        control = None
        try:
            # SCORER_API_RATE at its highest: the in-process Tencent has no limit, and the
            # tick's budgets follow the rate (at 200 calls/s, 190 battles ending a second, as
            # compressed days make them, wait in line for the flushes that close them).
            settings = Settings(_env_file=None, sdkappid=SDKAPPID, secret_key=SECRET,
                                api_url="http://127.0.0.1:9", redis_url=server.url,
                                api_rate=API_RATE)
            ctx = mp.get_context("fork")
            ops_in, ops_out = ctx.Pipe(duplex=False)
            figures_in, figures_out = ctx.Pipe(duplex=False)
            control = ctx.Process(target=control_main, name="soak-control", daemon=True,
                                  args=(ops_in, figures_out, settings, w))
            control.start()
            rt = runtime_mod.build_runtime(settings)
            runtime_mod.set_runtime(rt)
            code = _code_version()
            self.out(f"code {code}; redis-server {server.url}; {os.cpu_count()} cores; "
                     f"one simulated day = "
                     f"{w.day_seconds} s: retention x1/{scaled.scale:g} ("
                     + ", ".join(f"{k} {a} -> {b:g} s" for k, (a, b) in scaled.fields.items())
                     + f"; rebound: {', '.join(scaled.names) or 'none'})")
            # The engine's warnings (dead letters, refused writes) are expected: not printed.
            logging.getLogger("scorer").setLevel(logging.CRITICAL)
            result = self._loop(rt, Link(ops_out, figures_in, control.pid))
            result["code"] = code
            result["scale"] = {"factor": scaled.scale, "day_seconds": w.day_seconds,
                               "fields": {k: list(v) for k, v in scaled.fields.items()},
                               "rebound": scaled.names}
            return result
        finally:
            if control is not None:
                control.join(15)
                if control.is_alive():
                    control.kill()
            runtime_mod.set_runtime(None)
            scaled.restore()
            server.cleanup()

    def _loop(self, rt: Any, link: Link) -> dict[str, Any]:
        from worker.engine.ingest import intake

        w = self.w
        total_days = w.warmup_days + w.days
        t0 = math.ceil(time.time()) + 1
        world = World(w, t0)
        wall0 = time.monotonic()
        self.out(HEADER)
        waiting: list[DayFigures] = []  # ended, their control figures not in yet
        last_fig: dict[str, Any] = {"ends": 0, "end_cpu": 0.0, "ticks": 0}
        day = DayFigures(-w.warmup_days)
        cpu0, redis0, control0 = time.process_time(), _redis_cpu(rt.redis), link.control_cpu()
        prev: dict[str, Any] = {"hgetall": (0, 0), "evalsha": (0, 0)}
        totals: Counter[str] = Counter()

        def figures_in(fig: dict[str, Any]) -> None:
            """The control process's figures of the oldest day waiting: the row is complete."""
            nonlocal last_fig
            d = waiting.pop(0)
            d.ends, d.end_cpu = fig["ends"] - last_fig["ends"], fig["end_cpu"] - last_fig["end_cpu"]
            d.control_cpu -= d.end_cpu
            d.ticks, d.tick_max = fig["ticks"] - last_fig["ticks"], fig["tick_max"]
            last_fig = fig
            self.days.append(d)
            self.out(_row(d))

        next_step = time.time()
        while True:
            now = time.time()
            if now >= t0 + (day.day + w.warmup_days + 1) * w.day_seconds:
                world.ops.append(("figures", day.day))
                link.send(world.ops)
                world.ops = []
                cpu, control = time.process_time(), link.control_cpu()
                day.generator_cpu = cpu - cpu0 - day.ingest_cpu - day.start_cpu
                day.control_cpu = control - control0  # less the end webhooks' (figures_in)
                day.redis = redis_figures(rt.redis, world.rooms)
                day.redis_cpu = day.redis["cpu"] - redis0
                for cmd in ("hgetall", "evalsha"):
                    calls, usec = day.redis[cmd]
                    day.redis[f"{cmd}_us"] = (usec - prev[cmd][1]) / max(calls - prev[cmd][0], 1)
                    prev[cmd] = (calls, usec)
                waiting.append(day)
                if len(self.days) + len(waiting) >= total_days:
                    break
                cpu0, redis0, control0 = time.process_time(), day.redis["cpu"], control
                day = DayFigures(day.day + 1)
                continue
            while link.figures.poll():
                figures_in(link.figures.recv())
            world.plan_until(now)
            starts, gifts = [], []
            for d in world.due(now):
                day.late = max(day.late, now - d.t)
                if d.kind == "start":
                    starts.append({"body": d.item, "event_id": None})
                elif d.kind == "gift":
                    body, eid, counted = d.item
                    if counted is not None:
                        world.ops.append(counted)
                    gifts.append({"body": body, "event_id": eid})
                else:  # "count" (a lost webhook's gift) or "end": the control process's
                    world.ops.append(d.item)
            if starts:  # before the gifts of their first second
                c0 = time.thread_time()
                intake.store_items(rt, starts, _no_drain)
                day.start_cpu += time.thread_time() - c0
                day.starts += len(starts)
            if gifts:
                c0 = time.thread_time()
                counts = intake.store_items(rt, gifts, _no_drain)
                day.ingest_cpu += time.thread_time() - c0
                day.gifts += len(gifts)
                totals.update(counts)
                for k, v in counts.items():
                    day.counts[k] = day.counts.get(k, 0) + v
            if world.ops:
                link.send(world.ops)
                world.ops = []
            next_step = max(next_step + STEP, time.time())
            time.sleep(max(0.0, next_step - time.time()))
        link.send([("stop", day.day)])
        while waiting:
            figures_in(link.receive())
        final = link.receive()  # after the control process stopped its threads
        link.close()
        wall = time.monotonic() - wall0
        audit = expiry_audit(rt.redis)
        summary = self._summary(audit, wall, final, totals)
        return {"workload": dataclasses.asdict(w),
                "days": [{**dataclasses.asdict(d), "us_per_gift": d.us_per_gift}
                         for d in self.days],
                "expiry": audit, "summary": summary, "wall_seconds": wall,
                "battles": world.battles, "gifts_planned": world.gifts}

    def _summary(self, audit: dict, wall: float, final: dict[str, Any],
                 totals: Counter[str]) -> dict[str, Any]:
        days = [d for d in self.days if d.day >= 0]
        return summarize(days, audit, wall, final, totals, self.out)


HEADER = ("day   gifts us/gift hgetall  start    end control  redis used_mem   keys  index"
          "   outside    held active  late\n"
          "                    us/call us/ev  us/ev   cpu s  cpu s       MB        fields"
          " ids (KB)                 s")


def _row(d: DayFigures) -> str:
    r = d.redis
    return (f"{d.day + 1:3d} {d.gifts:7d} {d.us_per_gift:7.1f} {r['hgetall_us']:7.2f}"
            f" {d.start_cpu / max(d.starts, 1) * 1e6:6.0f} {d.end_cpu / max(d.ends, 1) * 1e6:6.0f}"
            f" {d.control_cpu:7.1f} {d.redis_cpu:6.1f} {r['used_memory'] / 2**20:8.1f}"
            f" {r['keys']:6d} {r['index_max']:6d} {r['outside_max']:5d}"
            f" ({r['outside_max_bytes'] / 1024:4.0f}) {r['held']:6d} {r['active']:6d}"
            f" {d.late:5.2f}" + ("*" if d.late > LATE_OK else ""))


def _code_version() -> str:
    """The engine's commit, and how many of its files differ from it (others' work)."""
    import worker

    root = Path(worker.__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "worker"],
                               capture_output=True, text=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return f"{root} (no git)"
    return f"{head or root}" + (f" + {len(dirty)} engine files changed" if dirty else "")


def _redis_cpu(r: Any) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"] + info["used_cpu_sys"])


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def summarize(days: list[DayFigures], audit: dict, wall: float, final: dict[str, Any],
              totals: Counter[str], out: Callable[[str], None]) -> dict[str, Any]:
    """The verdicts, printed, on the days the producer kept up (a day whose webhooks arrived
    over LATE_OK s late is marked * and not judged: its webhooks came after their battles
    were finalized, and its figures belong partly to the next day). Cost: the median cost per
    gift of the last 5 judged days against the first 5's (one day's figure moves by 10 % with
    the machine's other load: the medians are the estimate of "day 30 against day 1"), and
    the literal last day against the first, printed. Memory: bounded unless the last third of
    the judged days from day 3 on (retention has cycled by then: a battle's keys live a day
    past its end, the outside ids two buckets of an hour, scaled) sets new highs: its median
    used_memory (and keys) more than 10 % over the highest of the days before it. (Not the
    first days' level: how many battles are live at once moves memory by 20 % with how fast
    the machine lets the producer go, whatever the history.) Battle or room keys left with no
    expiry also make it "growing": nothing ever removes them."""
    first, last = days[0], days[-1]
    ratio = last.us_per_gift / first.us_per_gift if first.us_per_gift else float("nan")
    judged = [d for d in days if d.late <= LATE_OK]
    if len(judged) < 4:  # the machine was too busy throughout: judge every day, and say so
        judged = days
    k = max(1, min(5, len(judged) // 3))
    cost_head = statistics.median(d.us_per_gift for d in judged[:k])
    cost_tail = statistics.median(d.us_per_gift for d in judged[-k:])
    medians = cost_tail / cost_head
    cycled = [d for d in judged if d.day >= 2] or judged
    n_tail = max(1, min(10, len(cycled) // 3))
    head, tail = cycled[:-n_tail] or cycled[:1], cycled[-n_tail:]
    mem_head = max(d.redis["used_memory"] for d in head)
    mem_tail = statistics.median(d.redis["used_memory"] for d in tail)
    keys_head = max(d.redis["keys"] for d in head)
    keys_tail = statistics.median(d.redis["keys"] for d in tail)
    growth = mem_tail / mem_head - 1
    key_growth = keys_tail / keys_head - 1
    leaks = {k: v["no_expiry"] - v["no_expiry_live"] for k, v in audit.items()
             if v["no_expiry"] > v["no_expiry_live"] and k.startswith(("battle:", "room:"))}
    s = {
        "cost_first_us": first.us_per_gift, "cost_last_us": last.us_per_gift,
        "cost_ratio": ratio, "cost_medians": [cost_head, cost_tail], "cost_medians_ratio": medians,
        "cost_verdict": "flat" if medians <= 1 + FLAT else "growing",
        "judged_days": [d.day + 1 for d in judged],
        "memory_head": mem_head, "memory_tail": mem_tail, "memory_growth": growth,
        "keys_head": keys_head, "keys_tail": keys_tail, "keys_growth": key_growth,
        "memory_verdict": "flat" if max(growth, key_growth) <= FLAT and not leaks
        else "growing",
        "index_max": [d.redis["index_max"] for d in days],
        "outside_max": [d.redis["outside_max"] for d in days],
        "wall_seconds": wall, "late_max": max(d.late for d in days),
        "tick_errors": final["errors"], "tencent_calls": final["calls"],
        "ingest_counts": dict(totals),
        # Keys that stay until deleted, but for those of battles not finalized yet (expected)
        # and the global keys (one each: schedules, counters, the dead-letter store).
        "no_expiry": leaks,
        "no_expiry_global": sorted(k for k, v in audit.items()
                                   if v["no_expiry"] and not k.startswith(("battle:", "room:"))),
    }
    out("\n".join([
        "",
        f"cost per gift: day 1 {first.us_per_gift:.1f} us, day {last.day + 1} "
        f"{last.us_per_gift:.1f} us (x{ratio:.2f}); median of the last {k} judged days against"
        f" the first {k}: {cost_head:.1f} -> {cost_tail:.1f} us (x{medians:.2f}) -> "
        f"{s['cost_verdict']} (flat: within {FLAT:.0%})",
        f"memory: at most {mem_head / 2**20:.1f} MB and {keys_head:.0f} keys on days "
        f"{_days(head)}; median {mem_tail / 2**20:.1f} MB ({growth:+.0%}) and {keys_tail:.0f} "
        f"keys ({key_growth:+.0%}) on days {_days(tail)}"
        + (", and battle or room keys with no expiry" if leaks else "")
        + f" -> {s['memory_verdict']}",
        f"judged: {len(judged)} of {len(days)} days"
        + ("" if len(judged) == len(days) else
           f" (the others, marked *, had webhooks over {LATE_OK:g} s late)"),
        f"largest room index by day: {_series(s['index_max'])}",
        f"largest seen_outside by day: {_series(s['outside_max'])}",
        f"battle and room keys with no expiry at the end (battles not finalized yet left out),"
        f" by kind: {s['no_expiry'] or 'none'}; global keys with none: "
        f"{len(s['no_expiry_global'])}",
        f"wall {wall:.0f} s, deliveries at most {s['late_max']:.2f} s late; tick errors: "
        f"{final['errors'] or 'none'}; Tencent calls: "
        + ", ".join(f"{k} {v}" for k, v in sorted(final["calls"].items())),
        "ingest counts: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())),
        *([f"note: the producer fell up to {s['late_max']:.1f} s behind its schedule (the "
           "machine's CPU): webhooks arrived that late, as in a backlog; with finalize 10 s "
           "after a battle's end, some arrived after their battle was finalized"]
          if s["late_max"] > 2.0 else []),
    ]))
    return s


def _days(ds: list[DayFigures]) -> str:
    """Day numbers, runs shortened: 3-20,22."""
    nums, out = [d.day + 1 for d in ds], []
    for n in nums:
        if out and out[-1][1] == n - 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in out)


def _series(xs: list[int]) -> str:
    return " ".join(str(x) for x in xs)


def main(argv: list[str] | None = None) -> int:
    """Run the soak and print its figures per simulated day."""
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    d = Workload()
    p.add_argument("--rooms", type=int, default=d.rooms)
    p.add_argument("--days", type=int, default=d.days)
    p.add_argument("--day-seconds", type=int, default=d.day_seconds,
                   help="real seconds per simulated day (retention scaled by 86400 / this)")
    p.add_argument("--gifts-per-room-day", type=int, default=d.gifts_per_room_day)
    p.add_argument("--battles-per-room-day", default="{}-{}".format(*d.battles_per_room_day),
                   help="a range, e.g. 10-20")
    p.add_argument("--warmup-days", type=int, default=d.warmup_days,
                   help="days run before day 1 (day 0, not judged): day 1 has a day's history")
    p.add_argument("--hold-seconds", type=float, default=d.hold_seconds,
                   help="the least a held gift waits for its battle (scaled hold_seconds)")
    p.add_argument("--reconcile", action="store_true",
                   help="run reconcile passes too (get_gift_count; off: CPU)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    lo, _, hi = args.battles_per_room_day.partition("-")
    w = Workload(rooms=args.rooms, days=args.days, day_seconds=args.day_seconds,
                 gifts_per_room_day=args.gifts_per_room_day,
                 battles_per_room_day=(int(lo), int(hi or lo)), hold_seconds=args.hold_seconds,
                 warmup_days=args.warmup_days, reconcile=args.reconcile, seed=args.seed)
    if w.battles_per_room_day[1] * w.battle_seconds > w.day_seconds:
        p.error("a room's battles do not fit in a day: raise --day-seconds")
    result = Soak(w, out=lambda s: print(s, flush=True)).run()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
