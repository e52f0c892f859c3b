"""A short chaos run in CI: kills, Redis restarts and SIGKILLs, a host clock ahead, late
landings, faults; every battle exact.

The full-size run is `python -m bench.chaos` (docs/reliability.md has its figures).
"""

from bench import chaos


def test_short_chaos_run_ends_exact_with_no_unexpected_exit():
    # Half the battles and one worker fewer than the full run, over the same 40 s: the lost
    # and never-counted gifts come 16 s in, and reconcile needs a judgeable window after them
    # with Redis up (a read, its confirming read 1 s later, both judged 2 s after). At 36 s
    # both Redis SIGKILLs fell inside the 20 s that follow, and about one run in four found no
    # such window before the end (9 coins over: a never-counted gift not taken back).
    # No freezes here: with two workers, one frozen 6 s and SIGKILLed as it wakes, a drift
    # 16 s into these 40 s battles was sometimes not healed in time (2 of 6 runs: a phantom
    # of 2-9 coins left over; docs/reliability.md). The full run (`python -m bench.chaos`,
    # three workers) freezes; tests/integration/test_freeze.py, test_frozen_consumer.py and
    # test_beat_loss.py hold each freeze on its own.
    res = chaos.run(n_battles=4, duration=40.0, workers=2, fault_rate=0.03, seed=3,
                    freeze=0.0, log=lambda *_: None)
    report = chaos.report(res)
    assert res.unexpected_exits == [], report
    # A write Tencent held past its client's timeout and applied in its battle's last second,
    # after the battle's last absolute write, is the documented limit (docs/reliability.md):
    # such a battle is reported apart (CI once met one: 48 coins over, 2 under); every other
    # battle is exact.
    assert res.exact + len(res.at_the_buzzer) == res.battles, report
    assert res.over == 0 and res.under == 0, report
    assert res.actions["Redis restart"] == 1 and res.actions["beat restart"] == 1, report
    assert res.actions["Redis SIGKILL"] == 2 and res.actions["poison value"] == 1, report
    assert sum(res.faults.values()) > 0, report
    assert res.key_problems == [], report  # no battle key outlives its end by a day


def test_only_a_held_write_applied_in_the_last_second_is_at_the_buzzer():
    end = 1000.0

    def call(landed, code=None, bid="b1", fault="late_landing"):
        return {"fault": fault, "t_landed": landed, "error_code": code,
                "body": {"BattleId": bid}}

    calls = [call(999.2), call(998.9), call(999.5, code=100006), call(1000.2),
             call(999.4, bid="b2"), call(999.6, fault="latency")]
    assert chaos._landed_at_the_buzzer(calls, "b1", end) == [0.8]
