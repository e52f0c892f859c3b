"""`battle-scorer demo`: the whole stack on this machine, a few battles, live scores, a verdict."""

from __future__ import annotations

import argparse
import random
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.table import Table

from scorer_local.bodies import gift_body, start_body
from scorer_local.stack import Processes, RedisServer, redis_server_bin, scorer_env

SDKAPPID = 1400000000


@dataclass
class DemoBattle:
    """One battle the demo plays, and the truth it expects on Tencent."""

    battle_id: str
    rooms: dict[str, str]
    start: float
    end: float
    truth: dict[str, int] = field(default_factory=dict)


def _table(battles: list[DemoBattle], scores: dict[str, dict[str, int]], now: float) -> Table:
    t = Table(title="battle-scorer demo — live scores on the (sandbox) Tencent")
    for col in ("battle", "room", "score on Tencent", "truth so far", "ends in"):
        t.add_column(col, justify="right" if col != "battle" and col != "room" else "left")
    for b in battles:
        for i, room in enumerate(b.rooms):
            left = max(0.0, b.end - now)
            t.add_row(b.battle_id if i == 0 else "", room,
                      str(scores.get(b.battle_id, {}).get(room, 0)), str(b.truth[room]),
                      f"{left:4.1f}s" if i == 0 else "")
    return t


def run(n_battles: int, duration: float, rate: float, live: bool, console: Console) -> int:
    """Play the demo; returns 0 when every battle's final score matches the truth."""
    from celery import Celery

    from scorer_local.sandbox import Sandbox
    from scorer_local.sandbox_control import SandboxControl

    if redis_server_bin() is None:
        console.print("redis-server is not installed: run `make run`, or apt-get install it")
        return 2
    rng = random.Random(7)
    key = secrets.token_hex(16)  # a throwaway key: the demo's sandbox trusts only this run
    logdir = tempfile.mkdtemp(prefix="bs-demo-")
    redis_server = RedisServer().start()
    sandbox = Sandbox(SDKAPPID, key).start()
    procs = Processes(scorer_env(SDKAPPID, key, sandbox.url, redis_server.url,
                                 flush_interval=0.5, reconcile_interval=3), logdir)
    ctl = SandboxControl(sandbox.url)
    producer = Celery(broker=redis_server.url)
    try:
        procs.worker(concurrency=2)
        procs.beat()
        console.print(f"[dim]redis {redis_server.url} · sandbox {sandbox.url} · logs {logdir}")
        while not producer.control.ping(timeout=0.5):
            time.sleep(0.2)

        def send(body, eid=None):
            producer.send_task("scorer.webhook", kwargs={"body": body, "event_id": eid})

        start = time.time() + 1
        battles = []
        for i in range(n_battles):
            rooms = {f"room{i}a": f"host{i}a", f"room{i}b": f"host{i}b"}
            info = ctl.create_battle(rooms, int(duration * 1000), start=start,
                                     battle_id=f"demo-battle-{i + 1}")
            b = DemoBattle(info["BattleId"], rooms, start, start + duration,
                           {r: 0 for r in rooms})
            battles.append(b)
            if i != n_battles - 1:  # the last battle's start webhook comes late, on purpose
                send(start_body(b.battle_id, b.start, int((b.end - b.start) * 1000), b.rooms))
        late: list[tuple[float, dict, str]] = []  # webhooks delivered a second late
        n = 0
        stop_gifts = start + duration - 2.5  # gifts stop in time to be in the final score

        def tick_gifts(now: float) -> None:
            nonlocal n
            for b in battles:
                if rng.random() > rate / 10 or now < start + 0.5 or now > stop_gifts:
                    continue
                room = rng.choice(list(b.rooms))
                coins = rng.choice([1, 1, 5, 10, 52, 99])
                n += 1
                eid = f"demo-{n}"
                ctl.count_gifts([{"RoomId": room, "To_Account": [b.rooms[room]],
                                  "From_Account": "viewer", "Coins": coins, "Count": 1}])
                b.truth[room] += coins
                body = gift_body(room, b.rooms[room], coins, now)
                if rng.random() < 0.15:
                    late.append((now + 1.0, body, eid))
                else:
                    send(body, eid)
                if rng.random() < 0.2:
                    send(body, eid)  # a duplicate delivery: must count once

        def deliver_late(now: float) -> None:
            for item in [x for x in late if x[0] <= now]:
                late.remove(item)
                send(item[1], item[2])
            if now > start + 3 and battles[-1].battle_id not in started_late:
                send(start_body(battles[-1].battle_id, battles[-1].start,
                                      int(duration * 1000), battles[-1].rooms))
                started_late.add(battles[-1].battle_id)

        started_late: set[str] = set()
        finish = start + duration + 4
        scores: dict[str, dict[str, int]] = {}
        with Live(_table(battles, scores, time.time()), console=console,
                  refresh_per_second=4, transient=not live) as view:
            while time.time() < finish:
                now = time.time()
                tick_gifts(now)
                deliver_late(now)
                state = ctl.state()["battles"]
                scores = {b.battle_id: {str(k): int(v) for k, v in
                                        state[b.battle_id]["scores"].items()} for b in battles}
                view.update(_table(battles, scores, now))
                time.sleep(0.1)
        ok = True
        for b in battles:
            got = ctl.scores(b.battle_id)
            match = got == b.truth
            ok &= match
            console.print(f"{b.battle_id}: Tencent {got} vs truth {b.truth}: "
                          f"{'MATCH' if match else 'MISMATCH'}")
        console.print("every battle matches" if ok else "some battles do not match")
        return 0 if ok else 1
    finally:
        procs.stop()
        ctl.close()
        sandbox.stop()
        redis_server.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `battle-scorer demo`."""
    p = argparse.ArgumentParser(prog="battle-scorer demo", description=__doc__)
    p.add_argument("--battles", type=int, default=3)
    p.add_argument("--duration", type=float, default=30.0, help="seconds per battle")
    p.add_argument("--rate", type=float, default=4.0, help="gifts per second per battle")
    p.add_argument("--short", action="store_true", help="a quick run (tests)")
    args = p.parse_args(argv)
    if args.short:
        args.battles, args.duration = 2, 12.0
    console = Console()
    try:
        return run(args.battles, args.duration, args.rate, console.is_terminal, console)
    except KeyboardInterrupt:
        console.print("stopped: every process the demo started has been stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
