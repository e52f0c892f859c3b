"""Beat frozen, then killed: the workers keep a tick alive (worker/doors/standby.py).

Without beat, nothing dispatched a regular flush, advanced the ingest watermark or finalized a
battle: a live battle's score stood still until its end game. Now a control worker ticks
once no tick has run for TIMERS.tick.standby_after s, and falls quiet when beat's are back.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import redis

from scorer_local.sandbox_control import SandboxControl
from tests.helpers import gift_body, start_body, wait_for
from worker.engine.state import keys

ROOMS = {"standby_a": "own_a", "standby_b": "own_b"}


def test_with_beat_frozen_then_killed_scores_still_move(stack, sandbox, settings):
    producer, logdir = stack
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    ctl = SandboxControl(sandbox.url)
    beat = stack_beat = None
    try:
        start = time.time()
        bid = ctl.create_battle(ROOMS, 120_000, start=start)["BattleId"]
        producer.send_task("scorer.webhook", kwargs={
            "body": start_body(bid, start, 120_000, ROOMS), "event_id": "start"})
        truth = dict.fromkeys(ROOMS, 0)
        n = 0

        def gifts(coins: int) -> None:
            nonlocal n
            for room, owner in ROOMS.items():
                n += 1
                ctl.count_gifts([{"RoomId": room, "To_Account": [owner], "From_Account": "v",
                                  "Coins": coins, "Count": 1}])
                producer.send_task("scorer.webhook", kwargs={
                    "body": gift_body(room, owner, coins, t=time.time()), "event_id": f"g{n}"})
                truth[room] += coins

        gifts(5)
        wait_for(lambda: ctl.scores(bid) == truth, timeout=15, what="the first flush")
        stack_beat = _beat_pid(logdir)
        for fault in (signal.SIGSTOP, signal.SIGKILL):  # frozen, then dead
            os.kill(stack_beat, fault)
            time.sleep(0.5)
            gifts(7)
            wait_for(lambda: ctl.scores(bid) == truth, timeout=12,
                     what=f"a flush with beat {fault.name}ed",
                     detail=lambda: (ctl.scores(bid), truth, r.get(keys.TICK_AT)))
            secs, usecs = r.time()
            assert secs + usecs / 1e6 - float(r.get(keys.TICK_AT)) < 3.0  # ticks go on
            if fault is signal.SIGSTOP:
                os.kill(stack_beat, signal.SIGCONT)
                # beat's ticks back: the standby falls quiet (logged), ticks continue
                wait_for(lambda: "falls quiet" in _log(logdir), timeout=15,
                         what="the standby to fall quiet")
        beat = stack_beat
    finally:
        r.close()
        if beat is None and stack_beat is not None:
            try:
                os.kill(stack_beat, signal.SIGCONT)
            except ProcessLookupError:
                pass


def _beat_pid(logdir) -> int:
    """The stack's beat process: its command line names its schedule file in `logdir`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"beat" in cmd and any(str(logdir).encode() in part for part in cmd):
            return int(entry.name)
    raise AssertionError("no beat process")


def _log(logdir) -> str:
    return "".join(p.read_text(errors="replace") for p in logdir.glob("*.log"))
