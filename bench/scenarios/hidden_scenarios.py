"""Extra referee scenarios of this project's issues, in the form ../shared/acceptance loads.

The referee imports `hidden_scenarios.HIDDEN` when it is on the path; `python -m
bench.acceptance` puts this directory there. Each scenario is named after what it stresses.
"""


def HIDDEN(Params):  # (the referee imports this name)
    """name → Params of the scenarios kept here."""
    return {
        # Issue 26: rooms that are never quiet. 20 battles of 90 s, 3 gifts/s per room (6/s in
        # the last 10 s), lost webhooks, phantoms and duplicates and no other fault.
        "busy": Params("busy", n_battles=20, duration_s=90, start_spread_s=9, rate_per_room=3.0,
                       burst_mult=2.0, p_dup=0.02, p_lost=0.01, p_phantom=0.005,
                       max_run_s=200.0),
    }
