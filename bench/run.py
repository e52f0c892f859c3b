"""`python -m bench.run`: the whole stack on this machine under load, beside the naive baseline.

Everything runs on 127.0.0.1: a redis-server, the Tencent sandbox (its own process, with the
real 200 calls/s limit per API), worker processes and a beat, and a bounded load generator.
Each figure is printed beside the same figure for the naive integration (bench/naive.py) run
in the same invocation. Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import redis
from celery import Celery

from scorer_local.bodies import gift_body, start_body
from scorer_local.stack import (
    ROOT,
    Processes,
    RedisServer,
    SandboxProcess,
    children_map,
    cmdline,
    process_tree_cpu,
    process_tree_rss,
    scorer_env,
)
from worker.engine.ingest import drain
from worker.engine.state import keys

SDKAPPID = 1400000000
FLUSH_INTERVAL = 1.0
CLK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """CPU seconds of one process alone, all threads (utime + stime)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK


@dataclass
class Run:
    """Figures of one scenario run."""

    mode: str
    battles: int
    gifts: int = 0
    exact: int = 0
    calls: int = 0
    max_calls_1s: int = 0
    over: int = 0
    under: int = 0
    inexact: list[int] = field(default_factory=list)  # battle indexes, for a diagnosis
    latencies: list[float] = field(default_factory=list)
    peak_rss: int = 0
    redis_per_battle: float = 0.0
    refused_100012: int = 0
    peak_ingest_queue: int = 0
    peak_control_queue: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core per component
    #: set_battle_score calls a second while battles were running: all, and those made in
    #: a battle's last END_SHARE s (its end game: deadline calls that go before freshness)
    calls_per_s: float = 0.0
    end_calls_per_s: float = 0.0


