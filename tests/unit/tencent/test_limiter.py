"""worker.engine.tencent.limiter: the shared sliding-window log, its headroom and its two lanes."""

from __future__ import annotations

import fakeredis
import pytest

from tests.unit.conftest import T0
from tests.unit.state.server_clock import ServerClock
from worker.engine.state import keys
from worker.engine.tencent.errors import Outcome, TencentError
from worker.engine.tencent.limiter import (
    HEADROOM,
    HIGH,
    LOW,
    WINDOW_MS,
    Departure,
    RateLimitTimeout,
    RedisRateLimiter,
    admitted_per_second,
)

API = "set_battle_score"


def _limiter(r: fakeredis.FakeRedis, clock: ServerClock, rate: int = 10,
             max_wait: float = 5.0) -> RedisRateLimiter:
    """A limiter whose waits move Redis's clock instead of sleeping."""
    return RedisRateLimiter(r, rate, max_wait=max_wait, sleep=clock.advance)


def _admit(lim: RedisRateLimiter, lane: str = HIGH, api: str = API) -> int:
    """How many calls of `lane` are admitted now, before the first refusal."""
    n = 0
    while lim.try_acquire(api, lane) == 0:
        n += 1
    return n


def test_admitted_per_second_keeps_the_headroom() -> None:
    assert HEADROOM == 0.9 and WINDOW_MS == 1000
    assert admitted_per_second(200) == 180.0
    assert admitted_per_second(1) == 1.0  # never zero: one call a window at least


def test_admits_ninety_percent_of_the_rate_per_window(fake_redis: fakeredis.FakeRedis,
                                                      clock: ServerClock) -> None:
    lim = _limiter(fake_redis, clock, rate=10)
    assert lim.rate == 9 and _admit(lim) == 9
    assert fake_redis.zcard(keys.rate_key(API)) == 9
    assert 0 < fake_redis.pttl(keys.rate_key(API)) <= 2 * WINDOW_MS


def test_the_wait_is_until_the_oldest_call_leaves_the_window(fake_redis: fakeredis.FakeRedis,
                                                             clock: ServerClock) -> None:
    lim = _limiter(fake_redis, clock, rate=2)  # one call per window
    assert lim.try_acquire(API) == 0
    assert lim.try_acquire(API) == pytest.approx(1.001)
    clock.advance(0.6)
    assert lim.try_acquire(API) == pytest.approx(0.401)
    clock.advance(0.401)
    assert lim.try_acquire(API) == 0  # the window slid past the first call


def test_apis_have_separate_budgets(fake_redis: fakeredis.FakeRedis,
                                    clock: ServerClock) -> None:
    lim = _limiter(fake_redis, clock, rate=5)
    assert _admit(lim, api="set_battle_score") == 4
    assert _admit(lim, api="get_gift_count") == 4


def test_limiters_of_one_redis_share_one_budget(fake_redis: fakeredis.FakeRedis,
                                                clock: ServerClock) -> None:
    a, b = _limiter(fake_redis, clock), _limiter(fake_redis, clock)
    for _ in range(5):
        assert a.try_acquire(API) == 0
    assert _admit(b) == 4


def test_acquire_waits_then_returns_the_time_waited(fake_redis: fakeredis.FakeRedis,
                                                    clock: ServerClock) -> None:
    lim = _limiter(fake_redis, clock, rate=2)
    assert lim.acquire(API) == 0.0
    assert lim.acquire(API) == pytest.approx(1.001)
    assert clock.t == pytest.approx(T0 + 1.001)
    assert lim.waited_total == pytest.approx(1.001)


def test_acquire_raises_a_retryable_tencent_error_past_its_max_wait(
        fake_redis: fakeredis.FakeRedis, clock: ServerClock) -> None:
    lim = _limiter(fake_redis, clock, rate=2, max_wait=0.5)
    lim.acquire(API)
    with pytest.raises(RateLimitTimeout) as err:
        lim.acquire(API)
    assert clock.t == T0  # it knew it could not make it: it did not wait first
    assert isinstance(err.value, TencentError)
    assert err.value.outcome is Outcome.retryable and err.value.api == API
    with pytest.raises(RateLimitTimeout):
        lim.acquire(API, max_wait=0)  # 0: admit now or raise
    assert lim.acquire(API, max_wait=2.0) == pytest.approx(1.001)  # the caller's own bound


