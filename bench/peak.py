"""`python -m bench.peak`: 200 overlapping battles at peak gift traffic on one default worker."""

from __future__ import annotations

import argparse
import base64
import gc
import json
import math
import os
import platform
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import redis
from celery import Celery

from bench.run import Bench, _latencies, _pct
from scorer_local.bodies import end_body, gift_body, start_body
from scorer_local.sandbox_control import SandboxControl
from scorer_local.stack import children_map

MODES = ("single", "bulk", "naive")
APIS = ("set_battle_score", "get_gift_count", "get_battle_info")
VALUES = (1, 5, 10, 99)
TICK = 0.01  # the generator's loop period
COUNT_EVERY = 0.02  # Tencent's counters get what is due this often
BULK_WINDOW = 0.05  # bulk mode: the producer's buffer
SAMPLE_EVERY = 0.25
SETTLE = 6.0  # after the last end, so late flushes can land
MODE_LIMIT = 150  # hard stop of one mode, setup included
MARKS = ("<!-- peak:start -->", "<!-- peak:end -->")


@dataclass
class Workload:
    """The whole schedule of one mode, computed before it starts."""

    battles: list[tuple[str, dict[str, str], int, int]]  # id, rooms (room -> owner), start, end
    gifts: list[tuple[int, str, int, float, dict, str]]  # battle, room, value, c, body, event id
    counts: list[tuple[float, int]]  # (time Tencent counts it, gift)
    deliveries: list[tuple[float, str, int]]  # (time, "gift" | "start", gift or battle)


def build(mode: str, n: int, duration: int, spread: int, seed: int, t0: int) -> Workload:
    """Battles, their Poisson gift streams and every delivery; the same seed gives every mode the
    same times and values (only the ids differ)."""
    rng = random.Random(seed)
    battles, gifts, deliveries = [], [], []
    for i in range(n):
        start = t0 + math.floor(i * spread / n)
        end = start + duration
        rooms = {f"{mode}{i}a": f"{mode}{i}oa", f"{mode}{i}b": f"{mode}{i}ob"}
        battles.append((f"{mode}-{i}", rooms, start, end))
        if mode != "naive":  # the naive baseline knows its battles without webhooks
            deliveries.append((float(start), "start", i))
        burst = max(start, end - 10)
        for room, owner in rooms.items():
            t = float(start)
            while True:
                nxt = t + rng.expovariate(9.0 if t >= burst else 3.0)
                if t < burst <= nxt:  # memoryless: draw again from the rate change
                    t = float(burst)
                    continue
                if nxt >= end:
                    break
                t, g, value = nxt, len(gifts), rng.choice(VALUES)
                gifts.append((i, room, value, t, gift_body(room, owner, value, t), f"g{g}"))
                for _ in range(2 if rng.random() < 0.02 else 1):  # 2 % delivered twice
                    deliveries.append((t + rng.uniform(-0.5, 1.5), "gift", g))
    deliveries.sort()
    return Workload(battles, gifts, sorted((g[3], k) for k, g in enumerate(gifts)), deliveries)


class Sender:
    """Celery protocol-2 messages LPUSHed on the `celery` list exactly as kombu's Redis transport
    writes them, from a template made by the real producer: send_task costs ~0.7 ms of CPU a
    message here, which the generator cannot spend 1,100 times a second beside the worker."""

    def __init__(self, app: Celery, r: redis.Redis) -> None:
        scratch = "bench.peak.template"
        app.send_task("bench.noop", queue=scratch)
        self.tpl = json.loads(r.rpop(scratch))
        r.delete(scratch)
        self.tpl["properties"]["delivery_info"]["routing_key"] = "celery"
        self.pipe = r.pipeline(transaction=False)
        self.sent = 0
        self.first = self.last = 0.0

    def add(self, task: str, args: tuple = (), kwargs: dict | None = None) -> None:
        """Queue one message for the next flush()."""
        tid = str(uuid.uuid4())
        kwargs = kwargs or {}
        body = [list(args), kwargs, {"callbacks": None, "errbacks": None, "chain": None,
                                     "chord": None}]
        headers = {**self.tpl["headers"], "task": task, "id": tid, "root_id": tid,
                   "argsrepr": repr(args)[:1024], "kwargsrepr": repr(kwargs)[:1024]}
        props = {**self.tpl["properties"], "correlation_id": tid, "delivery_tag": str(uuid.uuid4())}
        self.pipe.lpush("celery", json.dumps({
            **self.tpl, "body": base64.b64encode(json.dumps(body).encode()).decode(),
            "headers": headers, "properties": props}))
        self.sent += 1

    def flush(self) -> None:
        """Send what add() queued, in one round trip."""
        if len(self.pipe):
            self.pipe.execute()
            self.last = time.time()
            self.first = self.first or self.last


