"""Monitoring: the metrics process scraped for real, the names alerts and dashboard use, health."""

from __future__ import annotations

import contextlib
import json
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis

from scorer_local.stack import free_port
from tests.conftest import ROOT, worker_env
from worker.doors import metrics, signals
from worker.doors.metrics import PRIORITY_SEP, record_beat_publish
from worker.doors.metrics_http import connect
from worker.engine.state import keys
from worker.engine.state.counters import CallTally

MONITORING = Path(ROOT) / "monitoring"
ALERTS = MONITORING / "prometheus" / "alerts.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "battle-scorer.json"
#: Names the rules and panels may use that the scorer's endpoint does not expose: Prometheus's
#: own `up` (and the receiver's metrics, none of which a rule or panel uses today).
NOT_SCORER = {"up"}
REQUIRED_ALERTS = {"ScorerMetricsDown", "TickStale", "BeatStale", "QueueBacklog",
                   "OldestPendingHigh", "DeadLettersGrowing", "UnappliedGrowing",
                   "AuditCorrections", "TencentErrors", "RateLimitWaits"}


def metrics_env(settings) -> dict[str, str]:
    """The metrics service's environment: Redis and the queue, never the Tencent key."""
    env = worker_env(settings)
    for name in ("SCORER_SDKAPPID", "SCORER_SECRET_KEY", "SCORER_API_URL"):
        env.pop(name)
    return env


