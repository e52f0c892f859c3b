"""Tencent's clock: bounds on the offset from Date headers, shared in Redis, safe when wrong."""

from __future__ import annotations

import email.utils

import pytest
import redis

from worker.engine.state import keys
from worker.engine.tencent.clock import DEFAULT_SPREAD, TencentClock


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _answer(tc: TencentClock, clock: Clock, offset: float, rtt: float = 0.004) -> None:
    """One call: sent now, answered by a server whose clock runs `offset` ahead, mid-flight."""
    sent = clock.t
    stamp = sent + rtt / 2 + offset
    clock.t += rtt
    tc.observe_date(email.utils.formatdate(stamp, usegmt=True), sent, clock.t)


def _learn(tc: TencentClock, clock: Clock, offset: float, answers: int = 40) -> None:
    """Answers at many fractions of a second."""
    for _ in range(answers):
        _answer(tc, clock, offset)
        clock.t += 0.11


def _fresh(redis_url: str) -> tuple[redis.Redis, Clock, TencentClock]:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    clock = Clock(1_800_000_000.0)
    return r, clock, TencentClock(r, clock)


@pytest.mark.parametrize("offset", [-0.5, -0.03, 0.0, 0.5, 2.7])
def test_bounds_hold_the_true_offset_and_narrow_to_a_round_trip(redis_url, offset):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    clock = Clock(1_800_000_000.0)
    tc = TencentClock(r, clock)
    assert tc.bounds() == (-DEFAULT_SPREAD, DEFAULT_SPREAD)  # nothing known yet
    for _ in range(60):  # answers at many fractions of a second
        _answer(tc, clock, offset)
        clock.t += 0.137
        lo, hi = tc.bounds()
        assert lo <= offset <= hi
    assert hi - lo < 0.05
    assert tc.latest() >= clock.t + offset >= tc.earliest()


def test_processes_share_what_they_learn(redis_url):
    r, clock, a = _fresh(redis_url)
    b = TencentClock(r, clock)
    _learn(a, clock, 0.5)
    clock.t += 1  # past b's cache
    lo, hi = b.bounds()
    assert lo <= 0.5 <= hi and hi - lo < 0.05


def test_a_stepped_clock_widens_the_bounds_instead_of_lying(redis_url):
    _r, clock, tc = _fresh(redis_url)
    _learn(tc, clock, 0.0)
    _answer(tc, clock, 3.0)  # NTP stepped one clock by 3 s
    lo, hi = tc.bounds()
    assert lo <= 0.0 and hi >= 3.0  # covers both: decisions stay safe, if less sharp
    _learn(tc, clock, 3.0)
    lo, hi = tc.bounds()
    assert lo <= 3.0 <= hi and hi - lo < 0.05


def test_bounds_widen_with_age(redis_url):
    r, clock, tc = _fresh(redis_url)
    _learn(tc, clock, 0.0)
    lo, hi = tc.bounds()
    clock.t += 3600
    lo2, hi2 = tc.bounds()
    assert lo2 < lo and hi2 > hi and hi2 - hi == pytest.approx(0.36, abs=0.01)
    assert r.exists(keys.CLOCK)


def test_the_client_feeds_the_clock_from_the_sandbox(rt, ctl):
    """A real answer: the sandbox's Date header runs on its (Tencent's) clock."""
    ctl.set_clock_offset(0.5)
    try:
        for _ in range(25):
            rt.client.get_gift_count("room", "owner")
            import time
            time.sleep(0.043)
        rt.tclock._read_at = -1e9
        lo, hi = rt.tclock.bounds()
        assert lo <= 0.5 <= hi and hi - lo < 0.6
    finally:
        ctl.set_clock_offset(0.0)
