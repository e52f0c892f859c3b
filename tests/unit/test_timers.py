"""worker.engine.timers: the measured defaults, each field documented, frozen, and ordered.

The numbers live in timers.py only: modules read them from TIMERS (checked from the
source, with ast, so nothing is imported but timers.py itself).
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from worker.engine import timers
from worker.engine.reconcile.band import DEFAULT_BAND
from worker.engine.timers import TIMERS, Timers

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(timers.__file__)

#: The defaults as measured so far (bench/RESULTS.md, bench.chaos): a change here is a change of
#: behaviour, to be measured first.
MEASURED = {
    "state.lease_margin": 1.0,
    "state.lock_ttl_ms": 6000, "state.headroom": 0.9, "state.window_ms": 1000,
    "state.margin_ms": 0, "state.send_wait": 0.25, "state.call_metrics_every": 0.5,
    "tencent.connect": 2.0, "tencent.read": 5.0, "tencent.write": 5.0, "tencent.pool": 5.0,
    "tencent.sig_lifetime": 86400, "tencent.renew_fraction": 0.25,
    "clock.default_spread": 0.5, "clock.drift": 1e-4, "clock.cache_seconds": 0.5,
    "clock.redis_refresh": 5.0, "clock.redis_step": 0.05, "clock.redis_warn": 0.25,
    "clock.redis_quick": 0.25, "clock.redis_warn_every": 600.0,
    "clock.redis_max_rtt": 0.02, "clock.redis_keep_quick": 60.0, "clock.redis_record_ttl": 3600.0,
    "ingest.outage_retry": 60.0, "ingest.stuck": 10.0, "ingest.check_in": 0.25,
    "ingest.check_in_margin": 0.05, "ingest.consumer_dead_after": 30.0,
    "drain.threshold": 8, "drain.batch": 500, "drain.min_batch": 16, "drain.pause": 0.02,
    "drain.max_slots": 4, "drain.slot_lease": 30.0, "drain.claim_lease": 10.0,
    "drain.run_seconds": 5.0,
    "battles.keep_after_end": 86400, "battles.hold_seconds": 60,
    "battles.outside_dedup": 3600, "battles.final_grace": 10.0,
    "battles.resolve_min_delay": 5.0, "battles.resolve_max_delay": 60.0,
    "battles.give_up_min_duration": 60.0, "battles.give_up_grace": 60.0,
    "flush.max_rounds": 2, "flush.lock_wait": 0.3, "flush.slot_wait": 0.5,
    "flush.retry_soon": 0.2, "flush.refused_retry": 5.0, "flush.start_skew": 5.0,
    "flush.landing_window": 6.0, "flush.after_error": 1.0, "flush.near_end_after": 0.3,
    "flush.read_back_retry": 5.0, "flush.give_up_after_end": 600.0,
    "endgame.lock_ttl_ms": 800,
    "endgame.end_margin": 0.05, "endgame.near_end": 8.0, "endgame.near_end_read": 1.5,
    "endgame.settle_lead": 0.6, "endgame.near_end_read_min": 0.5,
    "endgame.final_lead": 0.35, "endgame.final_window": 1.5, "endgame.poll": 0.02,
    "endgame.plan_every": 0.25, "endgame.horizon": 1.0, "endgame.dedicated_ttl_ms": 2000,
    "endgame.coalesce": 0.03, "endgame.decisive": 0.8, "endgame.threads": 16,
    "endgame.round_max": 200,
    "reconcile.safety": 1.0, "reconcile.clock_margin": 0.5,
    "reconcile.final_window": 12.0, "reconcile.last_read_lead": 0.5,
    "reconcile.yield_reserve": 10, "reconcile.typical_lag": 0.6,
    "reconcile.pair_gap": 1.0, "reconcile.slot_wait": 0.5, "reconcile.judge_delay": 3.5,
    "reconcile.read_lag": 5.0, "reconcile.lock_ttl_ms": 2_000, "reconcile.rebase_settle": 2.0,
    "audit.interval": 30.0, "audit.after_ambiguity": 10.0, "audit.end_lead": 3.0,
    "audit.retry": 0.5, "audit.slot_wait": 0.5,
    "tick.standby_after": 2.0, "tick.standby_poll": 0.1,
    "tick.max_dispatch": 2000, "tick.safety_sweep": 5.0, "tick.batch": 20, "tick.threads": 8,
    "tick.max_span": 1.0, "tick.plan_from": 2.0, "tick.round_ttl_ms": 5000,
    "tick.round_read": 1.0,
    "control.task_expires": 30, "control.threads": 8, "control.restart_delay": (1.0, 30.0),
    "control.stop_grace": 20.0,
    "celery.visibility_timeout": 180, "celery.health_check_interval": 10,
    "celery.soft_time_limit": 100, "celery.time_limit": 120, "celery.tick_expires": 5,
    "celery.beat_max_loop_interval": 1,
}


def _get(path: str, t: Timers = TIMERS) -> object:
    concern, name = path.split(".")
    return getattr(getattr(t, concern), name)


def _concerns() -> dict[str, type]:
    """Timers' field name → its concern's dataclass."""
    return {f.name: type(getattr(TIMERS, f.name)) for f in dataclasses.fields(Timers)}


@pytest.mark.parametrize(("path", "value"), sorted(MEASURED.items()))
def test_the_defaults_are_the_measured_values(path, value):
    got = _get(path)
    assert got == value and type(got) is type(value), (path, got)


def test_the_table_covers_every_field():
    every = {f"{c}.{f.name}" for c, cls in _concerns().items() for f in dataclasses.fields(cls)}
    assert every <= set(MEASURED), sorted(every - set(MEASURED))


def test_every_concern_is_a_frozen_dataclass_held_by_timers():
    classes = {obj for obj in vars(timers).values()
               if isinstance(obj, type) and dataclasses.is_dataclass(obj)}
    assert classes == {Timers, *_concerns().values()}
    for cls in classes:
        assert cls.__dataclass_params__.frozen, cls  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        TIMERS.flush.lock_wait = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        TIMERS.flush = TIMERS.flush  # type: ignore[misc]


def test_every_field_and_property_is_documented():
    tree = ast.parse(SOURCE.read_text())
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    assert classes
    for cls in classes:
        assert ast.get_docstring(cls), cls.name
        if cls.name == "Timers":  # its fields are the concerns, each documented by its class
            continue
        body = cls.body
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign):
                doc = body[i + 1] if i + 1 < len(body) else None
                assert (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                        and isinstance(doc.value.value, str) and doc.value.value.strip()), \
                    f"{cls.name}.{ast.unparse(node.target)} has no docstring"
            elif isinstance(node, ast.FunctionDef):
                assert ast.get_docstring(node), f"{cls.name}.{node.name} has no docstring"


#: The orderings the code relies on (the field docstrings in timers.py say why).
ORDERINGS: list[tuple[str, Callable[[Timers], bool]]] = [
    ("the end game's final window lies within the near-end stretch",
     lambda t: t.endgame.final_window < t.endgame.near_end),
    ("the last absolute write goes within the final window",
     lambda t: t.endgame.final_lead < t.endgame.final_window),
    ("an audit is done before the end game needs the battle's lock",
     lambda t: t.audit.end_lead > t.endgame.final_window),
    ("... leaving it a read and a write of near_end_read each",
     lambda t: t.audit.end_lead >= 2 * t.endgame.near_end_read),
    ("in the last seconds a wait ends in time for a read-back and an overwrite after it",
     lambda t: t.endgame.settle_lead > t.flush.near_end_after + t.endgame.final_lead / 2),
    ("... yet the shortest wait is no longer than the near-end one",
     lambda t: 0 < t.endgame.near_end_read_min <= t.endgame.near_end_read),
    ("near the end a call under a lock waits less than the client's read timeout",
     lambda t: t.endgame.near_end_read < t.tencent.read),
    ("a batch whose sender died is judged only after the client's read timeout",
     lambda t: t.flush.landing_window > t.tencent.read),
    ("a settled ambiguity is audited after a late write has landed or expired",
     lambda t: t.audit.after_ambiguity > t.tencent.read),
    ("near the end a request is judged sooner after it ended",
     lambda t: t.flush.near_end_after < t.flush.after_error),
    ("a lock outlives the longest wait under it (one answer; near the end a read and a write)",
     lambda t: t.state.lock_ttl_ms / 1000 > max(t.tencent.read, 2 * t.endgame.near_end_read)),
    ("a flush waits for a busy lock less than a heartbeat period",
     lambda t: t.flush.lock_wait < t.state.lock_ttl_ms / 3000),
    ("the end-game runner looks for a dedicated process well within its key's ttl",
     lambda t: t.endgame.plan_every < t.endgame.dedicated_ttl_ms / 4000),
    ("the end game plans every few rounds, not every round",
     lambda t: t.endgame.poll < t.endgame.plan_every),
    ("reconcile's last passes come once the read before can be judged (the default band)",
     lambda t: t.reconcile.judge_delay >= DEFAULT_BAND.late + t.reconcile.typical_lag / 2),
    ("reads stop only when the watermark lags past its usual lag",
     lambda t: t.reconcile.typical_lag < t.reconcile.read_lag),
    ("an ended battle's batch is given up only well past every window it settles in after the end",
     lambda t: t.flush.give_up_after_end >= 10 * max(
         t.flush.landing_window, t.audit.after_ambiguity, t.battles.final_grace,
         t.flush.read_back_retry)),
    ("unstarted battles are asked about ever less often, up to a cap",
     lambda t: t.battles.resolve_min_delay <= t.battles.resolve_max_delay),
    ("a control worker's restart delay doubles up to its cap",
     lambda t: 0 < t.control.restart_delay[0] <= t.control.restart_delay[1]),
    ("a drain's slot outlives its run", lambda t: t.drain.slot_lease > t.drain.run_seconds),
    ("a drain goes on with claims smaller than a full one",
     lambda t: 0 < t.drain.min_batch <= t.drain.batch),
    ("an ingest's outage retry, its last attempt (~10 s) and a drain's run fit the soft limit",
     lambda t: t.ingest.outage_retry + 10 + t.drain.run_seconds <= t.celery.soft_time_limit),
    ("soft < hard time limit < visibility timeout",
     lambda t: t.celery.soft_time_limit < t.celery.time_limit < t.celery.visibility_timeout),
    ("control tasks and drains expire, stuck ingest returns, before kombu restores messages",
     lambda t: max(t.control.task_expires, t.drain.slot_lease, t.ingest.stuck)
     < t.celery.visibility_timeout),
    ("the limiter keeps headroom", lambda t: 0 < t.state.headroom <= 1),
    ("a UserSig is renewed before it expires", lambda t: 0 < t.tencent.renew_fraction < 1),
]


@pytest.mark.parametrize(("why", "holds"), ORDERINGS, ids=[w for w, _ in ORDERINGS])
def test_orderings_hold(why, holds):
    assert holds(TIMERS), why


def test_an_ordering_check_can_fail():
    swapped = dataclasses.replace(TIMERS, endgame=dataclasses.replace(
        TIMERS.endgame, final_window=TIMERS.endgame.near_end + 1))
    assert not ORDERINGS[0][1](swapped)


# --- the numbers live in timers.py only -------------------------------------------------------

#: Module-level numbers that are limits, metric bounds or protocol constants, not timers.
NOT_TIMERS = {
    "MAX_DEAD_BODY", "MAX_DEAD_LETTERS", "MAX_ID", "MAX_VALUE", "MAX_RECEIVERS", "MAX_ROOMS",
    "MAX_OBSERVATIONS", "MAX_SCORE", "SIG_EXPIRED", "BATTLE_NOT_RUNNING", "INVALID_PARAMETER",
    "RATE_LIMITED", "SENTINEL_PORT", "ADMITTED", "BUCKETS", "SAMPLES",
}
#: Modules whose constants read TIMERS (beside the engine and tasks/).
DOORS = [ROOT / "worker" / "doors" / name for name in ("control_pool.py", "celeryconfig.py")]


def _numeric(node: ast.expr) -> bool:
    """A number written in place: 8, 0.5, -1, 24 * 3600, (1.0, 30.0)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, int | float) and not isinstance(node.value, bool)
    if isinstance(node, ast.UnaryOp):
        return _numeric(node.operand)
    if isinstance(node, ast.BinOp):
        return _numeric(node.left) and _numeric(node.right)
    if isinstance(node, ast.Tuple):
        return bool(node.elts) and all(_numeric(e) for e in node.elts)
    return False


def _sources() -> list[Path]:
    engine = sorted((ROOT / "worker" / "engine").rglob("*.py"))
    return [p for p in engine if p != SOURCE] + sorted((ROOT / "tasks").glob("*.py")) + DOORS


def test_no_module_writes_a_timer_of_its_own():
    found = []
    for path in _sources():
        for node in ast.parse(path.read_text()).body:
            targets = (node.targets if isinstance(node, ast.Assign)
                       else [node.target] if isinstance(node, ast.AnnAssign) else [])
            value = getattr(node, "value", None)
            for target in targets:
                if (isinstance(target, ast.Name) and target.id.isupper() and value is not None
                        and target.id not in NOT_TIMERS and _numeric(value)):
                    found.append(f"{path.relative_to(ROOT)}: {target.id}")
    assert not found, f"timers outside worker/engine/timers.py: {found}"


def test_every_timers_reference_names_a_field():
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                    and isinstance(node.value.value, ast.Name) and node.value.value.id == "TIMERS"):
                path_name = f"{node.value.attr}.{node.attr}"
                assert hasattr(TIMERS, node.value.attr) and hasattr(
                    getattr(TIMERS, node.value.attr), node.attr), f"{path}: TIMERS.{path_name}"