def run_cli(env, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.doors.cli", *args], check=False, cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def metrics_process(env):
    """`battle-scorer metrics` on a free port; yields its base URL, then SIGTERMs it and
    checks it exits 0."""
    proc = subprocess.Popen([sys.executable, "-m", "worker.doors.cli", "metrics", "--host",
                             "127.0.0.1", "--port", "0"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        m = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
        assert m, f"metrics did not start: {line!r} {proc.stderr.read() if proc.poll() else ''}"
        yield f"http://127.0.0.1:{m.group(1)}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """Exposition text → {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples, name: str, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]


def populate(r: redis.Redis) -> float:
    """Queues, due battles, counters, a tick and a beat publish; returns `now`."""
    now = time.time()
    r.rpush("celery", "m1", "m2", "m3")
    r.rpush(f"celery{PRIORITY_SEP}3", "p1", "p2")  # a priority sub-queue of the input queue
    r.rpush(keys.DRAIN_QUEUE, "d1")
    r.rpush(f"{keys.CONTROL_QUEUE}{PRIORITY_SEP}9", "c1")
    # b-due holds value, 7 s overdue; b-idle is older but holds nothing (not "pending").
    r.zadd(keys.ACTIVE, {"b-due": now + 60})
    r.hset(keys.BattleKeys("b-due").pending, "room1", 5)
    r.zadd(keys.FLUSH_DUE, {"b-due": now - 7, "b-idle": now - 30})
    r.hset(keys.BattleKeys("b-end").inflight, "state", "sending")
    r.zadd(keys.ENDGAME_DUE, {"b-end": now - 2})
    r.hset(keys.STATS, mapping={"audit_corrections": 2, "reconcile_corrections": 3,
                                "dead_lettered": 1, "unapplied": 4})
    r.rpush(keys.DEAD_LETTERS, json.dumps({"reason": "test"}))
    # Rooms without a reconcile baseline: one 30 s after its start (counted), one 2 s after.
    r.zadd(keys.RECON_UNBASED, {"b-old|r1": now - 30, "b-new|r1": now - 2})
    calls = CallTally(r)
    calls.add("set_battle_score", "success", 0.03, waited=0.2)
    calls.add("set_battle_score", "retryable", 0.3)
    calls.write()
    r.set(keys.TICK_AT, now - 4)
    record_beat_publish(r, now - 1)
    # A host 1.2 s ahead of Redis's clock, as its RedisClock records it (offset: Redis - host).
    r.hset(keys.CLOCK_HOSTS, "host-ahead", f"-1.2,{now}")
    return now


def test_metrics_process_reports_the_cluster(rt, settings):
    populate(rt.redis)
    with metrics_process(metrics_env(settings)) as url:
        text = httpx.get(f"{url}/metrics", timeout=10).text
        health = httpx.get(f"{url}/healthz", timeout=10)
        om = httpx.get(f"{url}/metrics", timeout=10,
                       headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert health.status_code == 200 and health.text == "ok\n"
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.endswith("# EOF\n") and "scorer_queue_depth{" in om.text
    s = parse(text)
    assert value(s, "scorer_queue_depth", queue="celery", role="input") == 5
    assert value(s, "scorer_queue_depth", queue=keys.DRAIN_QUEUE, role="drain") == 1
    assert value(s, "scorer_queue_depth", queue=keys.CONTROL_QUEUE, role="control") == 1
    assert 6.5 <= value(s, "scorer_oldest_pending_seconds") < 20  # b-due, not b-idle
    assert value(s, "scorer_flush_lag_seconds") >= 29.5  # the existing gauge counts idle ones
    assert 3.5 <= value(s, "scorer_last_tick_age_seconds") < 20
    assert 0.5 <= value(s, "scorer_beat_last_publish_age_seconds") < 20
    assert value(s, "scorer_events_total", outcome="audit_corrections") == 2
    assert value(s, "scorer_events_total", outcome="reconcile_corrections") == 3
    assert value(s, "scorer_events_total", outcome="given_up") == 0  # present before any
    assert value(s, "scorer_dead_letters") == 1
    assert value(s, "scorer_reconcile_rooms_without_baseline") == 1
    assert value(s, "scorer_events_total", outcome="reconcile_heal_ms") == 0
    assert value(s, "scorer_pending_value") == 5
    assert value(s, "scorer_battles_active") == 1 and value(s, "scorer_battles_due") == 2
    assert value(s, "scorer_redis_up", redis="state") == 1
    assert value(s, "scorer_host_clock_offset_seconds", host="host-ahead") == 1.2
    assert value(s, "scorer_ratelimit_wait_seconds_total", api="set_battle_score") == 0.2
    assert value(s, "scorer_tencent_calls_total", api="set_battle_score",
                 outcome="retryable") == 1
    # Outcomes not seen yet are there as 0, so increase() counts the first refusal.
    assert value(s, "scorer_tencent_calls_total", api="set_battle_score", outcome="refused") == 0


def test_missing_state_and_dead_redis_never_fail_the_scrape(rt, settings):
    # In-process on an empty Redis: ages +Inf (never happened), counts and depths 0.
    s = {(x.name, frozenset(x.labels.items())): x.value
         for f in metrics.ScorerCollector(rt.redis).collect() for x in f.samples}
    assert value(s, "scorer_last_tick_age_seconds") == float("inf")
    assert value(s, "scorer_beat_last_publish_age_seconds") == float("inf")
    assert value(s, "scorer_oldest_pending_seconds") == 0
    assert value(s, "scorer_queue_depth", queue="celery", role="input") == 0
    env = metrics_env(settings)
    env["SCORER_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens
    with metrics_process(env) as url:
        scrape = httpx.get(f"{url}/metrics", timeout=20)
        health = httpx.get(f"{url}/healthz", timeout=20)
        assert run_cli(env, "health", "metrics", "--url", f"{url}/healthz").returncode == 1
    assert scrape.status_code == 200
    assert value(parse(scrape.text), "scorer_redis_up", redis="state") == 0
    assert health.status_code == 503 and "state Redis unavailable" in health.text
    assert "127.0.0.1" not in health.text  # never the URL (it may carry a password)


# -- The names the alerts and the dashboard use --------------------------------------------

_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
             "group_right", "bool", "offset", "inf", "nan"}


def promql_names(expr: str) -> set[str]:
    """The metric (sample) names a PromQL expression selects: strings, label matchers, range
    and grouping lists removed; an identifier followed by `(` is a function."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = _GROUPING.sub(" ", e)
    return {m.group(1) for m in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?", e)
            if not m.group(2) and m.group(1).lower() not in _KEYWORDS}


def alert_rules() -> list[dict[str, str]]:
    """alert, expr, runbook of each rule in alerts.yml (every expr is on one line there)."""
    rules, cur = [], None
    for line in ALERTS.read_text().splitlines():
        m = re.match(r"\s*-\s+alert:\s*(\S+)\s*$", line)
        if m:
            cur = {"alert": m.group(1)}
            rules.append(cur)
            continue
        m = re.match(r"\s*(expr|runbook):\s*(.*?)\s*$", line)
        if m and cur is not None:
            assert m.group(2) not in ("|", ">", "|-", ">-"), "keep expr and runbook on one line"
            cur[m.group(1)] = m.group(2).strip('"')
    return rules


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    out, panels = [], list(dash["panels"])
    while panels:
        p = panels.pop()
        panels += p.get("panels", [])
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "prometheus"
            out.append(t["expr"])
        if "targets" in p:
            assert p["datasource"]["uid"] == "prometheus"
    return out


def test_promql_names_parser():
    expr = ('histogram_quantile(0.99, sum by (api, le) (rate(a_bucket{x="y(z)"}[$__rate_in'
            'terval]))) / clamp_min(b_total offset 5m, 1e-9) > 0 or absent(up{job="j"})')
    assert promql_names(expr) == {"a_bucket", "b_total", "up"}


def test_alerts_and_dashboard_use_only_exposed_names(rt, settings):
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= REQUIRED_ALERTS
    for r in rules:
        assert r.get("expr") and len(r.get("runbook", "")) > 20, r["alert"]
    exprs = [r["expr"] for r in rules] + dashboard_exprs()
    used = set().union(*map(promql_names, exprs))
    assert {"scorer_queue_depth", "scorer_events_total", "up"} <= used  # the parser sees them
    populate(rt.redis)  # every family with at least one series (histogram: one API)
    with metrics_process(metrics_env(settings)) as url:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    exposed = {name for name, _ in parse(text)}
    assert not (used - NOT_SCORER) - exposed, "names the scrape does not have"


def test_prometheus_config_scrapes_metrics_and_loads_the_rules():
    text = (MONITORING / "prometheus" / "prometheus.yml").read_text()
    assert "/etc/prometheus/alerts.yml" in text
    assert '"metrics:9808"' in text and "job_name: battle-scorer" in text
    assert '"receiver:8080"' in text
    ds = (MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    assert "uid: prometheus" in ds.read_text() and "http://prometheus:9090" in ds.read_text()
    prov = MONITORING / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
    assert "/var/lib/grafana/dashboards" in prov.read_text()


# -- Health ---------------------------------------------------------------------------------

def test_health_beat(rt, settings):
    env = worker_env(settings)
    out = run_cli(env, "health", "beat")
    assert out.returncode == 1 and "no tick published" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    record_beat_publish(rt.redis)
    assert run_cli(env, "health", "beat").returncode == 0
    record_beat_publish(rt.redis, time.time() - 100)
    out = run_cli(env, "health", "beat", "--max-age", "30")
    assert out.returncode == 1 and "ago" in out.stderr


def test_health_metrics_and_worker(rt, settings):
    env = worker_env(settings)
    with metrics_process(env) as url:
        assert run_cli(env, "health", "metrics", "--url", f"{url}/healthz").returncode == 0
    out = run_cli(env, "health", "metrics", "--url", f"http://127.0.0.1:{free_port()}/healthz")
    assert out.returncode == 1 and out.stderr.startswith("metrics:")
    out = run_cli(env, "health", "worker", "--timeout", "0.5")  # no worker is running
    assert out.returncode == 1 and "did not answer" in out.stderr


def test_beat_hook_records_tick_publishes(rt, monkeypatch):
    from celery.signals import after_task_publish

    monkeypatch.setattr(signals, "_client", rt.redis)
    monkeypatch.setattr(signals, "_skip_until", 0.0)
    signals.record_tick_publish(sender="scorer.webhook", headers={"task": "scorer.webhook"})
    assert rt.redis.get(metrics.BEAT_PUBLISHED) is None  # only the tick counts
    signals.record_tick_publish(sender="scorer.tick", headers={"task": "scorer.tick"})
    assert metrics.beat_publish_age(rt.redis) < 5
    assert 0 < rt.redis.ttl(metrics.BEAT_PUBLISHED) <= metrics.BEAT_PUBLISHED_TTL
    rt.redis.delete(metrics.BEAT_PUBLISHED)
    signals._watch_tick_publishes()  # what beat_init does: the hook follows real publishes
    try:
        after_task_publish.send(sender="scorer.tick", body=((), {}, {}), headers={})
    finally:
        after_task_publish.disconnect(dispatch_uid="scorer.record_tick_publish")
    assert metrics.beat_publish_age(rt.redis) < 5
    # A Redis that does not answer: the hook neither raises nor retries every tick.
    dead = connect(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    monkeypatch.setattr(signals, "_client", dead)
    signals.record_tick_publish(sender="scorer.tick")
    assert signals._skip_until > time.time()
    assert not hasattr(signals, "_start_metrics")  # the exporter left the beat


def test_the_default_queue_is_watched_when_the_scorer_has_its_own():
    from worker.doors.metrics import queue_names

    assert "default" not in queue_names("celery")
    assert queue_names("scorer")["default"] == "celery"
