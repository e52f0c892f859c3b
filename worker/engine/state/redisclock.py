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
  wall clock and its monotonic clock part by more than STEP since the last measure).
- A failed measure keeps the last offset (0 before the first) and is tried again a second later:
  with Redis down there is no work to stamp anyway.
- Each measure is recorded per host in bs:clock:hosts (`offsets`), which the metrics, the
  `check-config` command and the log report: a host more than WARN off is a host to fix, and
  it still scores right.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
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


def host_name() -> str:
    """This process's host, as it names itself in bs:clock:hosts."""
    return socket.gethostname()


class RedisClock:
    """A callable like time.time that reads Redis's clock (see the module docstring)."""

    def __init__(self, client: redis.Redis, local: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.local = local
        self.mono = mono
        self.offset = 0.0
        self.rtt: float | None = None  # None: never measured
        self._wall_at = 0.0  # local wall and monotonic times of the last attempt
        self._mono_at = -1e9
        self._next = -1e9  # monotonic time of the next measure
        self._warned = -1e9  # monotonic time of the last warning
        self._mu = threading.Lock()

    def __call__(self) -> float:
        wall, mono = self.local(), self.mono()
        if mono >= self._next or abs((wall - self._wall_at) - (mono - self._mono_at)) > STEP:
            self._refresh(wall, mono)
            wall = self.local()
        return wall + self.offset

    def _refresh(self, wall: float, mono: float) -> None:
        if not self._mu.acquire(blocking=False):
            return  # another thread measures: the last offset serves meanwhile
        try:
            self._wall_at, self._mono_at = wall, mono
            try:
                offset, rtt = measure(self.client, self.local)
            except (redis.RedisError, OSError):
                self._next = mono + 1.0
                return
            self.offset, self.rtt, self._next = offset, rtt, mono + REFRESH
            if abs(offset) > WARN and mono - self._warned >= WARN_EVERY:
                self._warned = mono
                log.warning("this host's clock is %+.3f s off Redis's: fix its NTP (times are "
                            "taken on Redis's clock, so scoring is not affected)", -offset)
            self._record(offset)
        finally:
            self._mu.release()

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