def test_the_low_lane_leaves_the_reserve_to_calls_with_a_deadline(
        fake_redis: fakeredis.FakeRedis, clock: ServerClock) -> None:
    lim = _limiter(fake_redis, clock, rate=10)  # 9 a window
    lim.set_reserve(API, 4)
    assert _admit(lim, LOW) == 5
    assert _admit(lim, HIGH) == 4  # the reserve is still there for deadlines


def test_a_reserve_the_deadlines_used_costs_the_low_lane_nothing(
        fake_redis: fakeredis.FakeRedis, clock: ServerClock) -> None:
    lim = _limiter(fake_redis, clock, rate=10)
    lim.set_reserve(API, 4)
    assert sum(lim.try_acquire(API, HIGH) == 0 for _ in range(4)) == 4
    assert _admit(lim, LOW) == 5  # the window's budget is used whole: 4 + 5 = 9
    assert fake_redis.zcard(keys.rate_high_key(API)) == 4


def test_the_low_lane_always_keeps_one_call(fake_redis: fakeredis.FakeRedis,
                                            clock: ServerClock) -> None:
    lim = _limiter(fake_redis, clock, rate=10)
    lim.set_reserve(API, 100)
    assert fake_redis.get(keys.rate_reserve_key(API)) == "8"  # capped at rate - 1
    fake_redis.set(keys.rate_reserve_key(API), 100)  # even a reserve past the rate
    assert _admit(lim, LOW) == 1


def test_a_reserve_lapses_unless_renewed_and_zero_clears_it(fake_redis: fakeredis.FakeRedis,
                                                           clock: ServerClock) -> None:
    lim = _limiter(fake_redis, clock, rate=10)
    lim.set_reserve(API, 4)
    clock.advance(2.001)  # the tick stopped renewing it
    assert _admit(lim, LOW) == 9
    lim.set_reserve(API, 4)
    lim.set_reserve(API, 0)
    assert not fake_redis.exists(keys.rate_reserve_key(API))


def test_the_limiter_module_re_exports_the_tencent_error() -> None:
    from worker.engine.tencent import errors

    assert RateLimitTimeout is errors.RateLimitTimeout
    assert "5.0s" in str(RateLimitTimeout(API, 5.0))


def test_requests_leave_under_the_send_logs_cap_by_the_moment_they_leave(
        fake_redis: fakeredis.FakeRedis, clock: ServerClock) -> None:
    """At 200/s, 180 are admitted a window and 190 may leave one: slots admitted over a second
    and held by a stalled process do not leave together past the cap; a request waits for
    the oldest to leave the window, at most TIMERS.state.send_wait, then goes anyway."""
    lim = _limiter(fake_redis, clock, rate=200)
    assert lim.rate == 180 and lim.send_cap == 190
    assert all(lim.leave(API) == 0.0 for _ in range(190))  # a bunch of 190 leaves at once
    clock.advance(0.9)
    assert lim.leave(API) == pytest.approx(0.101)  # the 191st waits for the first to age out
    assert fake_redis.zcard(keys.rate_sent_key(API)) == 1  # the bunch aged out meanwhile
    assert all(lim.leave(API) == 0.0 for _ in range(189))
    before = clock.t
    assert lim.leave(API) == 0.0 and clock.t == before  # the next would wait 1 s: it goes
    assert fake_redis.zcard(keys.rate_sent_key(API)) == 191  # logged all the same
    assert 0 < fake_redis.pttl(keys.rate_sent_key(API)) <= 2 * WINDOW_MS
    assert _limiter(fake_redis, clock, rate=1).send_cap == 1  # never below what is admitted


class _SendLog:
    def __init__(self) -> None:
        self.left: list[str] = []

    def leave(self, api: str) -> float:
        self.left.append(api)
        return 0.25


def test_a_departure_is_logged_as_its_headers_start_out_and_at_every_write_of_them() -> None:
    """httpcore's trace events: a connection opening is not a departure; the headers going
    out are, each time they do, except a proxy tunnel's CONNECT."""
    log = _SendLog()
    d = Departure(log, API)
    d.trace("connection.connect_tcp.started", {})
    d.trace("connection.connect_tcp.complete", {})
    assert log.left == [] and d.at is None and d.held == 0.0
    d.trace("http11.send_request_headers.started", {"request": None})
    assert log.left == [API] and d.at is not None and d.held == 0.25
    d.trace("http11.send_request_headers.complete", {})
    d.trace("http11.send_request_headers.started", {})
    assert log.left == [API, API] and d.held == 0.5
    tunnel = type("Request", (), {"method": b"CONNECT"})()  # a proxy's tunnel: not a call
    d.trace("http11.send_request_headers.started", {"request": tunnel})
    assert log.left == [API, API]
