"""worker.engine.tencent.clock: bounds on Tencent's clock from Date headers, safe when wrong."""

from __future__ import annotations

import email.utils

import fakeredis
import pytest

from tests.unit.conftest import T0
from worker.engine.state import keys
from worker.engine.tencent.clock import CACHE_SECONDS, DEFAULT_SPREAD, DRIFT, TencentClock


class Clock:
    """Our wall clock, moved by the test."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _date(t: float) -> str:
    """An HTTP Date header for Tencent's wall time `t` (whole seconds: the fraction is lost)."""
    return email.utils.formatdate(t, usegmt=True)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def tc(fake_redis: fakeredis.FakeRedis, clock: Clock) -> TencentClock:
    return TencentClock(fake_redis, clock)


def _approx(pair: tuple[float, float]) -> object:
    return pytest.approx(pair, abs=1e-6)


def test_with_no_sample_the_offset_is_within_the_default_spread(tc: TencentClock,
                                                                clock: Clock) -> None:
    assert tc.bounds() == (-DEFAULT_SPREAD, DEFAULT_SPREAD)
    assert tc.latest() == T0 + DEFAULT_SPREAD and tc.earliest() == T0 - DEFAULT_SPREAD


def test_one_answer_bounds_the_offset_by_its_date_and_round_trip(
        tc: TencentClock, clock: Clock, fake_redis: fakeredis.FakeRedis) -> None:
    # Sent at T0, answered at T0 + 0.1, stamped T0 + 2: made while Tencent read [T0+2, T0+3).
    clock.t = T0 + 0.1
    tc.observe_date(_date(T0 + 2), sent=T0, received=T0 + 0.1)
    assert tc.bounds() == _approx((1.9, 3.0))
    # Stored as Lua prints numbers (14 digits): 1e-7 s off at most, at these magnitudes.
    stored = {k: float(v) for k, v in fake_redis.hgetall(keys.CLOCK).items()}
    assert stored == pytest.approx({"lo": 1.9, "hi": 3.0, "at": T0 + 0.1}, abs=1e-6)
    assert tc.latest() == pytest.approx(T0 + 3.1) and tc.earliest() == pytest.approx(T0 + 2.0)


def test_samples_intersect_to_a_round_trip(tc: TencentClock, clock: Clock) -> None:
    offset, rtt = 0.37, 0.004
    for i in range(40):  # answers at many fractions of a second
        sent = clock.t
        clock.t += rtt
        tc.observe_date(_date(sent + rtt / 2 + offset), sent, clock.t)
        clock.t += 0.113
        lo, hi = tc.bounds()
        assert lo <= offset <= hi, i
    assert hi - lo < 0.05


def test_a_contradicting_sample_widens_the_bounds_to_cover_both(tc: TencentClock) -> None:
    tc.observe(0.1, 0.2)
    tc.observe(3.0, 3.5)  # a stepped clock, or a server that disagrees
    assert tc.bounds() == _approx((0.1, 3.5))  # less sharp, never wrong
    tc.observe(3.1, 4.0)
    assert tc.bounds() == _approx((3.1, 3.5))


def test_bounds_widen_with_their_age(tc: TencentClock, clock: Clock) -> None:
    tc.observe(0.0, 0.1)
    clock.t += 1000
    assert tc.bounds() == _approx((-1000 * DRIFT, 0.1 + 1000 * DRIFT))
    tc.observe(0.05, 0.5)  # intersected with the widened bounds, stamped now
    assert tc.bounds() == _approx((0.05, 0.1 + 1000 * DRIFT))


def test_a_sample_that_cannot_narrow_is_not_written(tc: TencentClock, clock: Clock,
                                                    fake_redis: fakeredis.FakeRedis) -> None:
    tc.observe(0.0, 0.1)
    clock.t += 0.2
    tc.observe(-1.0, 1.0)
    assert float(fake_redis.hget(keys.CLOCK, "at")) == T0  # still the first sample's


def test_processes_share_the_bounds_within_the_cache_time(
        tc: TencentClock, clock: Clock, fake_redis: fakeredis.FakeRedis) -> None:
    other = TencentClock(fake_redis, clock)
    assert other.bounds() == (-DEFAULT_SPREAD, DEFAULT_SPREAD)  # read: nothing known yet
    tc.observe(0.2, 0.3)
    clock.t += CACHE_SECONDS / 2
    assert other.bounds() == (-DEFAULT_SPREAD, DEFAULT_SPREAD)  # its cache is still fresh
    clock.t += CACHE_SECONDS / 2
    assert other.bounds() == _approx((0.2 - CACHE_SECONDS * DRIFT, 0.3 + CACHE_SECONDS * DRIFT))


def test_a_bad_date_header_raises_and_stores_nothing(tc: TencentClock,
                                                     fake_redis: fakeredis.FakeRedis) -> None:
    with pytest.raises((ValueError, TypeError)):  # the client drops the sample
        tc.observe_date("not a date", T0, T0)
    assert not fake_redis.exists(keys.CLOCK)
