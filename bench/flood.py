"""`python -m bench.flood`: far more battles than Tencent's budget can flush every second.

N battles (default 5,000) with 2 rooms each, ending staggered over 50 s, a few gifts each:
flushing every battle every second would need N calls/s against a budget of 200. Shows what
the worker does under overload: memory stays flat, the API budget is used to the limit and
never exceeded, and every battle's last value goes in its end game
(worker/engine/flush/endgame.py), so each one ends exact. The naive baseline (bench/naive.py:
one call per gift) runs the same load in the same invocation (`--modes`).
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from collections import defaultdict

from bench.run import Bench
from scorer_local.bodies import gift_body, start_body
from worker.engine.state import keys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__)
    p.add_argument("--battles", type=int, default=5000)
    p.add_argument("--gifts", type=int, default=3, help="gifts per battle")
    p.add_argument("--min-duration", type=float, default=30.0)
    p.add_argument("--spread", type=float, default=50.0, help="seconds over which battles end")
    p.add_argument("--modes", default="scorer,naive", help="which integrations to run")
    args = p.parse_args(argv)
    bench = Bench(workers=1, concurrency=None)  # one worker, as the README starts it
    try:
        exact = {mode: flood(bench, mode, args) for mode in args.modes.split(",")}
    finally:
        bench.close()
    return 0 if exact.get("scorer", args.battles) == args.battles else 1


def flood(bench: Bench, mode: str, args: argparse.Namespace) -> int:
    """One run of the flood through `mode`; prints its figures, returns battles exact."""
    bench.reset()
    rng = random.Random(5)
    n = args.battles
    start = time.time() + 5 + n / 1000  # room to create them all first
    battles = []
    for i in range(n):
        dur = args.min_duration + args.spread * i / n
        rooms = {f"{mode}{i}a": f"fo{i}a", f"{mode}{i}b": f"fo{i}b"}
        bid = f"flood-{mode}-{i}"
        bench.ctl.create_battle(rooms, int(dur * 1000), start=start, battle_id=bid)
        battles.append((bid, rooms, start + dur))
    if mode == "scorer":
        items = [{"body": start_body(b, start, int((end - start) * 1000), rooms),
                  "event_id": None} for b, rooms, end in battles]
        for k in range(0, len(items), 500):
            bench.producer.send_task("scorer.webhooks", kwargs={"items": items[k:k + 500]})
    plan = []  # (when, battle, room, owner, coins): last gift >= 2.5 s before the end
    for bid, rooms, end in battles:
        for _ in range(args.gifts):
            room = rng.choice(list(rooms))
            plan.append((rng.uniform(start + 1, end - 2.5), bid, room, rooms[room],
                         rng.choice([1, 5, 10])))
    plan.sort()
    truth: dict[tuple[str, str], int] = defaultdict(int)
    samples = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            due = bench.r.zrange(keys.FLUSH_DUE, 0, 0, withscores=True)
            samples.append((time.time(), bench.worker_rss(),
                            int(bench.r.info("memory")["used_memory"]),
                            max(0.0, time.time() - due[0][1]) if due else 0.0,
                            bench.r.llen("celery")))
            stop.wait(1.0)

    threading.Thread(target=sample, daemon=True).start()
    time.sleep(max(0.0, start - time.time()))
    seq = 0
    while plan:
        now = time.time()
        batch = []
        while plan and plan[0][0] <= now:
            batch.append(plan.pop(0))
        if batch:
            bench.ctl.count_gifts([{"RoomId": room, "To_Account": [owner],
                                    "From_Account": "v", "Coins": c, "Count": 1}
                                   for _, _, room, owner, c in batch])
            items = []
            for _, bid, room, owner, c in batch:
                seq += 1
                truth[(bid, room)] += c
                if mode == "naive":
                    bench.producer.send_task("bench.naive_gift", args=(bid, room, c))
                    continue
                items.append({"body": gift_body(room, owner, c, now), "event_id": f"f{seq}"})
            for k in range(0, len(items), 100):
                bench.producer.send_task("scorer.webhooks", kwargs={"items": items[k:k + 100]})
        time.sleep(0.05)
    last_end = max(end for _, _, end in battles)
    time.sleep(max(0.0, last_end + 5 - time.time()))
    stop.set()
    bench.r.delete("celery")  # whatever the naive way has not drained by now is too late
    state = bench.ctl.state()
    exact = sum(all(int(state["battles"][b]["scores"][r]) == truth[(b, r)] for r in rooms)
                for b, rooms, _ in battles)
    diffs = [int(state["battles"][b]["scores"][r]) - truth[(b, r)]
             for b, rooms, _ in battles for r in rooms]
    under, over = sum(max(0, -d) for d in diffs), sum(max(0, d) for d in diffs)
    rss = [s[1] for s in samples]
    mem = [s[2] for s in samples]
    lag = [s[3] for s in samples]
    third = max(1, len(samples) // 3)
    print(f"{mode}: {n} battles x 2 rooms ending over {args.spread:.0f} s, {seq} gifts, "
          f"budget {state['max_calls_per_second'].get('set_battle_score', 0)} "
          "set_battle_score calls in the busiest second")
    print(f"  battles exact                      {exact}/{n}   (under-count {under} coins, "
          f"over-count {over})")
    print(f"  worker RSS first third / last third / peak   "
          f"{max(rss[:third]) / 2**20:.0f} / {max(rss[-third:]) / 2**20:.0f} / "
          f"{max(rss) / 2**20:.0f} MiB")
    print(f"  Redis memory first third / last third / peak "
          f"{max(mem[:third]) / 2**20:.1f} / {max(mem[-third:]) / 2**20:.1f} / "
          f"{max(mem) / 2**20:.1f} MiB")
    print(f"  flush lag (most overdue battle) median / max  "
          f"{sorted(lag)[len(lag) // 2]:.1f} / {max(lag):.1f} s")
    calls = bench.ctl.http.get('/sandbox/calls').json()['calls']
    print(f"  100012 answers                     "
          f"{sum(1 for c in calls if c['error_code'] == 100012)}")
    return exact


if __name__ == "__main__":
    sys.exit(main())
