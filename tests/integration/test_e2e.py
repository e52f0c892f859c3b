"""End to end: real worker and beat processes, real Redis, the sandbox, events via send_task.

One run drives three battles through duplicates, a late start webhook, a lost webhook (healed
by reconcile), an approved gift Tencent never counted (removed by reconcile), a lost response
and 502s, and checks every room's final score on the sandbox against the truth.
"""

from __future__ import annotations

import time

from scorer_local.sandbox_control import SandboxControl
from tests.helpers import end_body, gift_body, start_body, wait_for
from worker.engine.state import counters

DURATION = 30  # seconds


def test_battles_end_exact_under_faults(stack, sandbox, rt):
    producer, logs = stack
    ctl = SandboxControl(sandbox.url)

    def send(body, eid=None):
        producer.send_task("scorer.webhook", kwargs={"body": body, "event_id": eid})

    rooms = {i: {f"b{i}_r1": f"b{i}_o1", f"b{i}_r2": f"b{i}_o2"} for i in range(3)}
    start = time.time()
    ids = {}
    for i in range(3):
        ids[i] = ctl.create_battle(rooms[i], DURATION * 1000, start=start)["BattleId"]
        if i != 2:  # battle 2's start webhook arrives late, after its first gifts
            send(start_body(ids[i], start, DURATION * 1000, rooms[i]))
    truth = {i: {r: 0 for r in rooms[i]} for i in range(3)}
    n = 0

    def gift(i, room, coins, *, counted=True, delivered=True, dup=False):
        nonlocal n
        n += 1
        owner = rooms[i][room]
        if counted:
            ctl.count_gifts([{"RoomId": room, "To_Account": [owner], "From_Account": "v",
                              "Coins": coins, "Count": 1}])
            truth[i][room] += coins
        if delivered:
            body = gift_body(room, owner, coins)
            send(body, f"gift-{n}")
            if dup:
                send(body, f"gift-{n}")

    def at(second):
        time.sleep(max(0.0, start + second - time.time()))

    at(7)  # the first gifts leave a quiet start, where reconcile takes its baseline
    ctl.inject("lost_response", api="set_battle_score")
    ctl.inject("http502", api="set_battle_score", count=2)
    for k in range(6):
        for i in range(3):
            r1, r2 = list(rooms[i])
            gift(i, r1, 10 + k, dup=(k % 2 == 0))
            gift(i, r2, 3)
    at(8)
    gift(0, "b0_r1", 100, delivered=False)  # Tencent counted it; its webhook was lost
    gift(1, "b1_r2", 50, counted=False)  # approved, but the send failed: never counted
    send(start_body(ids[2], start, DURATION * 1000, rooms[2]))  # late start webhook
    at(22)
    for i in range(3):
        gift(i, next(iter(rooms[i])), 7)
    at(DURATION - 2 * 0.2 - 1)  # the last gifts, just inside the 2 x flush interval promise
    for i in range(3):
        gift(i, list(rooms[i])[1], 1)
    at(DURATION + 3)
    for i in range(3):
        final = ctl.scores(ids[i])
        send(end_body(ids[i], start, start + DURATION, final, rooms[i]))
    for i in range(3):
        recon = rt.redis.hgetall(f"bs:{{b:{ids[i]}}}:recon")
        assert ctl.scores(ids[i]) == truth[i], (i, ctl.scores(ids[i]), truth[i], recon,
                                                 counters.read(rt.redis))
    s = counters.read(rt.redis)
    assert s["duplicate"] >= 9 and s["reconcile_corrections"] >= 2
    assert s["dead_lettered"] == 0
    wait_for(lambda: not rt.redis.zcard("bs:active"), timeout=30, what="battles finalized")
    assert counters.read(rt.redis)["end_mismatch"] == 0
    secret = rt.settings.secret_key.get_secret_value()
    for name in ("worker.log", "beat.log"):
        assert secret not in (logs / name).read_text()
