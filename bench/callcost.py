"""CPU one Tencent call costs the control plane, part by part, against a bare httpx baseline.

    python -m bench.callcost [--calls 2000] [--runs 3]

Starts a redis-server and the local Tencent sandbox (each its own process, so their CPU is not
counted) and, in this process, times with `time.process_time()` (every thread of it: lock
heartbeats, the HTTP pool) N calls of each kind, one at a time:
- `httpx`: the same set_battle_score request through a bare httpx.Client (the floor any
  client pays: the HTTP stack);
- `client`: TencentClient.set_battle_score (UserSig, the shared limiter, the send log at the
  socket, the call metrics, the Tencent-clock sample);
- `flush`: one gift ingested, then flush_battle of its battle (the due check, the call slot,
  the battle lock, the claim, the send, the commit, the schedule);
- `read`: TencentClient.get_gift_count.
Prints ms of CPU per call for each (the median of `--runs`), and each one's ratio to `httpx`.
The acceptance referee's `ms/call` (python -m bench.acceptance) is the whole control plane's
CPU (ticks, reconcile passes, Celery's consumers, start-up) over all its calls; this isolates
the part each call pays itself, with far less noise, so a change to that path can be measured.
"""

from __future__ import annotations

import argparse
import itertools
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import httpx
from redis.connection import AbstractConnection

from scorer_local.bodies import gift_body, start_body
from scorer_local.stack import RedisServer, SandboxProcess
from worker.engine.flush.flusher import flush_battle
from worker.engine.ingest.gifts import handle
from worker.engine.runtime import build_runtime
from worker.engine.settings import Settings
from worker.engine.state import keys
from worker.engine.tencent.models import OpType

SDKAPPID = 1400000000
ROOMS = {"room_a": "host_a", "room_b": "host_b"}


#: Round trips to Redis this process made (every command or pipeline is one send).
_sends = [0]
_send = AbstractConnection.send_packed_command


def _counted(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
    _sends[0] += 1
    _send(self, *args, **kwargs)


def per_call(n: int, one: Callable[[int], None]) -> tuple[float, float]:
    """(CPU ms of all threads of this process, Redis round trips) per call of `one(i)`, over
    n calls. Round trips are what CPU time is too noisy to show on a shared host."""
    r0, t0 = _sends[0], time.process_time()
    for i in range(n):
        one(i)
    return 1000 * (time.process_time() - t0) / n, (_sends[0] - r0) / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.callcost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=2000, help="calls of each kind a run")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    key = secrets.token_hex(16)
    logdir = tempfile.mkdtemp(prefix="bs-callcost-")
    server = RedisServer().start()
    # No rate limit on either side: this measures CPU, not waits or refusals.
    sandbox = SandboxProcess(SDKAPPID, key, logdir, rate=1_000_000)
    for k in [k for k in os.environ if k.startswith("SCORER_")]:
        del os.environ[k]
    settings = Settings(_env_file=None, sdkappid=SDKAPPID, secret_key=key, api_url=sandbox.url,
                        redis_url=server.url, api_rate=100_000)
    rt = build_runtime(settings)
    try:
        info = sandbox.ctl.create_battle(ROOMS, duration_ms=3_600_000, start=time.time() - 1)
        bid = info["BattleId"]
        handle(rt, [(start_body(bid, info["StartTime"], 3_600_000, ROOMS), None)])
        bare = httpx.Client(timeout=5.0)
        url, body = rt.client.url("set_battle_score"), {
            "BattleId": bid, "OpType": 1, "ScoreList": [{"RoomId": "room_a", "Score": 1}]}

        def raw(i: int) -> None:
            bare.post(url, params=rt.client.query(), json=body).raise_for_status()

        def client(i: int) -> None:
            rt.client.set_battle_score(bid, OpType.ACCUMULATE, {"room_a": 1})

        def flush(i: int) -> None:
            handle(rt, [(gift_body("room_b", ROOMS["room_b"], 1), f"cc-{next(ids)}")])
            rt.redis.delete(keys.FLUSH_DUE)  # (the tick's list: not what is measured)
            flush_battle(rt, bid)

        def read(i: int) -> None:
            rt.client.get_gift_count("room_a", ROOMS["room_a"])

        kinds = {"httpx": raw, "client": client, "flush": flush, "read": read}
        got: dict[str, list[float]] = {k: [] for k in kinds}
        trips: dict[str, float] = {}
        ids = itertools.count()
        AbstractConnection.send_packed_command = _counted  # type: ignore[method-assign]
        for _ in range(args.runs):
            for name, one in kinds.items():
                ms, trips[name] = per_call(args.calls, one)
                got[name].append(ms)
        base = statistics.median(got["httpx"])
        print(f"CPU per call, ms (median of {args.runs} runs of {args.calls} calls; "
              f"this process only), and Redis round trips per call")
        print(f"{'kind':8} {'ms/call':>8} {'x httpx':>8} {'redis/call':>10}   runs")
        for name, vals in got.items():
            med = statistics.median(vals)
            print(f"{name:8} {med:8.3f} {med / base:8.2f} {trips[name]:10.2f}   "
                  + " ".join(f"{v:.3f}" for v in vals))
        bare.close()
    finally:
        rt.client.close()
        sandbox.stop()
        server.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
