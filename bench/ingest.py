"""`python -m bench.ingest`: ingest rates in one run: Celery's no-op ceiling, one-message-per-gift
drained in batches, bulk messages, and ingest while flushes use the whole API budget.

The stack is the one the README tells a user to run: a redis-server, the sandbox as its own
process (Tencent's 200 calls/s per API), `celery -A bench.celery_bench worker` with its default
concurrency (the worker app plus the bench's no-op task) and, for the last figure, one beat.
Each queue is pre-loaded while its consumer is cancelled, then the consumer is added and the
clock runs until every event is stored. Messages are hand-built Celery protocol 2 JSON pushed
in pipelines (what a producer in another language does), so the producer is never the limit.
CPU seconds per component tell a worker limit from a machine limit.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import sys
import tempfile
import time
import uuid

import redis
from celery import Celery

from bench.run import wait_idle
from scorer_local.bodies import gift_body, start_body
from scorer_local.stack import Processes, RedisServer, SandboxProcess, process_tree_cpu, scorer_env

SDKAPPID = 1400000000


def message(task: str, kwargs: dict, queue: str = "celery") -> str:
    """A Celery protocol 2 message as kombu's Redis transport stores it (README: producers)."""
    body = base64.b64encode(json.dumps([[], kwargs, {"callbacks": None, "errbacks": None,
                                                     "chain": None, "chord": None}]).encode())
    task_id = str(uuid.uuid4())
    return json.dumps({
        "body": body.decode(), "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {"lang": "py", "task": task, "id": task_id, "root_id": task_id,
                    "parent_id": None, "group": None, "retries": 0, "eta": None,
                    "expires": None, "argsrepr": "()", "kwargsrepr": "{}"},
        "properties": {"correlation_id": task_id, "delivery_mode": 2, "priority": 0,
                       "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
                       "delivery_info": {"exchange": "", "routing_key": queue}}})