def wait_idle(r: redis.Redis, timeout: float = 120, poll: float = 0.1) -> None:
    """Wait (up to `timeout` s) until the ingest queue is empty and nothing is unacked."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not r.llen("celery") and not r.hlen("unacked"):
            return
        time.sleep(poll)


class Bench:
    """Owns the processes of one benchmark invocation."""

    def __init__(self, workers: int, concurrency: int | None, prefix: str = "bs-bench-") -> None:
        """`concurrency` None: one worker named `worker`, started as the README says (Celery's
        default concurrency)."""
        self.key = secrets.token_hex(16)
        self.logdir = tempfile.mkdtemp(prefix=prefix)
        self.redis_server = RedisServer().start()
        self.r = redis.Redis.from_url(self.redis_server.url, decode_responses=True)
        self.sandbox_process = SandboxProcess(SDKAPPID, self.key, self.logdir)
        self.sandbox, self.sandbox_url = self.sandbox_process.proc, self.sandbox_process.url
        self.ctl = self.sandbox_process.ctl
        self.procs = Processes(scorer_env(SDKAPPID, self.key, self.sandbox_url,
                                          self.redis_server.url, flush_interval=FLUSH_INTERVAL,
                                          reconcile_interval=15),
                               self.logdir, app="bench.celery_bench")
        try:
            if concurrency is None:
                self.procs.start("worker", "worker", "--loglevel=INFO", "-n", "worker@%h", "-E")
            for i in range(workers if concurrency is not None else 0):
                self.procs.worker(f"worker{i}", concurrency=concurrency)
            self.procs.beat()
            self.producer = Celery(broker=self.redis_server.url)
            deadline = time.time() + 60
            while not self.producer.control.ping(timeout=0.5):
                if time.time() > deadline:
                    raise RuntimeError(f"the worker did not answer; see {self.logdir}")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.procs.stop()
        self.sandbox_process.stop()
        self.redis_server.cleanup()

    # -- helpers ---------------------------------------------------------------------------

    def reset(self) -> None:
        self.wait_idle()
        for key in self.r.scan_iter("bs:*"):
            self.r.delete(key)
        self.ctl.http.post("/sandbox/reset")

    def wait_idle(self, timeout: float = 120) -> None:
        wait_idle(self.r, timeout)

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far per component: the worker's tree, its main process alone (Celery's
        consumer), its control worker, beat, the sandbox, Redis and the generator (this
        process, all threads). Needs the worker started as the README says (`worker`)."""
        kids = children_map()
        pids = {"worker": self.procs.procs["worker"].pid, "beat": self.procs.procs["beat"].pid,
                "sandbox": self.sandbox.pid, "redis": self.redis_server.proc.pid}
        control = [p for p in kids.get(pids["worker"], []) if "scorer.control" in cmdline(p)]
        endgame = [p for p in kids.get(pids["worker"], []) if "endgame_main" in cmdline(p)]
        return {**{k: process_tree_cpu(p) for k, p in pids.items()},
                "generator": time.process_time(), "worker_main": proc_cpu(pids["worker"]),
                "worker_control": sum(process_tree_cpu(p) for p in control),
                "worker_endgame": sum(process_tree_cpu(p) for p in endgame)}

    def worker_rss(self) -> int:
        return sum(process_tree_rss(p.pid) for n, p in self.procs.procs.items()
                   if n.startswith("worker"))

    # -- ingest drain ----------------------------------------------------------------------

    def drain(self, kind: str, events: int, per_message: int) -> float:
        """Events/s a worker drains from a pre-loaded queue."""
        self.reset()
        rooms = {f"ir{i}": f"io{i}" for i in range(32)}  # Tencent allows 32 rooms a battle
        now = time.time()
        bid = self.ctl.create_battle(rooms, 600_000, start=now)["BattleId"]
        self.producer.send_task("scorer.webhook",
                                kwargs={"body": start_body(bid, now, 600_000, rooms)})
        self.wait_idle()
        self.producer.control.cancel_consumer("celery", reply=True)
        time.sleep(0.5)
        room_list = list(rooms.items())
        sent = 0
        with self.producer.producer_or_acquire() as prod:
            while sent < events:
                if kind == "noop":
                    self.producer.send_task("bench.noop", producer=prod)
                    sent += 1
                    continue
                items = []
                for _ in range(per_message):
                    room, owner = room_list[sent % len(room_list)]
                    items.append({"body": gift_body(room, owner, 1, now + 1),
                                  "event_id": f"d-{sent}"})
                    sent += 1
                if per_message == 1:
                    self.producer.send_task("scorer.webhook", kwargs=items[0], producer=prod)
                else:
                    self.producer.send_task("scorer.webhooks", kwargs={"items": items},
                                            producer=prod)
        t0 = time.time()
        self.producer.control.add_consumer("celery", reply=True)
        while True:
            if kind == "noop":
                if not self.r.llen("celery") and not self.r.hlen("unacked"):
                    break
            elif int(self.r.hget("bs:stats", "received") or 0) >= events + 1:
                break
            if time.time() - t0 > 300:
                break
            time.sleep(0.01)
        return events / (time.time() - t0)

    # -- battles scenario ------------------------------------------------------------------

    def scenario(self, mode: str, n: int, duration: float, spread: float = 0.0,
                 seed: int = 1) -> Run:
        """n battles of 2 rooms through `mode`, all running at once from the same start; the
        first lasts `duration` s and the ends spread evenly over the next `spread` s. Each
        battle gets gifts at 0.2/s, bursting to 2/s in its last 10 s, until 2 s before its end."""
        self.reset()
        rng = random.Random(seed)
        # Time to create every battle in the sandbox (~2 ms each) and register it (~1 ms)
        # before it starts: the first battles to end must get their whole 20 s.
        start = time.time() + 3 + n * 0.004
        battles = []  # (battle id, rooms, end)
        for i in range(n):
            rooms = {f"{mode}{i}a": f"o{i}a", f"{mode}{i}b": f"o{i}b"}
            length = duration + spread * i / n
            bid = self.ctl.create_battle(rooms, int(length * 1000), start=start,
                                         battle_id=f"{mode}-{n}-{i}")["BattleId"]
            battles.append((bid, rooms, start + int(length * 1000) / 1000))
        end = max(e for _, _, e in battles)
        if mode == "scorer":
            items = [{"body": start_body(b, start, int((e - start) * 1000), rooms),
                      "event_id": None} for b, rooms, e in battles]
            for k in range(0, len(items), 500):
                self.producer.send_task("scorer.webhooks", kwargs={"items": items[k:k + 500]})
        if time.time() > start - 1:
            print(f"  (setup ran {time.time() - start + 1:.1f} s past its lead: the first "
                  "battles are shorter)", flush=True)
        redis_base = int(self.r.info("memory")["used_memory"])
        run = Run(mode, n)
        truth: dict[tuple[str, str], int] = defaultdict(int)
        delivered: list[tuple[float, str, str, int]] = []
        peak = {"rss": 0, "redis": 0, "ingest_q": 0, "control_q": 0}
        stop = threading.Event()

        trace: list[str] = []  # BENCH_DIAGNOSE: the flush schedule every 5 s

        def sample() -> None:
            k = 0
            while not stop.is_set():
                if os.environ.get("BENCH_DIAGNOSE") and k % 10 == 0:
                    now = time.time()
                    oldest = self.r.zrange(keys.FLUSH_DUE, 0, 0, withscores=True)
                    trace.append(f"{now - start:.0f}s: due {self.r.zcard(keys.FLUSH_DUE)}, "
                                 f"behind {now - oldest[0][1] if oldest else 0:.1f}s, "
                                 f"round {float(self.r.get(keys.FLUSH_ROUND) or 0):.1f}s, "
                                 f"late {self.r.zcount(keys.FLUSH_DUE, '-inf', now)}, "
                                 f"tick {now - float(self.r.get(keys.TICK_AT) or now):.1f}s ago, "
                                 f"control q {_kinds(self.r.lrange(keys.CONTROL_QUEUE, 0, -1))}")
                k += 1
                peak["rss"] = max(peak["rss"], self.worker_rss())
                peak["redis"] = max(peak["redis"], int(self.r.info("memory")["used_memory"]))
                peak["ingest_q"] = max(peak["ingest_q"], self.r.llen("celery"))
                peak["control_q"] = max(peak["control_q"], self.r.llen(keys.CONTROL_QUEUE))
                stop.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        time.sleep(max(0.0, start - time.time()))
        cpu0, wall0 = self.cpu() if "worker" in self.procs.procs else {}, time.time()
        last_gift = end - 2 * FLUSH_INTERVAL
        seq = 0
        with self.producer.producer_or_acquire() as prod:
            while time.time() < last_gift:
                tick = time.time()
                batch = []
                for bid, rooms, b_end in battles:
                    left = b_end - tick
                    if left < 2 * FLUSH_INTERVAL:
                        continue  # gifts stop 2 s before the end: those must all count
                    rate = 2.0 if left <= 10 else 0.2  # gifts per second per battle
                    if rng.random() < rate * 0.1:
                        room = rng.choice(list(rooms))
                        batch.append((bid, room, rooms[room], rng.choice([1, 5, 10, 99])))
                if batch:
                    self.ctl.count_gifts([{"RoomId": room, "To_Account": [owner],
                                           "From_Account": "v", "Coins": v, "Count": 1}
                                          for _, room, owner, v in batch])
                    now = time.time()
                    items = []
                    for bid, room, owner, v in batch:
                        seq += 1
                        truth[(bid, room)] += v
                        delivered.append((now, bid, room, v))
                        if mode == "naive":
                            self.producer.send_task("bench.naive_gift", args=(bid, room, v),
                                                    producer=prod)
                        else:
                            items.append({"body": gift_body(room, owner, v, now),
                                          "event_id": f"g{seq}"})
                    for k in range(0, len(items), 100):
                        self.producer.send_task("scorer.webhooks",
                                                kwargs={"items": items[k:k + 100]},
                                                producer=prod)
                time.sleep(max(0.0, 0.1 - (time.time() - tick)))
        time.sleep(max(0.0, end + 5 - time.time()))
        if cpu0:
            cpu1, wall = self.cpu(), time.time() - wall0
            run.cpu = {k: 100 * (cpu1[k] - cpu0[k]) / wall for k in cpu0}
        stop.set()
        sampler.join()
        self.r.delete("celery")  # whatever the naive way has not drained by now is too late
        state = self.ctl.state()
        history = self.ctl.http.get("/sandbox/history").json()["history"]
        calls = self.ctl.http.get("/sandbox/calls").json()["calls"]
        run.gifts = len(delivered)
        run.calls = sum(1 for c in calls if c["api"] == "set_battle_score"
                        and c["error_code"] is None and c["fault"] is None)
        run.refused_100012 = sum(1 for c in calls if c["error_code"] == 100012)
        run.max_calls_1s = state["max_calls_per_second"].get("set_battle_score", 0)
        run.calls_per_s, run.end_calls_per_s = _call_split(battles, calls)
        for i, (bid, rooms, _) in enumerate(battles):
            scores = state["battles"][bid]["scores"]
            ok = True
            for room in rooms:
                diff = int(scores.get(room, 0)) - truth[(bid, room)]
                run.over += max(0, diff)
                run.under += max(0, -diff)
                ok &= diff == 0
            run.exact += ok
            if not ok:
                run.inexact.append(i)
        run.latencies = _latencies(delivered, history)
        if run.inexact and os.environ.get("BENCH_DIAGNOSE"):
            _diagnose(battles, run.inexact[:8], delivered, calls)
        if os.environ.get("BENCH_DIAGNOSE"):
            _diagnose_freshness(battles, delivered, history, start, fair_share(n))
            print("  schedule: " + "; ".join(trace), flush=True)
            _diagnose_calls(battles, calls, start, self.r.hgetall(keys.METRICS_LIMITER_WAIT))
            _diagnose_arrivals(calls)
        run.peak_rss = peak["rss"]
        run.peak_ingest_queue, run.peak_control_queue = peak["ingest_q"], peak["control_q"]
        run.redis_per_battle = max(0, peak["redis"] - redis_base) / max(1, n)
        return run


