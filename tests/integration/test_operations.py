"""Operations: signed receiver, metrics, JSON logs with redaction, operator CLI."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import httpx
import pytest

from scorer_local.sandbox_control import SandboxControl
from tests.conftest import ROOT, SDKAPPID, SECRET, worker_env
from tests.helpers import gift_body, start_body
from worker.doors import logs, metrics, metrics_http
from worker.doors.receiver.serve import Receiver, Rejected, check, expected_sign
from worker.engine.flush.flusher import flush_battle
from worker.engine.ingest.gifts import handle


def test_tencent_sign_example():
    assert expected_sign("xxxxyyyy", "1669872112") == \
        "17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061"


def test_receiver_checks_app_sign_age_and_size():
    got = []
    rec = Receiver(SDKAPPID, "tok", lambda body, event_id: got.append(body)).start()
    try:
        now = str(int(time.time()))
        good = {"SdkAppid": SDKAPPID, "CallbackCommand": "Live.CallbackAfterStartBattle",
                "RequestTime": now, "Sign": expected_sign("tok", now)}
        r = httpx.post(rec.url, params=good, json={"BattleId": "b"})
        assert r.status_code == 200 and r.json()["ErrorCode"] == 0
        assert got == [{"BattleId": "b", "CallbackCommand": "Live.CallbackAfterStartBattle"}]
        for params, status in [({**good, "Sign": "0" * 64}, 401),
                               ({**good, "SdkAppid": 1}, 403),
                               ({**good, "RequestTime": str(int(now) - 120),
                                 "Sign": expected_sign("tok", str(int(now) - 120))}, 401)]:
            assert httpx.post(rec.url, params=params, json={}).status_code == status
        big = httpx.post(rec.url, params=good, content=b"{" + b" " * 70_000 + b"}")
        assert big.status_code == 413
        assert len(got) == 1
    finally:
        rec.stop()


def test_check_accepts_sdkappid_spellings():
    assert check({"SdkAppId": str(SDKAPPID), "WebhookCommand": "X"}, SDKAPPID, None, 0) == "X"
    with pytest.raises(Rejected):
        check({}, SDKAPPID, None, 0)


def test_metrics_report_events_calls_and_battles(rt, sandbox):
    ctl = SandboxControl(sandbox.url)
    bid = ctl.create_battle({"m1": "o1"}, 60_000, start=time.time() - 1)["BattleId"]
    handle(rt, [(start_body(bid, time.time() - 1, 60_000, {"m1": "o1"}), None),
                (gift_body("m1", "o1", 5), "m-1"), ({"bad": 1}, None)])
    flush_battle(rt, bid)
    rt.calls.close()  # the call metrics are written every half second: now
    server, _thread = metrics_http.start("127.0.0.1", 0, rt.redis)
    text = "\n".join(
        f"{s.name} {s.labels} {s.value}"
        for fam in metrics.ScorerCollector(rt.redis).collect() for s in fam.samples)
    assert "scorer_events_total {'outcome': 'ingested'} 1" in text
    assert "scorer_tencent_calls_total {'api': 'set_battle_score', 'outcome': 'success'} 1" \
        in text
    assert "scorer_battles_active {} 1" in text
    body = httpx.get(f"http://127.0.0.1:{server.server_address[1]}/metrics").text
    server.shutdown()
    assert 'scorer_tencent_latency_seconds_bucket{api="set_battle_score",le="+Inf"} 1.0' \
        in body
    assert bid not in body  # no per-battle series


def test_json_logs_carry_context_and_never_the_secret():
    handler = logging.StreamHandler()
    logs.configure([handler], "json", [SECRET])
    rec = logging.LogRecord("scorer.flush", logging.WARNING, __file__, 1,
                            "failed with key %s", (SECRET,), None)
    rec.battle_id, rec.request_id = "b-1", "req-9"
    for f in handler.filters:
        f.filter(rec)
    line = json.loads(handler.format(rec))
    assert line["battle_id"] == "b-1" and line["request_id"] == "req-9"
    assert SECRET not in json.dumps(line)


def run_cli(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.doors.cli", *args], cwd=ROOT,
                          env=worker_env(settings), capture_output=True, text=True, timeout=60)


def test_operator_cli(rt, settings, sandbox):
    ctl = SandboxControl(sandbox.url)
    bid = ctl.create_battle({"c1": "o1", "c2": "o2"}, 60_000, start=time.time() - 1)["BattleId"]
    handle(rt, [(start_body(bid, time.time() - 1, 60_000, {"c1": "o1", "c2": "o2"}), None),
                (gift_body("c1", "o1", 12), "c-1"), ({"CallbackCommand": 5}, "bad")])
    flush_battle(rt, bid)
    handle(rt, [(gift_body("c2", "o2", 3), "c-2")])
    out = run_cli(settings, "battles")
    assert out.returncode == 0 and bid in out.stdout and "confirmed=      12" in out.stdout
    assert "pending=3" in out.stdout
    one = json.loads(run_cli(settings, "battle", bid).stdout)
    assert one["tencent"] == {"c1": 12, "c2": 0} and one["flushes"][0]["outcome"] == "ok"
    dl = run_cli(settings, "dead-letters", "list").stdout.strip().splitlines()
    assert len(dl) == 1 and "CallbackCommand" in json.loads(dl[0])["reason"]
    assert json.loads(run_cli(settings, "dead-letters", "replay").stdout)["dead_lettered"] == 1
    probe = run_cli(settings, "check-config", "--probe")
    assert probe.returncode == 0 and "probe ok" in probe.stdout
    assert SECRET not in probe.stdout + probe.stderr


def test_probe_explains_a_wrong_key(settings):
    env = worker_env(settings)
    env["SCORER_SECRET_KEY"] = "wrong-key-value"
    p = subprocess.run([sys.executable, "-m", "worker.doors.cli", "check-config", "--probe"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "SCORER_SECRET_KEY" in p.stderr
    assert "wrong-key-value" not in p.stdout + p.stderr
