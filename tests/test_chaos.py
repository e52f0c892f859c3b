"""A short chaos run in CI: kills, Redis restarts and SIGKILLs, late landings, faults; every battle exact.

The full-size run is `python -m bench.chaos` (docs/reliability.md has its figures).
"""

from bench import chaos


def test_short_chaos_run_ends_exact_with_no_unexpected_exit():
    res = chaos.run(n_battles=4, duration=36.0, workers=2, fault_rate=0.03, seed=3,
                    log=lambda *_: None)
    report = chaos.report(res)
    assert res.unexpected_exits == [], report
    assert res.exact == res.battles and res.over == 0 and res.under == 0, report
    assert res.actions["Redis restart"] == 1 and res.actions["beat restart"] == 1, report
    assert res.actions["Redis SIGKILL"] == 2 and res.actions["poison value"] == 1, report
    assert sum(res.faults.values()) > 0, report
    assert res.key_problems == [], report  # no battle key outlives its end by a day