class _Timeout(Exception):
    """A mode ran past MODE_LIMIT."""


def _alarm(*_) -> None:
    raise _Timeout()


class PeakBench(Bench):
    """The stack a user runs: redis-server, the sandbox, ONE worker at its default concurrency,
    one beat (bench.run.Bench's close() stops them)."""

    def __init__(self) -> None:
        super().__init__(1, None, prefix="bs-peak-")

    def fresh(self) -> None:
        """Empty queues, Redis state and the sandbox: a previous mode's backlog is dropped, not
        drained (it is already measured)."""
        self.r.delete("celery", "scorer.control")
        deadline = time.time() + 15
        while self.r.hlen("unacked") and time.time() < deadline:
            time.sleep(0.2)  # messages the worker holds finish first
        self.r.delete("unacked", "unacked_index")  # held by a dead process: never redeliver
        for _ in range(2):  # again after a tick that read the old state has finished
            for key in self.r.scan_iter("bs:*"):
                self.r.delete(key)
            time.sleep(1.0)
        self.ctl.http.post("/sandbox/reset").raise_for_status()

    def run_mode(self, mode: str, n: int, duration: int, spread: int, seed: int) -> dict:
        """One mode end to end, on a fresh state; returns its figures."""
        self.fresh()
        wall0, cpu0 = time.time(), self.cpu()
        t0 = math.ceil(time.time()) + 4 + math.ceil(n * 0.01)
        run = Run(self, mode, build(mode, n, duration, spread, seed, t0))
        for bid, rooms, start, end in run.w.battles:
            self.ctl.create_battle(rooms, (end - start) * 1000, start=start, battle_id=bid)
        # Some webhooks come before Tencent counts their gift: the first up to 0.5 s before T0.
        go = min(t0, run.w.deliveries[0][0]) - 0.02
        run.setup_late = max(0.0, time.time() - go)
        time.sleep(max(0.0, go - time.time()))
        # Out of the collector's sight: with the workload's hundreds of thousands of objects,
        # every full collection would pause the generator.
        gc.freeze()
        try:
            run.go(hard_stop=wall0 + MODE_LIMIT - 20)
        finally:
            gc.unfreeze()
        wall, cpu1 = time.time() - wall0, self.cpu()
        state = self.ctl.state()["battles"]
        history = self.ctl.http.get("/sandbox/history").json()["history"]
        calls = self.ctl.http.get("/sandbox/calls").json()["calls"]
        self.r.delete("celery")  # what is still queued is too late: measured as final depth
        procs = [*self.procs.procs.items(), ("sandbox", self.sandbox),
                 ("redis", self.redis_server.proc)]
        exited = {name: p.poll() for name, p in procs if p.poll() is not None}
        cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
        return run.figures(state, history, calls, cpu, wall, exited)


