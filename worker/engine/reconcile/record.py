"""What a reconcile pass stores of one room's judgement: its fields of the battle's recon hash."""

from __future__ import annotations

import json

from worker.engine.reconcile import cadence, judge


def room_fields(room: str, j: judge.RoomJudgement, recon: dict[str, str], done: int,
                now: float) -> tuple[dict[str, str], float | None, int]:
    """(the room's fields to store, seconds from its drift's first proof to the fix this pass
    decided (None: none), how often its reads pay: cadence QUIET, BUSY or HUNTING), given
    the judgement `j`, the hash as read (`recon`) and the corrections decided before (`done`)."""
    out: dict[str, str] = {}
    heal = None
    if j.base_taken and j.base is not None:
        out[f"base:{room}"] = judge.format_base(j.base)
    # (`proposal:`, not the `rebase:` of the two-read rule: a worker of that version reads
    # `rebase:` as "lo,hi" and would fail on this form during an upgrade.)
    if j.rebase is not None or recon.get(f"proposal:{room}"):
        out[f"proposal:{room}"] = "" if j.rebase is None else j.rebase.dumps()
    if j.judged:
        out[f"last:{room}"] = judge.format_last(j.last, done + j.fix)
        # When the drift waiting was first proved: its correction's time to heal.
        proved = recon.get(f"proved:{room}") or ""
        if j.fix:
            heal = now - float(proved or now)
        out[f"proved:{room}"] = "" if j.last is None else (
            repr(now) if j.fix or not proved else proved)
    if j.ambiguous is not None:
        out[f"wide:{room}"] = "1" if j.ambiguous else "0"
    wide = recon.get(f"wide:{room}", "1") == "1" if j.ambiguous is None else j.ambiguous
    need = (cadence.HUNTING if j.last is not None else
            cadence.BUSY if j.base is None or wide or j.rebase is not None else cadence.QUIET)
    out[f"obs:{room}"] = json.dumps(j.waiting)
    return out, heal, need
