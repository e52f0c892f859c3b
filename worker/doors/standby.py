"""A tick kept alive when beat's is late: beat may die or freeze, and the workers go on.

Beat publishes `scorer.tick` every TICK_SECONDS. The tick (under bs:tick:lock: one process at a
time) dispatches the regular flushes, reconciles and audits, advances the ingest watermark,
gives back a dead consumer's messages and finalizes ended battles; without beat none of that
runs (the end game does not need it). So every worker process that consumes the control queue
runs a standby thread: every TIMERS.tick.standby_poll s it reads when a tick last ran
(bs:tick:at, on Redis's clock); once none has run for TIMERS.tick.standby_after s, it runs one
itself, exactly as beat's message would, and goes on doing so while beat's stay away.

- One at a time, however many stand by: the tick lock admits one, and a tick stamps
  bs:tick:at first, so the others find it fresh.
- Beat back: its ticks stamp bs:tick:at again and the standbys fall quiet. A tick run twice
  (one of beat's and one of a standby's, one after the other) is harmless: the tick only
  dispatches, and every flush, reconcile and audit takes its battle's lock and acts on what is
  due then, as with two ticks of beat.
- Beat's alerts still fire (BeatStale: its publishes stop), so people learn it is gone; the
  standby buys the scores time, not a reason to leave beat dead.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import redis

from worker.engine.state import keys
from worker.engine.timers import TIMERS

log = logging.getLogger("scorer.standby")

_started_pid = 0
_mu = threading.Lock()


def start(app) -> None:
    """Start this process's standby thread once (again after a fork); `app` sends the control
    tasks its ticks dispatch."""
    global _started_pid
    with _mu:
        if _started_pid == os.getpid():
            return
        _started_pid = os.getpid()
    threading.Thread(target=_run, args=(app,), daemon=True, name="tick-standby").start()


def tick_stamp(rt) -> float | None:
    """When a tick last ran (bs:tick:at, Redis's clock), None if none ever did."""
    last = rt.redis.get(keys.TICK_AT)
    return None if last is None else float(last)


class Standby:
    """The standby's state (see the module docstring): `step()` once per poll."""

    def __init__(self, rt, tick, every: float) -> None:
        self.rt = rt
        self.tick = tick
        self.every = every  # beat's tick period
        self.mine: float | None = None  # bs:tick:at as our last tick left it (None: quiet)

    def step(self) -> bool:
        """Tick if due; True if this call ran a tick."""
        last = tick_stamp(self.rt)
        age = None if last is None else self.rt.clock() - last
        if self.mine is not None and last != self.mine:
            self.mine = None  # someone else ticked (beat back, or another standby): quiet
            log.warning("ticks run elsewhere again: this worker's tick standby falls quiet")
            return False
        wait = TIMERS.tick.standby_after if self.mine is None else self.every
        if age is not None and age < wait:
            return False
        if self.mine is None:
            log.warning("no tick for %.1f s (beat dead or frozen?): this worker ticks until "
                        "ticks come from elsewhere again", TIMERS.tick.standby_after if
                        age is None else age)
        self.tick()
        self.mine = tick_stamp(self.rt)
        return True


def _run(app) -> None:
    from worker.doors.celeryconfig import TICK_SECONDS
    from worker.engine.runtime import get_runtime
    from worker.engine.tick import dispatch

    def send(kind: str, battle_ids: list[str]) -> None:  # as tasks/control.py's _send
        app.send_task(f"scorer.{kind}", (battle_ids,), expires=TIMERS.control.task_expires)

    def tick() -> None:  # as beat's `scorer.tick` runs it (tasks/control.py)
        dispatch.run(get_runtime(), send)

    standby = Standby(get_runtime(), tick, TICK_SECONDS)
    while True:
        time.sleep(TIMERS.tick.standby_poll)
        try:
            standby.rt = get_runtime()
            standby.step()
        except (redis.RedisError, OSError) as err:
            log.debug("tick standby: %s", type(err).__name__)
        except Exception:  # the standby never dies of one bad tick
            log.exception("tick standby: the tick failed")