class Run:
    """One mode's generator: Tencent's side, the delivery loop and the queue sampler, with what
    they saw."""

    def __init__(self, bench: PeakBench, mode: str, w: Workload) -> None:
        self.bench, self.mode, self.w = bench, mode, w
        self.counted_at: list[float | None] = [None] * len(w.gifts)
        self.first_at: list[float | None] = [None] * len(w.gifts)
        self.ends: queue.Queue = queue.Queue()  # end webhooks, built by tencent()
        self.stop = threading.Event()
        self.lag = {"delivery": 0.0, "count": 0.0}
        self.samples: list[tuple[float, int, int]] = []  # (t, celery + unacked, control)
        self.worker_pids: set[int] = set()
        self.sender = Sender(bench.producer, bench.r)
        self.last_end = max(e for *_, e in w.battles)
        self.setup_late = 0.0

    def go(self, hard_stop: float) -> None:
        """Run the schedule, then wait for late flushes to land."""
        threads = [threading.Thread(target=f, daemon=True) for f in (self.tencent, self.sample)]
        for t in threads:
            t.start()
        try:
            self.deliver(hard_stop)
            time.sleep(max(0.0, min(self.last_end + SETTLE, hard_stop) - time.time()))
        finally:
            self.stop.set()
            for t in threads:
                t.join(10)

    def tencent(self) -> None:
        """Tencent's side: count gifts at their time; read the final scores of each end webhook
        0.5 s after the end (the sandbox refuses changes after it), for delivery at end + 1 s."""
        w, ctl = self.w, SandboxControl(self.bench.sandbox_url)
        todo = [] if self.mode == "naive" else sorted(
            (e + 0.5, i) for i, (*_, e) in enumerate(w.battles))
        j = k = 0
        try:
            while not self.stop.is_set() and (j < len(w.counts) or k < len(todo)):
                now, batch = time.time(), []
                while j < len(w.counts) and w.counts[j][0] <= now:
                    self.lag["count"] = max(self.lag["count"], now - w.counts[j][0])
                    batch.append(w.counts[j][1])
                    j += 1
                if batch:
                    water = [(w.gifts[g][1], w.gifts[g][4]["GiftWater"]) for g in batch]
                    ctl.count_gifts([{"RoomId": room, "To_Account": gw["To_Account"],
                                      "From_Account": gw["From_Account"], "Coins": gw["Coins"],
                                      "Count": 1} for room, gw in water])
                    for g in batch:
                        self.counted_at[g] = now
                if k < len(todo) and todo[k][0] <= now:
                    scores = ctl.state()["battles"]
                    while k < len(todo) and todo[k][0] <= now:
                        bid, rooms, start, end = w.battles[todo[k][1]]
                        self.ends.put((end + 1.0, end_body(bid, start, end,
                                                           scores[bid]["scores"], rooms)))
                        k += 1
                self.stop.wait(max(0.0, COUNT_EVERY - (time.time() - now)))
        finally:
            ctl.close()

    def sample(self) -> None:
        """Queue depths every SAMPLE_EVERY s; the worker's process tree every second."""
        r, wpid, tick = self.bench.r, self.bench.procs.procs["worker"].pid, 0
        while not self.stop.is_set():
            q, unacked, control = r.pipeline(transaction=False).llen("celery").hlen(
                "unacked").llen("scorer.control").execute()
            self.samples.append((time.time(), q + unacked, control))
            if tick % 4 == 0:  # prefork children replaced during the run show up here
                kids, todo = children_map(), [wpid]
                while todo:
                    self.worker_pids.add(todo[-1])
                    todo.extend(kids.get(todo.pop(), []))
            tick += 1
            self.stop.wait(SAMPLE_EVERY)

    def deliver(self, hard_stop: float) -> None:
        """Every TICK, send the webhooks that are due, the way the mode sends them."""
        w, mode, sender = self.w, self.mode, self.sender
        buf: list[dict] = []
        held: list[tuple[float, dict]] = []  # end webhooks not due yet
        last_bulk, i, ends_left = time.time(), 0, (0 if mode == "naive" else len(w.battles))
        while time.time() < hard_stop:
            now, items = time.time(), []
            while i < len(w.deliveries) and w.deliveries[i][0] <= now:
                t, kind, x = w.deliveries[i]
                i += 1
                self.lag["delivery"] = max(self.lag["delivery"], now - t)
                if kind == "start":
                    bid, rooms, start, end = w.battles[x]
                    items.append({"body": start_body(bid, start, (end - start) * 1000, rooms),
                                  "event_id": None})
                    continue
                b, room, value, _, body, eid = w.gifts[x]
                self.first_at[x] = self.first_at[x] or now  # when the app got the webhook
                if mode == "naive":
                    sender.add("bench.naive_gift", args=(w.battles[b][0], room, value))
                else:
                    items.append({"body": body, "event_id": eid})
            while not self.ends.empty():
                held.append(self.ends.get())
            due, held = [e for e in held if e[0] <= now], [e for e in held if e[0] > now]
            for t, body in due:
                self.lag["delivery"] = max(self.lag["delivery"], now - t)
                items.append({"body": body, "event_id": None})
                ends_left -= 1
            if mode == "single":
                for item in items:
                    sender.add("scorer.webhook", kwargs=item if item["event_id"] else
                               {"body": item["body"]})
            elif mode == "bulk":
                buf.extend(items)
                if buf and now - last_bulk >= BULK_WINDOW:
                    sender.add("scorer.webhooks", kwargs={"items": buf})
                    buf, last_bulk = [], now
            sender.flush()
            if i >= len(w.deliveries) and ends_left <= 0 and not buf:
                return
            time.sleep(max(0.0, TICK - (time.time() - now)))

    def figures(self, state, history, calls, cpu, wall, exited) -> dict:
        """The figures of this mode from its schedule, what it saw and the sandbox's records."""
        w = self.w
        lower: dict[tuple[str, str], int] = defaultdict(int)
        upper: dict[tuple[str, str], int] = defaultdict(int)
        delivered = []
        for g, (b, room, value, *_) in enumerate(w.gifts):
            bid, _, start, end = w.battles[b]
            first, counted = self.first_at[g], self.counted_at[g]
            if first is not None:
                delivered.append((first, bid, room, value))
                lower[(bid, room)] += value if first <= end - 2 else 0
            if counted is not None and start <= counted < end:
                upper[(bid, room)] += value
        right = over = under = 0
        for bid, rooms, _, _ in w.battles:
            scores = state.get(bid, {}).get("scores", {})
            ok = True
            for room in rooms:
                s, lo, hi = int(scores.get(room, 0)), lower[(bid, room)], upper[(bid, room)]
                over, under = over + max(0, s - hi), under + max(0, lo - s)
                ok = ok and lo <= s <= hi
            right += ok
        # Gifts beyond a room's final score never reach a history entry: _latencies skips them.
        latencies = _latencies(delivered, history)
        by_api: dict[str, int] = defaultdict(int)
        late: dict[str, int] = defaultdict(int)
        for c in calls:
            by_api[c["api"]] += 1
            if c["error_code"] == 100006:
                late[(c["body"] or {}).get("BattleId")] += 1
        depths = [d for _, d, _ in self.samples] or [0]
        at_end = next((d for t, d, _ in self.samples if t >= self.last_end), depths[-1])
        rate = self.sender.sent / max(1e-9, self.sender.last - self.sender.first)
        cores = os.cpu_count() or 1
        return {
            "mode": self.mode, "battles": len(w.battles), "gifts": len(w.gifts),
            "deliveries": sum(1 for _, k, _ in w.deliveries if k == "gift"),
            "messages": self.sender.sent, "right": right, "over": over, "under": under,
            "peak_queue": max(depths), "peak_queue_s": max(depths) / rate,
            "queue_at_last_end": at_end,
            "peak_control_queue": max((c for *_, c in self.samples), default=0),
            "p50": _pct(latencies, .5), "p99": _pct(latencies, .99), "latency_n": len(latencies),
            "calls": {a: by_api.get(a, 0) for a in APIS},
            "set_per_1000": 1000 * by_api.get("set_battle_score", 0) / max(1, len(w.gifts)),
            "e100006": sum(late.values()), "e100006_max": max(late.values(), default=0),
            "e100012": sum(1 for c in calls if c["error_code"] == 100012),
            "cpu": cpu, "wall": wall, "cores": cores,
            "saturation": sum(v for k, v in cpu.items()
                              if k not in ("worker_main", "worker_control")) / (wall * cores),
            "lag_delivery": self.lag["delivery"], "lag_count": self.lag["count"],
            "setup_late": self.setup_late, "exited": exited,
            "worker_pids": len(self.worker_pids),
        }


