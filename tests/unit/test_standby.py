"""The tick standby's rule (worker/doors/standby.py) on a fake clock: it ticks once no tick has
run for standby_after, keeps beat's pace while standing in, and falls quiet once a tick comes
from elsewhere."""

from __future__ import annotations

from types import SimpleNamespace

from worker.doors.standby import Standby
from worker.engine.state import keys
from worker.engine.timers import TIMERS

EVERY = 0.25


class FakeRedis:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        return self.data.get(key)


def _world():
    now = [1000.0]
    rt = SimpleNamespace(redis=FakeRedis(), clock=lambda: now[0])
    ticks: list[float] = []

    def tick() -> None:  # as the real tick does first: stamp bs:tick:at
        ticks.append(now[0])
        rt.redis.data[keys.TICK_AT] = repr(now[0])

    return now, rt, ticks, tick


def test_it_stands_in_for_a_late_beat_keeps_pace_and_falls_quiet_when_beat_is_back():
    now, rt, ticks, tick = _world()
    standby = Standby(rt, tick, EVERY)
    rt.redis.data[keys.TICK_AT] = repr(now[0])  # beat's last tick
    for _ in range(int(TIMERS.tick.standby_after / 0.1) - 1):
        now[0] += 0.1
        assert not standby.step()  # beat is only late, not gone
    now[0] += 0.2
    assert standby.step() and ticks == [now[0]]  # 2.1 s without a tick: stand in
    for _ in range(20):  # standing in: one tick per beat period, polled every 0.1 s
        now[0] += 0.1
        standby.step()
    assert len(ticks) == 1 + 20 // 3  # the first poll at least 0.25 s on: every 0.3 s
    now[0] += 0.05
    rt.redis.data[keys.TICK_AT] = repr(now[0])  # beat is back
    now[0] += 0.1
    assert not standby.step() and standby.mine is None
    before = len(ticks)
    for _ in range(10):
        now[0] += 0.1
        rt.redis.data[keys.TICK_AT] = repr(now[0])  # beat ticks on
        assert not standby.step()
    assert len(ticks) == before


def test_with_no_tick_ever_it_ticks_at_once():
    _, rt, ticks, tick = _world()
    assert Standby(rt, tick, EVERY).step() and len(ticks) == 1