class Stack:
    """redis-server, sandbox, one worker as a user starts it; beat on demand."""

    def __init__(self) -> None:
        self.logdir = tempfile.mkdtemp(prefix="bs-ingest-")
        self.redis_server = RedisServer().start()
        self.r = redis.Redis.from_url(self.redis_server.url, decode_responses=True)
        key = secrets.token_hex(16)
        self.sandbox_process = SandboxProcess(SDKAPPID, key, self.logdir)
        self.sandbox, self.ctl = self.sandbox_process.proc, self.sandbox_process.ctl
        self.procs = Processes(scorer_env(SDKAPPID, key, self.sandbox_process.url,
                                          self.redis_server.url, flush_interval=1.0,
                                          reconcile_interval=15),
                               self.logdir, app="bench.celery_bench")
        self.worker = self.procs.start("worker", "worker", "--loglevel=INFO", "-n",
                                       "worker@%h", "-E")
        self.producer = Celery(broker=self.redis_server.url)
        while len(self.producer.control.ping(timeout=1.0)) < 2:  # the worker and its control
            time.sleep(0.2)

    def close(self) -> None:
        self.procs.stop()
        self.sandbox_process.stop()
        self.redis_server.cleanup()

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far per component."""
        out = {"worker": process_tree_cpu(self.worker.pid),
               "sandbox": process_tree_cpu(self.sandbox.pid),
               "redis": process_tree_cpu(self.redis_server.proc.pid),
               "bench": time.process_time()}
        if "beat" in self.procs.procs:
            out["beat"] = process_tree_cpu(self.procs.procs["beat"].pid)
        return out

    def idle(self, timeout: float = 120) -> None:
        wait_idle(self.r, timeout)

    def timed_drain(self, messages: list[str], done) -> tuple[float, dict[str, float]]:
        """Events/s: pre-load `messages` with ingest's consumer cancelled, then time the
        drain until `done()`; also CPU seconds per component over the drain."""
        self.producer.control.cancel_consumer("celery", reply=True,
                                              destination=["worker@" + os.uname().nodename])
        time.sleep(0.3)
        pipe = self.r.pipeline(transaction=False)
        for k in range(0, len(messages), 1000):
            pipe.lpush("celery", *messages[k:k + 1000])
        pipe.execute()
        cpu0, t0 = self.cpu(), time.time()
        self.producer.control.add_consumer("celery", reply=True,
                                           destination=["worker@" + os.uname().nodename])
        while not done() and time.time() - t0 < 300:
            time.sleep(0.01)
        elapsed = time.time() - t0
        cpu1 = self.cpu()
        return elapsed, {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}

    def received(self) -> int:
        return int(self.r.hget("bs:stats", "received") or 0)


def _fmt_cpu(cpu: dict[str, float], elapsed: float) -> str:
    parts = [f"{k} {v:.1f}" for k, v in sorted(cpu.items())]
    busy = sum(cpu.values()) / (elapsed * (os.cpu_count() or 1))
    return f"CPU s: {', '.join(parts)} (machine {busy:.0%} busy over {elapsed:.1f} s)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__)
    p.add_argument("--events", type=int, default=60_000, help="events per drain")
    p.add_argument("--noop", type=int, default=6_000, help="no-op messages for the ceiling")
    p.add_argument("--battles", type=int, default=5_000,
                   help="battles with pending value while flushes use the whole budget")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    st = Stack()
    out: dict = {}
    lines: list[str] = []

    def emit(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    try:
        print(f"logs: {st.logdir}", flush=True)
        now = time.time()
        battles = []
        for i in range(args.battles):
            rooms = {f"r{i}a": f"o{i}a", f"r{i}b": f"o{i}b"}
            bid = st.ctl.create_battle(rooms, 3_600_000, start=now,
                                       battle_id=f"ing-{i}")["BattleId"]
            battles.append((bid, rooms))
        starts = [message("scorer.webhooks", {"items": [
            {"body": start_body(b, now, 3_600_000, rooms), "event_id": None}
            for b, rooms in battles[k:k + 500]]}) for k in range(0, len(battles), 500)]
        st.r.lpush("celery", *starts)
        st.idle()

        def gifts(n: int, tag: str) -> list[str]:
            out_ = []
            for j in range(n):
                _, rooms = battles[j % len(battles)]
                room = list(rooms)[j % 2]
                out_.append(message("scorer.webhook", {
                    "body": gift_body(room, rooms[room], 1, now + 1),
                    "event_id": f"{tag}-{j}"}))
            return out_

        noop_t, noop_cpu = st.timed_drain([message("bench.noop", {})] * args.noop,
                                          lambda: not st.r.llen("celery")
                                          and not st.r.hlen("unacked"))
        noop = args.noop / noop_t
        base = st.received()
        alone_t, alone_cpu = st.timed_drain(
            gifts(args.events, "alone"), lambda: st.received() >= base + args.events)
        alone = args.events / alone_t
        # Now every battle has pending value and no flush has run: start the beat, let the
        # flushes reach the budget, then drain the same load again.
        st.procs.beat()
        t_beat = time.time()
        while time.time() - t_beat < 30:
            calls = [c for c in st.ctl.http.get("/sandbox/calls").json()["calls"]
                     if c["api"] == "set_battle_score" and c["t"] > time.time() - 1]
            if len(calls) >= 150:
                break
            time.sleep(0.5)
        base = st.received()
        t_start = time.time()
        busy_t, busy_cpu = st.timed_drain(
            gifts(args.events, "busy"), lambda: st.received() >= base + args.events)
        busy = args.events / busy_t
        calls = st.ctl.http.get("/sandbox/calls").json()["calls"]
        window = [c for c in calls if c["t"] >= t_start]
        span = max(1e-9, max((c["t"] for c in window), default=t_start) - t_start)
        flush_rate = sum(c["api"] == "set_battle_score" for c in window) / span
        reads = sum(c["api"] == "get_gift_count" for c in window)
        out = {"celery_noop_per_s": noop, "drain_alone_per_s": alone,
               "drain_under_control_per_s": busy, "under_control_ratio": busy / alone,
               "flush_calls_per_s_during": flush_rate, "gift_count_reads_during": reads,
               "cpu": {"noop": noop_cpu, "alone": alone_cpu, "under_control": busy_cpu}}
        emit(f"\ningest on {os.cpu_count()} cores, worker at its default concurrency "
             f"(events per second, {args.events:,} one-gift `scorer.webhook` messages)")
        emit(f"  Celery no-op ceiling (1 message = 1 task):        {noop:9,.0f}")
        emit(f"    {_fmt_cpu(noop_cpu, noop_t)}")
        emit(f"  scorer.webhook drained, control idle:             {alone:9,.0f}"
             f"  ({alone / noop:.1f}x the no-op ceiling)")
        emit(f"    {_fmt_cpu(alone_cpu, alone_t)}")
        emit(f"  scorer.webhook drained, flushes at full budget:   {busy:9,.0f}"
             f"  ({busy / alone:.0%} of alone; set_battle_score {flush_rate:.0f}/s,"
             f" get_gift_count {reads} reads)")
        emit(f"    {_fmt_cpu(busy_cpu, busy_t)}")
    finally:
        st.close()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