def table(runs: list[dict]) -> str:
    """Modes side by side."""
    def row(name, fn):
        return f"{name:<40}" + "".join(f" {fn(r)!s:>23}" for r in runs)

    def cpu(k):
        return lambda r: f"{r['cpu'][k]:.1f}"

    lines = [
        row("mode", lambda r: r["mode"]),
        row("gifts / deliveries / messages",
            lambda r: f"{r['gifts']}/{r['deliveries']}/{r['messages']}"),
        row("battles right", lambda r: f"right {r['right']}/{r['battles']}"),
        row("over-count (coins)", lambda r: r["over"]),
        row("under-count (coins)", lambda r: r["under"]),
        row("peak queue, msgs (s of traffic)",
            lambda r: f"{r['peak_queue']} ({r['peak_queue_s'] or 0:.1f}s)"),
        row("queue when the last battle ended", lambda r: r["queue_at_last_end"]),
        row("peak scorer.control queue", lambda r: r["peak_control_queue"]),
        row("latency p50 / p99 (gifts counted)",
            lambda r: f"{r['p50']} / {r['p99']} ({r['latency_n']})"),
        *[row(f"{api} calls", lambda r, a=api: r["calls"][a]) for api in APIS],
        row("set_battle_score per 1,000 gifts", lambda r: f"{r['set_per_1000']:.0f}"),
        row("100006 answers (total / max battle)",
            lambda r: f"{r['e100006']} / {r['e100006_max']}"),
        row("100012 answers", lambda r: r["e100012"]),
        row("CPU s worker (main process / control pool)",
            lambda r: f"{r['cpu']['worker']:.1f} ({r['cpu']['worker_main']:.1f} / "
                      f"{r['cpu'].get('worker_control', 0):.1f})"),
        *[row(f"CPU s {k}", cpu(k)) for k in ("beat", "sandbox", "generator", "redis")],
        row("wall s / CPU used of all cores",
            lambda r: f"{r['wall']:.0f} / {100 * r['saturation']:.0f}%"),
        row("generator max lag (delivery / count)",
            lambda r: f"{r['lag_delivery']:.3f}s / {r['lag_count']:.3f}s"),
        row("worker processes seen", lambda r: r["worker_pids"]),
        row("processes exited", lambda r: ",".join(f"{k}={v}" for k, v in r["exited"].items())
            or "none"),
    ]
    return "\n".join(lines)


