"""The one rate limiter of every Tencent call: a sliding-window log per API, shared in Redis.

Why a sliding-window log and not a token bucket or GCRA: the contract is "never more than
SCORER_API_RATE calls per API in ANY sliding 1-s window, across all processes". A log of the
last window's admissions enforces exactly that (a bucket may burst to twice the rate across a
window edge). It costs one Lua call per admission and at most RATE entries per API in Redis.
Tencent counts arrival times, which trail our admission stamps by a jittery delay (process
scheduling, the network): so the limiter keeps headroom, admitting at most 90 % of the rate
per sliding second. The 10 % left (20 calls at 200/s, 110 ms of calls) absorbs arrivals bunched
by that delay. (Measured on 2 loaded cores: a 50 ms margin at 100 % still let a handful of calls
in 3,000 arrive bunched and answer 100012; the 90 % rule answered none then, bench/RESULTS.md.)
A slot is admitted before its request is built, so a process stalled in between let slots
admitted over a second leave together: the send log (`leave`) holds a request while half the
headroom is used by requests that left in the last window, by the moment they left. That
moment is the socket write (`Departure`, an httpcore trace hook), not any earlier line of
ours: the end-game process, given 16 flushes at once, took 0.3-0.6 s between its last line
before `post` and the write (opening connections under a contended GIL), and those 16 left
together with the next second's requests (100012; bench/RESULTS.md, seventh session).

Two lanes: a call with a deadline (a battle near its end) may use the whole budget; a call
without one (a freshness flush, a reconcile correction) only what is left after the part of
the reserve the tick keeps for deadlines (`set_reserve`) that deadline calls have not used in
the window yet. So calls that can wait never crowd out the ones that cannot, and a reserve
larger than the deadlines' need costs nothing: the window's budget is used whole.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Protocol

import redis

from worker.engine.state import keys, scripts

# Re-exported: RateLimitTimeout is a Tencent error now, raised here.
from worker.engine.tencent.errors import Fenced
from worker.engine.tencent.errors import RateLimitTimeout as RateLimitTimeout
from worker.engine.timers import TIMERS

#: Share of SCORER_API_RATE the limiter admits (see the module docstring).
HEADROOM = TIMERS.state.headroom
#: The sliding window (see the module docstring); TIMERS.state.margin_ms widens it.
WINDOW_MS = TIMERS.state.window_ms
#: Lanes: `HIGH` calls have a deadline, `LOW` ones yield the reserve to them.
HIGH, LOW = "high", "low"


def admitted_per_second(rate: int) -> float:
    """The most calls per second the limiter admits over time: what schedules may plan on."""
    return max(1, int(rate * HEADROOM)) * 1000 / (WINDOW_MS + TIMERS.state.margin_ms)


class SendLog(Protocol):
    """What `Departure` needs of a limiter."""

    def leave(self, api: str) -> float: ...


class Limiter(Protocol):
    """Anything that blocks until one more call of `api` fits the shared budget."""

    window_ms: int

    def acquire(self, api: str, max_wait: float | None = None, lane: str = "high") -> float: ...

    def try_acquire(self, api: str, lane: str = "high") -> float: ...

    def leave(self, api: str) -> float: ...

    def high_in_window(self, api: str) -> int: ...

    def set_reserve(self, api: str, calls: int) -> None: ...

    def reserved(self, api: str) -> int: ...


class NoLimiter:
    """A limiter that never waits (tests and one-off CLI probes)."""

    window_ms = TIMERS.state.window_ms

    def acquire(self, api: str, max_wait: float | None = None, lane: str = "high") -> float:
        return 0.0

    def try_acquire(self, api: str, lane: str = "high") -> float:
        return 0.0

    def leave(self, api: str) -> float:
        return 0.0

    def high_in_window(self, api: str) -> int:
        return 0

    def set_reserve(self, api: str, calls: int) -> None:
        pass

    def reserved(self, api: str) -> int:
        return 0


class RedisRateLimiter:
    """Blocks until a call of `api` fits in `rate` calls per sliding window, for all processes."""

    def __init__(self, redis: redis.Redis, rate: int, window_ms: int = WINDOW_MS,
                 margin_ms: int = TIMERS.state.margin_ms, headroom: float = HEADROOM,
                 max_wait: float = 5.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.redis = redis
        self.rate = max(1, int(rate * headroom))
        self.window_ms = window_ms + margin_ms
        self.max_wait = max_wait
        self._script = scripts.load(redis, "RATE")
        self._sent = scripts.load(redis, "SENT")
        self._sleep = sleep
        self.waited_total = 0.0  # seconds spent waiting (metrics)
        # The send log's cap: half the headroom above what is admitted (190 at 200/s), the
        # other half left to the jitter after a request leaves. (At a quarter, 185, the hold
        # bound at 10,000 battles: 164 calls a second went, not 175, p99 66 s, not 55.)
        self.send_cap = self.rate + max(0, (max(1, int(rate)) - self.rate) // 2)

    def try_acquire(self, api: str, lane: str = HIGH) -> float:
        """Admit one call now (returns 0) or say how many seconds until one may fit."""
        wait_ms = self._script(keys=[keys.rate_key(api), keys.rate_reserve_key(api),
                                     keys.rate_high_key(api)],
                               args=[self.rate, self.window_ms, uuid.uuid4().hex, lane])
        return int(wait_ms) / 1000.0

    def acquire(self, api: str, max_wait: float | None = None, lane: str = HIGH) -> float:
        """Wait for a slot; returns the seconds waited; RateLimitTimeout past `max_wait`
        (the limiter's own by default; 0: admit now or raise)."""
        limit = self.max_wait if max_wait is None else max_wait
        waited = 0.0
        while True:
            wait = self.try_acquire(api, lane)
            if wait == 0:
                self.waited_total += waited
                return waited
            if waited + wait > limit:
                raise RateLimitTimeout(api, limit)
            self._sleep(wait)
            waited += wait

    def leave(self, api: str) -> float:
        """Just before an admitted request leaves: hold it while `send_cap` requests left in
        the last window (by the moment they left), at most TIMERS.state.send_wait; returns the
        seconds held. Admission stamps a slot before the request is built (a flush takes its
        slot before the battle's lock, then claims under it): a process stalled in between let
        slots admitted over a second leave together, and Tencent counts arrivals (100012). The
        hold is short and rare (only then), so it may run under the battle's lock."""
        held = 0.0
        go = ""
        while True:
            wait = int(self._sent(keys=[keys.rate_sent_key(api)],
                                  args=[self.send_cap, self.window_ms, uuid.uuid4().hex,
                                        go])) / 1000
            if wait == 0:
                return held
            if held + wait > TIMERS.state.send_wait:
                # Past the bound it goes (refused at worst, and retried), logged all the same,
                # so the requests after it see the window as it is.
                go = "go"
                continue
            self._sleep(wait)
            held += wait

    def high_in_window(self, api: str) -> int:
        """HIGH calls of `api` in the window (as of the last admission: a few stale at most)."""
        return int(self.redis.zcard(keys.rate_high_key(api)))

    def set_reserve(self, api: str, calls: int) -> None:
        """Keep `calls` per window for HIGH calls for the next two seconds (the tick renews
        it; if the tick stops, the reserve lapses rather than starving the LOW lane)."""
        key = keys.rate_reserve_key(api)
        if calls > 0:
            self.redis.set(key, min(calls, self.rate - 1), px=2000)
        else:
            self.redis.delete(key)

    def reserved(self, api: str) -> int:
        """The reserve kept for HIGH calls of `api` now (0: none): the end game's writes to
        come, which work that can wait gives way to."""
        return int(self.redis.get(keys.rate_reserve_key(api)) or 0)


class Departure:
    """The send log's stamp as an httpcore trace hook (`extensions={"trace": d.trace}`): it
    runs `leave` in the sending thread as the request's headers start out to the socket, so
    a request is counted when it leaves, however long the process took to get there."""

    EVENTS = frozenset({"http11.send_request_headers.started",
                        "http2.send_request_headers.started"})

    def __init__(self, limiter: SendLog, api: str,
                 clock: Callable[[], float] = time.time,
                 fence: Callable[[], bool] | None = None) -> None:
        self.limiter = limiter
        self.api = api
        self.clock = clock
        self.fence = fence  # checked as the request starts out: False stops it (Fenced)
        self.held = 0.0  # seconds the send log held it
        self.at: float | None = None  # when it left, on `clock` (None: no socket, or a mock)

    def trace(self, event: str, info: dict) -> None:
        """httpcore's trace callback. A proxy tunnel's CONNECT carries the same extensions
        and is not a call to Tencent: not logged. (The hold comes after the pool judged an
        idle connection usable: one closed meanwhile fails the call as ambiguous, as any
        close racing a write does; holds are rare and 0.25 s at most.)"""
        if event in self.EVENTS and getattr(info.get("request"), "method", b"") != b"CONNECT":
            # The fence, as close to the socket as the client lets us: after the connection
            # pool's wait and the connect, before a byte of the request is written.
            if self.fence is not None and not self.fence():
                raise Fenced(self.api)
            self.held += self.limiter.leave(self.api)
            if self.fence is not None and not self.fence():  # the send log may have held it
                raise Fenced(self.api)
            self.at = self.clock()
