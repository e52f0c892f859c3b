"""Extra referee scenarios of this project's issues, in the form ../shared/acceptance loads.

The referee imports `hidden_scenarios.HIDDEN` when it is on the path; `python -m
bench.acceptance` puts this directory there. Each scenario is named after what it stresses.
"""


#: The acceptance chaos scenario's battles, webhook faults and API faults, plus late writes.
_CHAOS = dict(duration_s=60, start_spread_s=9, p_dup=0.05, p_lost=0.01, p_phantom=0.005,
              sim_faults={"p_500": 0.02, "p_internal": 0.02, "p_drop_after_apply": 0.02,
                          "p_late_apply": 0.02, "late_apply_s": 8.0})


def HIDDEN(Params):  # (the referee imports this name)
    """name → Params of the scenarios kept here."""
    return {
        # Issue 26: rooms that are never quiet. 20 battles of 90 s, 3 gifts/s per room (6/s in
        # the last 10 s), lost webhooks, phantoms and duplicates and no other fault.
        "busy": Params("busy", n_battles=20, duration_s=90, start_spread_s=9, rate_per_room=3.0,
                       burst_mult=2.0, p_dup=0.02, p_lost=0.01, p_phantom=0.005,
                       max_run_s=200.0),
        # Issue 27: the faults production has. Each takes the acceptance chaos's webhook faults
        # and API faults, adds writes that Tencent applies 8 s after the caller gave up, and
        # one fault of its own.
        # Two workers, each frozen whole (SIGSTOP of its process tree) for 12 s in turn, beat
        # killed in between; every freeze ends 18 s or more before any battle's end.
        "frozen": Params("frozen", workers=2, pause_s=12.0,
                         chaos=[(4.0, "pause_worker"), (18.0, "kill_beat"),
                                (21.0, "pause_worker2")], **_CHAOS),
        # Two workers, the second host's wall clock 1.2 s ahead in all its processes.
        "skew": Params("skew", workers=2, skew_s=1.2, **_CHAOS),
        # Late writes meeting Redis SIGKILLs under appendfsync everysec (the last second lost).
        "latewrite": Params("latewrite",
                            chaos=[(15.0, "kill_worker"), (28.0, "kill_redis_hard"),
                                   (42.0, "kill_worker"), (50.0, "kill_redis_hard")], **_CHAOS),
    }