def _kinds(messages: list[str]) -> str:
    """A queue's messages counted by task name (BENCH_DIAGNOSE: what the control queue holds)."""
    count: dict[str, int] = defaultdict(int)
    for m in messages:
        try:
            count[str(drain.decode(m).task).removeprefix("scorer.")] += 1
        except drain.BadMessage:
            count["?"] += 1
    return "/".join(f"{k} {v}" for k, v in sorted(count.items())) or "0"


def _bin10(t: float, start: float) -> int:
    """The 10 s bin (its start, in s from `start`) holding time `t`."""
    return int((t - start) // 10) * 10


def _diagnose_calls(battles, calls, start: float, waited: dict[str, str]) -> None:
    """The schedule as the sandbox saw it (BENCH_DIAGNOSE=1): set_battle_score calls a second
    by 10 s (all, and the end game's), the gaps between a battle's calls in the first 120 s
    (its end game's apart), get_gift_count calls a second, and the limiter's waits per API."""
    ends = {bid: end for bid, _, end in battles}
    per10: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    turns: dict[str, list[float]] = defaultdict(list)
    reads: dict[int, int] = defaultdict(int)
    for c in calls:
        bid = (c["body"] or {}).get("BattleId")
        if c["api"] == "set_battle_score" and bid in ends:
            per10[_bin10(c["t"], start)][ends[bid] - c["t"] <= END_SHARE] += 1
            if c["t"] - start < 120:
                turns[bid].append(c["t"])
        elif c["api"] == "get_gift_count":
            reads[_bin10(c["t"], start)] += 1
    gaps: dict[int, int] = defaultdict(int)
    for bid, ts in turns.items():
        for a, b in itertools.pairwise(sorted(ts)):
            if ends[bid] - b > END_SHARE:
                gaps[_bin10(b - a, 0.0)] += 1
    print("  calls/s by 10 s (all, end game): " + ", ".join(
        f"{t}: {(a + b) / 10:.0f}, {b / 10:.0f}" for t, (a, b) in sorted(per10.items())),
        flush=True)
    print("  gaps between a battle's calls in the first 120 s (10 s bins): " + ", ".join(
        f"{g}: {k}" for g, k in sorted(gaps.items())), flush=True)
    print("  get_gift_count calls/s by 10 s: " + ", ".join(
        f"{t}: {k / 10:.0f}" for t, k in sorted(reads.items())), flush=True)
    print("  limiter wait, s in all, by API: " + ", ".join(
        f"{api}: {float(w):.0f}" for api, w in sorted(waited.items())), flush=True)


#: A call within this many seconds of its battle's end counts as the end game's.
END_SHARE = 3.0


def _call_split(battles, calls) -> tuple[float, float]:
    """set_battle_score calls a second while battles run (first call to last end): all of
    them, and those in their battle's last END_SHARE s. What the end game takes first, the
    freshness flushes of every other battle cannot use."""
    ends = {bid: end for bid, _, end in battles}
    ok = [c for c in calls if c["api"] == "set_battle_score" and c["error_code"] is None
          and c["fault"] is None and (c["body"] or {}).get("BattleId") in ends]
    if not ok or not ends:
        return 0.0, 0.0
    first = min(c["t"] for c in ok)
    span = max(1.0, max(ends.values()) - first)
    near = sum(1 for c in ok if 0 <= ends[c["body"]["BattleId"]] - c["t"] <= END_SHARE)
    return len(ok) / span, near / span


def fair_share(n: int, rate: int = 200) -> float:
    """The freshness bound: every battle with value flushed once per N / (0.9 x rate) s."""
    return max(FLUSH_INTERVAL, n / (0.9 * rate)) + 1.0


def _latencies(delivered, history, with_gift: bool = False) -> list:
    """Delivery → the moment the sandbox's score of the room first includes the gift
    (`with_gift`: as (gift, latency) pairs)."""
    by_room: dict[tuple[str, str], list] = defaultdict(list)
    for h in history:
        by_room[(h["battle"], h["room"])].append((h["t"], h["score_after"]))
    cum: dict[tuple[str, str], int] = defaultdict(int)
    out = []
    for t, bid, room, v in sorted(delivered):
        cum[(bid, room)] += v
        need = cum[(bid, room)]
        for ht, score in by_room.get((bid, room), []):
            if score >= need:
                lat = max(0.0, ht - t)
                out.append(((t, bid, room, v), lat) if with_gift else lat)
                break
    return out


def busiest_window(stamps: list[float], window: float = 1.0) -> int:
    """The most stamps in any sliding `window` s (tests/integration/test_ratelimit.py too)."""
    stamps, best, j = sorted(stamps), 0, 0
    for i, t in enumerate(stamps):
        while stamps[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def _diagnose_arrivals(calls) -> None:
    """The busiest second of set_battle_score by arrival (the kernel's stamp, what the sandbox
    counts, as Tencent does) and by when the sandbox's threads read the calls (what it counted
    before the seventh session): the gap is this machine's, not the worker's."""
    ok = [c for c in calls if c["api"] == "set_battle_score" and c["error_code"] != 100012]
    if not ok:
        return
    arrived = [c["t"] if c.get("t_arrived") is None else c["t_arrived"] for c in ok]
    lag = sorted(c["t"] - a for c, a in zip(ok, arrived, strict=True))
    print(f"  busiest second by arrival / by the sandbox's read: "
          f"{busiest_window(arrived)} / "
          f"{busiest_window([c['t'] for c in ok])} calls; arrival to read p99 / max "
          f"{lag[int(0.99 * (len(lag) - 1))] * 1000:.0f} / {lag[-1] * 1000:.0f} ms", flush=True)


def _diagnose(battles, indexes, delivered, calls) -> None:
    """For a few inexact battles: when their last gift came and when they were flushed,
    relative to their end (BENCH_DIAGNOSE=1)."""
    for i in indexes:
        bid, _, end = battles[i]
        last_gift = max((t for t, b, _, _ in delivered if b == bid), default=None)
        times = [(round(c["t"] - end, 2), c["error_code"]) for c in calls
                 if c["api"] == "set_battle_score" and (c["body"] or {}).get("BattleId") == bid]
        gift = "-" if last_gift is None else f"{last_gift - end:.2f}"
        print(f"  diagnose {i}: last gift at end{gift}s; calls (s from end, error): "
              f"{times[-6:]}", flush=True)


def _diagnose_freshness(battles, delivered, history, start: float, bound: float) -> None:
    """Where the gifts past the freshness bound were (BENCH_DIAGNOSE=1): p99 by delivery time,
    and how far from their battle's end the late ones were delivered."""
    ends = {bid: end for bid, _, end in battles}
    late = _latencies(delivered, history, with_gift=True)
    by_t: dict[int, list[float]] = defaultdict(list)
    to_end: dict[int, int] = defaultdict(int)
    over = 0
    for (t, bid, _, _), lat in late:
        by_t[int((t - start) // 20) * 20].append(lat)
        if lat > bound:
            over += 1
            to_end[int((ends[bid] - t) // 10) * 10] += 1
    print(f"  freshness: {over} of {len(late)} gifts over {bound:.1f} s", flush=True)
    print("  p99 by delivery time (s from start): " + ", ".join(
        f"{k}: {_pct(v, .99)}" for k, v in sorted(by_t.items())), flush=True)
    print("  over-bound gifts by time to their end (s): " + ", ".join(
        f"{k}: {v}" for k, v in sorted(to_end.items())), flush=True)


def _ranges(xs: list[int]) -> str:
    """[0, 1, 2, 7] → '0-2, 7'."""
    out: list[str] = []
    for x in xs:
        if out and x == int(out[-1].split("-")[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{x}"
        else:
            out.append(str(x))
    return ", ".join(out)


def _pct(xs: list[float], p: float) -> str:
    if not xs:
        return "-"
    xs = sorted(xs)
    return f"{xs[min(len(xs) - 1, int(p * len(xs)))]:.2f}s"


def _cpu(run: Run, *names: str) -> str:
    """CPU % of the named components ("ingest": the worker less its control workers and its
    end-game process)."""
    if not run.cpu:
        return "-"
    c = dict(run.cpu, ingest=run.cpu["worker"] - run.cpu["worker_control"]
             - run.cpu.get("worker_endgame", 0.0))
    return " / ".join(f"{c[n]:.0f}" for n in names)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b else "-"


NOTES = "Reading it:"


def _write_results(path: str, command: str, table: str) -> None:
    """bench/RESULTS.md: command, machine, versions and the table; notes already below kept."""
    import platform
    from importlib.metadata import version

    notes = ""
    if os.path.exists(path):
        with open(path) as fh:
            old = fh.read()
        if NOTES in old:
            notes = "\n" + old[old.index(NOTES):]
    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True,
                             text=True).stdout.split()[2].removeprefix("v=")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = ", ".join(f"{p} {version(p)}" for p in ("celery", "redis", "httpx"))
    with open(path, "w") as fh:
        fh.write(f"""# Benchmark results

Command (the whole stack on this machine: redis-server, the sandbox as its own process with
Tencent's 200 calls/s per API, worker processes, one beat, a bounded load generator; each
figure beside the naive baseline of bench/naive.py, run in the same invocation):

```sh
.venv/bin/{command}
```

Machine: {os.cpu_count()} cores, {mem:.0f} GiB, {platform.platform(terse=True)}, Python
{platform.python_version()}, Redis {redis_v}, {versions}; {time.strftime("%Y-%m-%d")}. The load
generator, the sandbox and Redis share the machine with the worker.

The scenario: N battles of 2 rooms run at once from the same start. The first ends after
`--duration` s, the rest end evenly after it at `--ends-per-second` (0: all in the same
second), as battles do in a real app. Every battle gets gifts at 0.2/s, 2/s in its last 10 s,
until 2 s before its end; every gift is also counted in the sandbox's gift counters, as
Tencent would. A battle is exact when its final score on the sandbox equals the value of its
gifts.

```
{table}
```
{notes}""")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    p.add_argument("--sizes", default="10,200,2000",
                   help="concurrent battles per scenario (e.g. 10,200,2000,10000)")
    p.add_argument("--duration", type=float, default=20.0,
                   help="length of the shortest battle, seconds")
    p.add_argument("--ends-per-second", type=float, default=40.0,
                   help="battle ends per second once the first ends (0: all end together)")
    p.add_argument("--events", type=int, default=20_000, help="events per ingest drain")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=None,
                   help="worker processes per worker (default: Celery's, as the README starts it)")
    p.add_argument("--modes", default="scorer,naive", help="which integrations to run")
    p.add_argument("--no-ingest", action="store_true", help="skip the ingest drains")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--results", help="write the table here, keeping the notes below it "
                   "(default: bench/RESULTS.md, for a full run only: ingest and both modes)")
    args = p.parse_args(argv)
    if args.results is None and not args.no_ingest and set(args.modes.split(",")) == {
            "scorer", "naive"}:
        args.results = str(ROOT / "bench" / "RESULTS.md")
    bench = Bench(args.workers, args.concurrency)
    table: list[str] = []

    def emit(line: str) -> None:
        print(line, flush=True)
        table.append(line)

    out: dict = {"machine": f"{os.cpu_count()} cores", "ingest": {}, "scenarios": []}
    try:
        print(f"logs: {bench.logdir}", flush=True)
        if not args.no_ingest:
            noop = bench.drain("noop", min(args.events, 5000), 1)
            single = bench.drain("gift", min(args.events, 5000), 1)
            bulk100 = bench.drain("gift", args.events, 100)
            bulk1000 = bench.drain("gift", args.events * 2, 1000)
            out["ingest"] = {"celery_noop_per_s": noop, "single_per_s": single,
                             "bulk100_per_s": bulk100, "bulk1000_per_s": bulk1000}
            emit("\ningest, events/s per machine (worker concurrency "
                  f"{args.workers}x{args.concurrency or os.cpu_count()})")
            emit(f"  Celery no-op drain (ceiling of one event per message): {noop:9.0f}")
            emit(f"  scorer.webhook, 1 event per message:                   {single:9.0f}"
                  f"  ({_ratio(single, noop)} of the no-op ceiling)")
            emit(f"  scorer.webhooks, 100 events per message:               {bulk100:9.0f}"
                  f"  ({_ratio(bulk100, single)} single)")
            emit(f"  scorer.webhooks, 1,000 events per message:             {bulk1000:9.0f}"
                  f"  ({_ratio(bulk1000, single)} single)")
        for n in [int(x) for x in args.sizes.split(",")]:
            spread = n / args.ends_per_second if args.ends_per_second > 0 else 0.0
            modes = args.modes.split(",")
            runs = {m: bench.scenario(m, n, args.duration, spread) for m in modes}
            s, nv = runs.get("scorer", Run("scorer", n)), runs.get("naive", Run("naive", n))
            out["scenarios"].append({m: {**r.__dict__, "latencies": None,
                                         "p50": _pct(r.latencies, .5),
                                         "p99": _pct(r.latencies, .99),
                                         "max": _pct(r.latencies, 1)} for m, r in runs.items()})
            emit(f"\n{n} battles x 2 rooms at once, ending from {args.duration:.0f} s over "
                  f"{spread:.0f} s, gifts bursting in each battle's last 10 s "
                  f"({s.gifts} gifts scorer / {nv.gifts} naive)")
            rows = [
                ("battles exact", f"{s.exact}/{n}", f"{nv.exact}/{n}"),
                ("over-count (coins)", s.over, nv.over),
                ("under-count (coins)", s.under, nv.under),
                ("set_battle_score calls per 1,000 gifts",
                 f"{1000 * s.calls / max(1, s.gifts):.0f}",
                 f"{1000 * nv.calls / max(1, nv.gifts):.0f}"),
                ("max set_battle_score calls in 1 s", s.max_calls_1s, nv.max_calls_1s),
                ("100012 answers (frequency limit)", s.refused_100012, nv.refused_100012),
                ("latency p50 / p99 / max",
                 f"{_pct(s.latencies, .5)} / {_pct(s.latencies, .99)} / {_pct(s.latencies, 1)}",
                 f"{_pct(nv.latencies, .5)} / {_pct(nv.latencies, .99)} / "
                 f"{_pct(nv.latencies, 1)}"),
                ("fair-share bound N / (0.9 x rate) + 1 s", f"{fair_share(n):.1f}s", ""),
                ("set_battle_score calls/s while running: all / last 3 s",
                 f"{s.calls_per_s:.0f} / {s.end_calls_per_s:.0f}",
                 f"{nv.calls_per_s:.0f} / {nv.end_calls_per_s:.0f}"),
                ("peak queue, messages (ingest / control)",
                 f"{s.peak_ingest_queue} / {s.peak_control_queue}",
                 f"{nv.peak_ingest_queue} / {nv.peak_control_queue}"),
                ("CPU %, one core = 100: worker ingest/control/endgame",
                 _cpu(s, "ingest", "worker_control", "worker_endgame"),
                 _cpu(nv, "ingest", "worker_control")),
                ("  beat / sandbox / Redis / generator",
                 _cpu(s, "beat", "sandbox", "redis", "generator"),
                 _cpu(nv, "beat", "sandbox", "redis", "generator")),
                ("peak worker RSS", f"{s.peak_rss / 2**20:.0f} MiB",
                 f"{nv.peak_rss / 2**20:.0f} MiB"),
                ("Redis memory per active battle", f"{s.redis_per_battle / 1024:.1f} KiB",
                 f"{nv.redis_per_battle / 1024:.1f} KiB"),
            ]
            emit(f"  {'figure':<42} {'battle-scorer':>24} {'naive':>24}")
            for name, a, b in rows:
                emit(f"  {name:<42} {a!s:>24} {b!s:>24}")
            if s.inexact:
                emit(f"  (battle-scorer inexact, by order of end: {_ranges(s.inexact)})")
            sys.stdout.flush()
    finally:
        bench.close()
    if args.results:
        _write_results(args.results, " ".join(["python -m bench.run", *(argv or sys.argv[1:])]),
                       "\n".join(table).strip("\n"))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