def write_results(path: str, command: str, text: str) -> None:
    """Replace the section between the peak markers of `path`, or append one."""
    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True,
                             text=True).stdout.split()[2].removeprefix("v=")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    section = (f"{MARKS[0]}\n## Peak load (bench/peak.py)\n\n```sh\n{command}\n```\n\n"
               f"Machine: {os.cpu_count()} cores, {mem:.0f} GiB, Python "
               f"{platform.python_version()}, Redis {redis_v}; {time.strftime('%Y-%m-%d')}. One "
               "worker at its default concurrency, one beat, the sandbox, Redis and the load "
               "generator (kombu's exact messages LPUSHed) share the machine.\n\n"
               f"```\n{text}\n```\n{MARKS[1]}")
    old = Path(path).read_text() if os.path.exists(path) else ""
    if MARKS[0] in old and MARKS[1] in old:
        head, rest = old.split(MARKS[0], 1)
        new = head + section + rest.split(MARKS[1], 1)[1]
    else:
        new = old + ("\n" if old and not old.endswith("\n") else "") + section + "\n"
    Path(path).write_text(new)


def main(argv: list[str] | None = None) -> int:
    """Run the modes asked for and print their figures side by side."""
    p = argparse.ArgumentParser(prog="python -m bench.peak", description=__doc__)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--battles", type=int, default=200)
    p.add_argument("--duration", type=int, default=30, help="seconds, each battle")
    p.add_argument("--spread", type=int, default=29, help="seconds over which battles start")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--results", help="write a markdown section here (between peak markers)")
    args = p.parse_args(argv)
    modes = args.modes.split(",")
    if set(modes) - set(MODES):
        p.error(f"modes are {', '.join(MODES)}")
    signal.signal(signal.SIGALRM, _alarm)
    bench = PeakBench()
    runs: list[dict] = []
    try:
        print(f"logs: {bench.logdir}; {os.cpu_count()} cores", flush=True)
        for mode in modes:
            signal.alarm(MODE_LIMIT)  # the hard stop of one mode, setup included
            try:
                run = bench.run_mode(mode, args.battles, args.duration, args.spread, args.seed)
            except _Timeout:
                print(f"{mode}: stopped after {MODE_LIMIT} s", flush=True)
                continue
            finally:
                signal.alarm(0)
            runs.append(run)
            print(f"{mode}: right {run['right']}/{run['battles']}, max generator lag "
                  f"{run['lag_delivery']:.3f}s (setup {run['setup_late']:.1f}s late)",
                  flush=True)
    finally:
        bench.close()
    text = (f"{args.battles} battles x 2 rooms, {args.duration} s each, starting over "
            f"{args.spread} s; gifts 3/s a room, 9/s in a battle's last 10 s\n{table(runs)}")
    print(f"\n{text}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2, default=str))
    if args.results:
        command = " ".join(["python -m bench.peak", *(sys.argv[1:] if argv is None else argv)])
        write_results(args.results, command, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
