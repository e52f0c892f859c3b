"""Redis's clock read on this host: the one clock every cross-host time is stamped and judged on.

Hosts' wall clocks disagree (an NTP failure, a VM resumed with a stale clock). A time stamped on
one host and compared on another is off by their difference: a skewed host would decide that a
battle has surely ended while it still runs, see a settle as overdue, or feed Tencent's clock
estimate (bs:clock, shared by every host) samples that contradict everyone else's. So no host
compares its own wall clock with another's. Each process measures its offset to the broker
Redis's TIME and reads "now" as its own clock plus that offset: end-game due stamps, send and
settle stamps, reconcile's read times, kombu's unacked stamps, the ingest watermark (TIME
itself) and the Tencent-clock samples are then all on Redis's clock, within half a round trip.

- A measure: Redis answered T between our s and r, so the offset lies in [T - r, T - s]; of
  SAMPLES exchanges the one with the shortest round trip is kept, its midpoint taken.
- It is measured again every REFRESH seconds, and at once when this host's clock steps (its
  wall clock and its monotonic clock part by more than STEP since the last measure), by a
  thread of the clock's own: reading the clock is arithmetic, never a wait on Redis.
- A measure whose round trip exceeds MAX_RTT is not kept while a quicker one is recent.
- A failed measure keeps the last offset (0 before the first) and is tried again a second later:
  with Redis down there is no work to stamp anyway.
- Each measure is recorded per host in bs:clock:hosts (`offsets`), which the metrics, the
  `check-config` command and the log report: a host more than WARN off is a host to fix, and
  it still scores right.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import cast

import redis

from worker.engine.state import keys
from worker.engine.timers import TIMERS

log = logging.getLogger("scorer.clock")

#: Seconds between measures of the offset.
REFRESH = TIMERS.clock.redis_refresh
#: A host clock that moved this much against the monotonic clock has stepped: measure again.
STEP = TIMERS.clock.redis_step
#: Exchanges per measure (the shortest round trip is kept).
SAMPLES = 3
#: A measure whose round trip took longer is not kept while a quicker one is KEEP_QUICK s old
#: or less.
MAX_RTT = TIMERS.clock.redis_max_rtt
KEEP_QUICK = TIMERS.clock.redis_keep_quick
#: A host this far off Redis's clock is reported (log, gauge, check-config).
WARN = TIMERS.clock.redis_warn
#: A process warns of its host's offset at most this often (seconds).
WARN_EVERY = TIMERS.clock.redis_warn_every
#: A host's recorded offset is forgotten after this long without a new one.
RECORD_TTL = TIMERS.clock.redis_record_ttl


def measure(client: redis.Redis, local: Callable[[], float] = time.time,
            samples: int = SAMPLES) -> tuple[float, float]:
    """(offset, round trip): Redis's TIME minus `local`, from the quickest of `samples`."""
    best: tuple[float, float] | None = None
    for _ in range(samples):
        sent = local()
        secs, usecs = client.time()
        received = local()
        rtt = received - sent
        offset = secs + usecs / 1e6 - (sent + received) / 2
        if best is None or rtt < best[1]:
            best = (offset, rtt)
    assert best is not None
    return best


def redis_now(client: redis.Redis) -> float:
    """Redis's clock as the server reads it (one TIME round trip)."""
    secs, usecs = client.time()
    return secs + usecs / 1e6


def host_name() -> str:
    """This process's host, as it names itself in bs:clock:hosts."""
    return socket.gethostname()


class RedisClock:
    """A callable like time.time that reads Redis's clock (see the module docstring).

    A call is arithmetic only: the measures run in a thread of the clock's own (started by
    the first call in a process, ended once the clock is dropped), so no caller ever waits on
    Redis for the time, however slow or gone Redis is."""

    def __init__(self, client: redis.Redis, local: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.local = local
        self.mono = mono
        self.offset = 0.0
        self.rtt: float | None = None  # None: never measured
        self._accepted = -1e9  # monotonic time of the last measure kept
        self._step_ref = (0.0, 0.0)  # (local wall, monotonic) as the last measure began
        self._warned = -1e9  # monotonic time of the last warning
        self._wake = threading.Event()
        self._pid = 0
        self._mu = threading.Lock()

    def __call__(self) -> float:
        if self._pid != os.getpid():
            self._start()
        wall = self.local()
        ref_wall, ref_mono = self._step_ref
        if abs((wall - ref_wall) - (self.mono() - ref_mono)) > STEP:
            self._wake.set()  # this host's clock stepped: measure again now
        return wall + self.offset

    def _start(self) -> None:
        """The first call in this process: one measure now (a fresh process has no offset
        yet), then the measuring thread."""
        with self._mu:
            if self._pid == os.getpid():
                return
            self.measure_once()
            self._pid = os.getpid()
            ref = weakref.ref(self)
            threading.Thread(target=_measuring, args=(ref, self._wake), daemon=True,
                             name="redis-clock").start()

    def measure_once(self) -> bool:
        """Measure the offset; keep it unless its round trip was slow and a quicker one is
        recent (a process starved of CPU reads a reply late: its midpoint is off by half the
        round trip). True if it was kept."""
        mono = self.mono()
        self._step_ref = (self.local(), mono)
        try:
            offset, rtt = measure(self.client, self.local)
        except (redis.RedisError, OSError):
            return False
        if rtt > MAX_RTT and self.rtt is not None and mono - self._accepted < KEEP_QUICK:
            return False
        self.offset, self.rtt, self._accepted = offset, rtt, mono
        if abs(offset) > WARN and mono - self._warned >= WARN_EVERY:
            self._warned = mono
            log.warning("this host's clock is %+.3f s off Redis's: fix its NTP (times are "
                        "taken on Redis's clock, so scoring is not affected)", -offset)
        self._record(offset)
        return True

    def _record(self, offset: float) -> None:
        """Note this host's offset where the metrics read it."""
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(keys.CLOCK_HOSTS, host_name(), f"{offset:.6f},{time.time() + offset:.3f}")
            pipe.expire(keys.CLOCK_HOSTS, int(RECORD_TTL))
            pipe.execute()
        except (redis.RedisError, OSError):
            pass  # the record is for people; the offset is what matters


def offsets(client: redis.Redis, now: float) -> dict[str, float]:
    """host → its clock minus Redis's, as last measured within RECORD_TTL of `now` (Redis's
    clock)."""
    out: dict[str, float] = {}
    raw = cast("dict[str, str]", client.hgetall(keys.CLOCK_HOSTS))  # decode_responses
    for host, value in raw.items():
        try:
            offset, at = (float(x) for x in value.split(","))
        except ValueError:
            continue
        if now - at <= RECORD_TTL:
            out[host] = -offset
    return out


def _measuring(ref: weakref.ref[RedisClock], wake: threading.Event) -> None:
    """A clock's measuring thread: every REFRESH s, or at once when woken (a clock step); a
    failed measure is tried again a second later. Ends once the clock is gone."""
    while True:
        clock = ref()
        if clock is None:
            return
        kept = clock.measure_once()
        del clock  # hold no reference while waiting: the clock may be dropped meanwhile
        wake.wait(REFRESH if kept else 1.0)
        wake.clear()
