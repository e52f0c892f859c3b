"""Healing in rooms that are never quiet: a real worker and beat, the sandbox, 5 gifts/s a room.

Tencent counts each gift at c (its GiftWater.Time is c's second) and its webhook comes at
c + U(-0.5, +1.5) s, as in the acceptance referee. One room loses a webhook, the other gets one
for a gift Tencent never counts. Before reconcile judged by Tencent's second, neither room was
ever read (a read waited for seconds without gifts): the first ended 400 coins under, the second
300 over. Now both are healed to within what the gifts of a few seconds can hide, and never
past the truth.
"""

from __future__ import annotations

import random
import time

from scorer_local.sandbox_control import SandboxControl
from tests.helpers import end_body, gift_body, start_body
from worker.engine.state import counters

DURATION = 24  # seconds
RATE = 5.0  # gifts per second per room
ROOMS = {"busy_lost": "owner_lost", "busy_phantom": "owner_phantom"}
#: What the gifts of the seconds around a read may hide (values 1-5, 5 a second): the room
#: ends no further than this from the truth, and on the near side.
RESOLUTION = 80


def test_a_lost_webhook_and_a_phantom_are_healed_in_rooms_at_5_gifts_a_second(stack, sandbox,
                                                                              rt):
    producer, _ = stack
    ctl = SandboxControl(sandbox.url)
    rng = random.Random(26)
    start = time.time()
    bid = ctl.create_battle(ROOMS, DURATION * 1000, start=start)["BattleId"]

    def send(body, eid=None):
        producer.send_task("scorer.webhook", kwargs={"body": body, "event_id": eid})

    send(start_body(bid, start, DURATION * 1000, ROOMS))
    events: list[tuple[float, str, dict]] = []  # (when, "count" | "send", gift)
    truth = dict.fromkeys(ROOMS, 0)
    for room, owner in ROOMS.items():
        c = start
        while True:
            c += rng.expovariate(RATE)
            if c > start + DURATION - 4:  # (the last ones well in: this test is the healing)
                break
            events.append((c, "count", {"room": room, "owner": owner, "coins": rng.randint(1, 5),
                                        "c": c}))
    for room, kind, coins in (("busy_lost", "lost", 400), ("busy_phantom", "phantom", 300)):
        events.append((start + 6.3, "count", {"room": room, "owner": ROOMS[room], "coins": coins,
                                              "c": start + 6.3, kind: True}))
    schedule: list[tuple[float, str, dict]] = []
    for c, _, g in events:
        if not g.get("phantom"):
            schedule.append((c, "count", g))
            truth[g["room"]] += g["coins"]
        if not g.get("lost"):
            schedule.append((c + rng.uniform(-0.5, 1.5), "send", g))
    schedule.sort(key=lambda e: e[0])
    for n, (at, kind, g) in enumerate(schedule):
        time.sleep(max(0.0, at - time.time()))
        if kind == "count":
            ctl.count_gifts([{"RoomId": g["room"], "To_Account": [g["owner"]],
                              "From_Account": "v", "Coins": g["coins"], "Count": 1}])
        else:
            send(gift_body(g["room"], g["owner"], g["coins"], t=g["c"]), f"busy-{n}")
    time.sleep(max(0.0, start + DURATION + 3 - time.time()))
    final = ctl.scores(bid)
    send(end_body(bid, start, start + DURATION, final, ROOMS))
    stats = counters.read(rt.redis)
    detail = (final, truth, rt.redis.hgetall(f"bs:{{b:{bid}}}:recon"), stats)
    # Healed toward the truth, never past it: the lost gift's room under by less than the
    # resolution (400 on the old judge), the phantom's room over by less (300 on the old).
    assert truth["busy_lost"] - RESOLUTION <= final["busy_lost"] <= truth["busy_lost"], detail
    assert truth["busy_phantom"] <= final["busy_phantom"] <= truth["busy_phantom"] + RESOLUTION, \
        detail
    assert stats["reconcile_reads_judged"] >= 10 and stats["reconcile_corrections"] >= 2, detail
