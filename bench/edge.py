"""`python -m bench.edge`: the last second counts: gifts at end-1.0 s and end-0.5 s, per battle.

N battles of 2 rooms get gifts at `--rate` per second each until 1 s before their end (by
Tencent's clock, the sandbox's), plus two marked gifts to the first room: 1,000 coins whose
webhook is sent at end-1.0 s and 10,000 coins at end-0.5 s. After the end, each battle's final
score says which of them counted (every other gift must have: the battle is "right" when its
score holds every gift sent 1 s or more before the end, and nothing more than was sent).
The sandbox's clock runs `--offset` s ahead of ours (negative: behind): the end is Tencent's.
The naive baseline (one OpType 1 call per gift, from the task) runs in the same invocation.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

from bench.run import Bench
from scorer_local.bodies import gift_body, start_body

MARK_1S, MARK_HALF = 1000, 10_000  # coins of the marked gifts (end-1.0 s, end-0.5 s)
VALUES = (1, 5, 10, 99)  # ordinary gifts: their sums never reach a marked value's digits
SETTLE = 6.0


@dataclass
class EdgeRun:
    """Per-battle outcome of one mode."""

    mode: str
    battles: int
    offset: float
    gifts: int = 0
    right: int = 0  # every gift sent >= 1 s before the end, nothing more than sent
    counted_1s: int = 0  # the end-1.0 s gift counted
    counted_half: int = 0  # the end-0.5 s gift counted
    over: int = 0
    missing: int = 0  # coins sent >= 1 s before the end and not in the score
    errors_100006: int = 0
    wrong: list[str] = field(default_factory=list)


def run_edge(bench: Bench, mode: str, n: int, duration: float, rate: float, offset: float,
             ends_per_second: float = 40.0, seed: int = 7) -> EdgeRun:
    """One mode: battles, their gifts, and the verdict per battle (see the module docstring)."""
    bench.reset()
    bench.ctl.set_clock_offset(offset)
    rng = random.Random(seed)

    def tnow() -> float:  # Tencent's clock, as the sandbox keeps it
        return time.time() + offset

    t0 = math.ceil(tnow() + 3 + n * 0.004)  # Tencent's StartTime is in whole seconds
    battles = []  # (id, rooms, end on Tencent's clock)
    spread = n / ends_per_second if ends_per_second > 0 else 0.0
    for i in range(n):
        rooms = {f"{mode}e{i}a": f"{mode}eo{i}a", f"{mode}e{i}b": f"{mode}eo{i}b"}
        ms = int((duration + spread * i / n) * 1000)
        bid = bench.ctl.create_battle(rooms, ms, start=t0, battle_id=f"{mode}-edge-{n}-{i}")[
            "BattleId"]
        battles.append((bid, rooms, t0 + ms / 1000))
    if mode == "scorer":
        items = [{"body": start_body(b, t0, int((e - t0) * 1000), rooms), "event_id": None}
                 for b, rooms, e in battles]
        for k in range(0, len(items), 500):
            bench.producer.send_task("scorer.webhooks", kwargs={"items": items[k:k + 500]})
    # (Tencent time, battle index, room, coins): the ordinary stream, then the two marks
    plan = []
    for i, (_bid, rooms, end) in enumerate(battles):
        t = float(t0)
        while True:
            t += rng.expovariate(rate)
            if t >= end - 1.0:
                break
            plan.append((t, i, rng.choice(list(rooms)), rng.choice(VALUES)))
        first = next(iter(rooms))
        plan.append((end - 1.02, i, first, MARK_1S))  # sent by end-1.0 s, loop jitter included
        plan.append((end - 0.5, i, first, MARK_HALF))
    plan.sort()
    sent_at: dict[int, list[tuple[float, int]]] = defaultdict(list)  # battle → (Tencent t, coins)
    out = EdgeRun(mode, n, offset)
    seq = 0
    with bench.producer.producer_or_acquire() as prod:
        while plan:
            now = tnow()
            batch = []
            while plan and plan[0][0] <= now:
                batch.append(plan.pop(0))
            if batch:
                bench.ctl.count_gifts([{"RoomId": room, "To_Account": [battles[i][1][room]],
                                        "From_Account": "v", "Coins": c, "Count": 1}
                                       for _, i, room, c in batch])
            for _, i, room, coins in batch:
                bid, rooms, _ = battles[i]
                seq += 1
                sent_at[i].append((tnow(), coins))
                if mode == "naive":
                    bench.producer.send_task("bench.naive_gift", args=(bid, room, coins),
                                             producer=prod)
                else:  # one webhook per message, as the app's pipeline forwards them
                    bench.producer.send_task(
                        "scorer.webhook", kwargs={"body": gift_body(room, rooms[room], coins,
                                                                    tnow()),
                                                  "event_id": f"e{seq}"}, producer=prod)
            time.sleep(0.005)
    last_end = max(e for _, _, e in battles)
    time.sleep(max(0.0, last_end - tnow() + SETTLE))
    state = bench.ctl.state()
    calls = bench.ctl.http.get("/sandbox/calls").json()["calls"]
    out.errors_100006 = sum(1 for c in calls if c["error_code"] == 100006)
    out.gifts = seq
    for i, (bid, _rooms, end) in enumerate(battles):
        score = sum(int(v) for v in state["battles"][bid]["scores"].values())
        base = sum(c for _, c in sent_at[i] if c not in (MARK_1S, MARK_HALF))
        rest = score - base  # what of the two marks counted, if every ordinary gift did
        in_time = any(c == MARK_1S and t <= end - 1.0 for t, c in sent_at[i])
        out.counted_1s += rest in (MARK_1S, MARK_1S + MARK_HALF)
        out.counted_half += rest in (MARK_HALF, MARK_1S + MARK_HALF)
        out.over += max(0, score - base - MARK_1S - MARK_HALF)
        due = base + (MARK_1S if in_time else 0)
        ok = rest in ((MARK_1S, MARK_1S + MARK_HALF) if in_time else
                      (0, MARK_1S, MARK_HALF, MARK_1S + MARK_HALF))
        if not ok:
            out.missing += max(0, due - score)
            end_ours = end - offset
            tl = [f"{c['t'] - end_ours:+.2f}{'!' + str(c['error_code']) if c['error_code'] else ''}"
                  for c in calls if c["api"] == "set_battle_score"
                  and (c["body"] or {}).get("BattleId") == bid][-5:]
            marks = [f"{t - end:+.2f}" for t, c in sent_at[i] if c in (MARK_1S, MARK_HALF)]
            out.wrong.append(f"{bid}: score {score} = ordinary {base} + {rest}; marks sent at "
                             f"{marks}, calls at {tl} (s from the end)")
        out.right += ok
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.edge", description=__doc__)
    p.add_argument("--sizes", default="4:10,200:1",
                   help="battles:gifts per second per battle, comma-separated")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--offsets", default="0,0.5,-0.5", help="sandbox clock offsets, seconds")
    p.add_argument("--modes", default="scorer,naive")
    p.add_argument("--ends-per-second", type=float, default=40.0)
    args = p.parse_args(argv)
    bench = Bench(workers=1, concurrency=None, prefix="bs-edge-")
    failed = False
    try:
        print(f"logs: {bench.logdir}", flush=True)
        for size in args.sizes.split(","):
            n, rate = int(size.split(":")[0]), float(size.split(":")[1])
            for offset in [float(x) for x in args.offsets.split(",")]:
                runs = {m: run_edge(bench, m, n, args.duration, rate, offset,
                                    args.ends_per_second) for m in args.modes.split(",")}
                print(f"\n{n} battles of {args.duration:.0f} s, {rate:g} gifts/s each, "
                      f"Tencent's clock {offset:+.1f} s from ours, ends {args.ends_per_second:g}/s")
                print(f"  {'figure':<44} " + " ".join(f"{m:>14}" for m in runs))
                rows = [("battles right (every gift >= 1 s before end)",
                         lambda r: f"{r.right}/{r.battles}"),
                        ("gift at end-1.0 s counted", lambda r: f"{r.counted_1s}/{r.battles}"),
                        ("gift at end-0.5 s counted",
                         lambda r: f"{r.counted_half}/{r.battles}"),
                        ("coins missing (sent >= 1 s before end)", lambda r: r.missing),
                        ("over-count (coins)", lambda r: r.over),
                        ("100006 answers", lambda r: r.errors_100006),
                        ("gifts sent", lambda r: r.gifts)]
                for name, fn in rows:
                    print(f"  {name:<44} " + " ".join(f"{fn(r)!s:>14}" for r in runs.values()))
                s = runs.get("scorer")
                if s is not None:
                    failed |= s.right != s.battles
                    for w in s.wrong[:5]:
                        print(f"  (scorer wrong: {w})")
                sys.stdout.flush()
    finally:
        bench.ctl.set_clock_offset(0.0)
        bench.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
