"""The one rate limiter of every Tencent call: a sliding-window log per API, shared in Redis.

Why a sliding-window log and not a token bucket or GCRA: the contract is "never more than
SCORER_API_RATE calls per API in ANY sliding 1-s window, across all processes". A log of the
last window's admissions enforces exactly that (a bucket may burst to twice the rate across a
window edge). It costs one Lua call per admission and at most RATE entries per API in Redis.
Tencent counts arrival times, which trail our admission stamps by a jittery delay (process
scheduling, the network): so the limiter keeps headroom, admitting at most 90 % of the rate
per window widened by 100 ms. Measured on 2 loaded cores, a 50 ms margin at 100 % still let
a handful of calls in 3,000 arrive bunched and answer 100012 (bench/RESULTS.md).
"""

from __future__ import annotations

import time
import uuid

from worker import keys, scripts


#: Share of SCORER_API_RATE the limiter admits (see the module docstring).
HEADROOM = 0.9
#: The sliding window, and the margin it is widened by (see the module docstring).
WINDOW_MS = 1000
MARGIN_MS = 100


def admitted_per_second(rate: int) -> float:
    """The most calls per second the limiter admits over time: what schedules may plan on."""
    return max(1, int(rate * HEADROOM)) * 1000 / (WINDOW_MS + MARGIN_MS)


class RateLimitTimeout(RuntimeError):
    """The budget stayed full for longer than the caller was willing to wait."""


class RedisRateLimiter:
    """Blocks until a call of `api` fits in `rate` calls per sliding window, for all processes."""

    def __init__(self, redis, rate: int, window_ms: int = WINDOW_MS, margin_ms: int = MARGIN_MS,
                 headroom: float = HEADROOM, max_wait: float = 5.0,
                 sleep=time.sleep) -> None:
        self.redis = redis
        self.rate = max(1, int(rate * headroom))
        self.window_ms = window_ms + margin_ms
        self.max_wait = max_wait
        self._script = redis.register_script(scripts.RATE)
        self._sleep = sleep
        self.waited_total = 0.0  # seconds spent waiting (metrics)

    def try_acquire(self, api: str) -> float:
        """Admit one call now (returns 0) or say how many seconds until one may fit."""
        wait_ms = self._script(keys=[keys.rate_key(api)],
                               args=[self.rate, self.window_ms, uuid.uuid4().hex])
        return int(wait_ms) / 1000.0

    def acquire(self, api: str) -> float:
        """Wait for a slot; returns the seconds waited; RateLimitTimeout past `max_wait`."""
        waited = 0.0
        while True:
            wait = self.try_acquire(api)
            if wait == 0:
                self.waited_total += waited
                return waited
            if waited + wait > self.max_wait:
                raise RateLimitTimeout(f"{api}: no call slot within {self.max_wait:.0f}s")
            self._sleep(wait)
            waited += wait
