"""Control tasks on their own queue: tick, flush, reconcile, audit (worker/engine/tick/)."""

from __future__ import annotations

from collections.abc import Callable

from celery import Task

from worker.doors.app import app
from worker.engine.flush import audit
from worker.engine.flush.flusher import flush_battle
from worker.engine.reconcile.reconciler import reconcile_battle
from worker.engine.runtime import Runtime, get_runtime
from worker.engine.tick import dispatch as engine_tick
from worker.engine.timers import TIMERS


@app.task(name="scorer.flush", ignore_result=True)
def flush(battle_ids: list[str]) -> dict[str, str]:
    """Send the pending deltas of these battles (one owner per battle)."""
    return engine_tick.run_many(get_runtime(), flush_battle, list(battle_ids))


@app.task(name="scorer.reconcile", ignore_result=True)
def reconcile(battle_ids: list[str]) -> dict[str, str]:
    """Compare these battles with get_gift_count; confirmed drift becomes pending value."""
    return engine_tick.run_many(get_runtime(), reconcile_battle, list(battle_ids))


@app.task(name="scorer.audit", ignore_result=True)
def audit_task(battle_ids: list[str]) -> dict[str, str]:
    """Compare these battles' scores on Tencent with the ledger; overwrite a difference."""
    return engine_tick.run_many(get_runtime(), audit.audit_battle, list(battle_ids))


@app.task(name="scorer.tick", ignore_result=True)
def tick() -> dict[str, int]:
    """Dispatch due flushes and reconciles, sweep held gifts, finalize ended battles."""
    return engine_tick.run(get_runtime(), lambda kind, ids: _send(TASKS[kind], ids))


#: The task of each kind of control message the tick dispatches.
TASKS: dict[str, Task] = {"flush": flush, "reconcile": reconcile, "audit": audit_task}


def _send(task: Task, battle_ids: list[str]) -> None:
    # A dispatched control task older than this is dropped; the next tick sends a fresh one.
    task.apply_async((battle_ids,), expires=TIMERS.control.task_expires)


def run_tick(rt: Runtime, dispatch: Callable[[Task, list[str]], None] | None = None
             ) -> dict[str, int]:
    """One tick without the tick lock; `dispatch(task, battle_ids)` sends a control task
    (tests pass their own)."""
    send = dispatch or _send
    return engine_tick.run_tick(rt, lambda kind, ids: send(TASKS[kind], ids))
