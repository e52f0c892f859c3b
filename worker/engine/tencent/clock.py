"""Tencent's clock as ours plus an offset, known within bounds learned from Tencent's answers.

"Ours" is the runtime's clock, Redis's clock read on this host (worker/engine/state/
redisclock.py), so every host's samples and bounds mean the same. A battle ends on Tencent's
clock, so the end game is planned on it. Every answer from Tencent
carries an HTTP `Date` header (1-s resolution): an answer stamped D, sent at our s and received
at our r, was made while Tencent's clock read in [D, D + 1), so the offset lies in
[D - r, D + 1 - s]. Intersecting the samples of all processes (in Redis) narrows the bounds to
about one round trip once answers have come at a few different fractions of a second, a few
seconds of ordinary traffic.

- Deadlines use the upper bound (`latest`: Tencent's clock may be this far on already), so a
  final flush leaves early enough even if Tencent runs ahead.
- "Surely ended" uses the lower bound (`earliest`), so a battle is never given up early.
- With no sample yet the offset is taken to lie within +-DEFAULT_SPREAD (NTP-synced hosts are
  within milliseconds; a larger gap shows in the `clock_offset` gauge once answers come).
- Bounds widen with age (DRIFT), and a sample that contradicts them (a clock was stepped, or
  Tencent's servers disagree) widens them to cover both, so a bad sample costs precision, never
  a wrong "ended".
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable
from typing import cast

import redis

from worker.engine.state import keys, scripts
from worker.engine.timers import TIMERS

#: With no sample, the offset is assumed within this many seconds either way.
DEFAULT_SPREAD = TIMERS.clock.default_spread
#: Seconds of widening per second of age: clocks drift and NTP slews (100 ppm is generous).
DRIFT = TIMERS.clock.drift
#: A process re-reads the shared bounds this often.
CACHE_SECONDS = TIMERS.clock.cache_seconds


class TencentClock:
    """The shared offset estimate: `observe_date` feeds it, `latest`/`earliest` read it."""

    def __init__(self, redis: redis.Redis, clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.clock = clock
        self._script = scripts.load(redis, "CLOCK_OBSERVE")
        self._mu = threading.Lock()
        self._cached: tuple[float, float, float] | None = None  # lo, hi, read at
        self._read_at = -1e9

    def bounds(self) -> tuple[float, float]:
        """(lo, hi): Tencent's clock minus ours lies in between (see the module docstring)."""
        now = self.clock()
        with self._mu:
            stale = now - self._read_at >= CACHE_SECONDS
        if stale:
            # str replies (decode_responses): all three are written together, by CLOCK_OBSERVE
            raw = cast("list[str]", self.redis.hmget(keys.CLOCK, "lo", "hi", "at"))
            cached = None
            if raw[0] is not None:
                cached = (float(raw[0]), float(raw[1]), float(raw[2]))
            with self._mu:
                self._cached, self._read_at = cached, now
        with self._mu:
            cached = self._cached
        if cached is None:
            return -DEFAULT_SPREAD, DEFAULT_SPREAD
        lo, hi, at = cached
        age = max(0.0, now - at) * DRIFT
        return lo - age, hi + age

    def latest(self) -> float:
        """The latest Tencent's clock may read now: plan deadlines on it."""
        return self.clock() + self.bounds()[1]

    def earliest(self) -> float:
        """The earliest Tencent's clock may read now: decide "surely over" on it."""
        return self.clock() + self.bounds()[0]

    def observe(self, lo: float, hi: float) -> None:
        """Add one sample: the offset lies in [lo, hi]."""
        with self._mu:
            cached = self._cached
        if cached is not None and lo <= cached[0] and hi >= cached[1]:
            return  # it cannot narrow what we know: spare Redis the write
        res = self._script(keys=[keys.CLOCK], args=[lo, hi, self.clock(), DRIFT])
        with self._mu:
            self._cached, self._read_at = (float(res[0]), float(res[1]), self.clock()), \
                self.clock()

    def observe_date(self, date: str, sent: float, received: float) -> None:
        """A sample from an answer's Date header (see the module docstring)."""
        d = email.utils.parsedate_to_datetime(date).timestamp()
        self.observe(d - received, d + 1.0 - sent)
