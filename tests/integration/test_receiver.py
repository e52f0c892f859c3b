"""The webhook receiver over real HTTP: checks, limits, deadlines, broker outages, routes."""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
import redis
from celery import Celery
from kombu.exceptions import OperationalError

from scorer_local.stack import RedisServer, free_port
from tests.conftest import ROOT, SDKAPPID
from tests.helpers import wait_for
from worker.doors.receiver.broker import CeleryBroker
from worker.doors.receiver.serve import Limits, Receiver, expected_sign

pytestmark = pytest.mark.timeout(60)

TOKEN = "callback-token-0123"
GIFT = "Live.CallbackBeforeSendGift"
FAST = Limits(read_timeout=1.0, keep_alive=1.0, limit_concurrency=8, enqueue_timeout=2.0,
              ready_timeout=1.0, shutdown_timeout=1.0)


class Sink:
    """An injectable enqueue that records (body, event_id)."""

    def __init__(self) -> None:
        self.got: list[tuple[dict, str | None]] = []

    def __call__(self, body: dict, event_id: str | None) -> None:
        self.got.append((body, event_id))


@contextmanager
def serving(enqueue=None, token: str | None = TOKEN, limits: Limits = FAST, **kw):
    rec = Receiver(SDKAPPID, token, enqueue, limits=limits, **kw).start()
    try:
        yield rec
    finally:
        rec.stop()


def signed(token: str | None = TOKEN, **extra) -> dict:
    """URL parameters of a genuine Tencent callback."""
    now = str(int(time.time()))
    params = {"SdkAppid": SDKAPPID, "CallbackCommand": GIFT, **extra}
    if token:
        params.update(RequestTime=now, Sign=expected_sign(token, now))
    return params


def closed_port() -> int:
    """A loopback port nobody listens on."""
    return free_port()


def address(rec: Receiver) -> tuple[str, int]:
    host, port = rec.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def request_line(path: str = "/cb", token: str | None = None) -> bytes:
    query = str(httpx.QueryParams(signed(token)))
    return f"POST {path}?{query} HTTP/1.1\r\nHost: x\r\n".encode()


def read_answer(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or `limit` s), and when it closed."""
    sock.settimeout(limit)
    t0, data = time.monotonic(), b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data, time.monotonic() - t0


def raw(rec: Receiver, data: bytes, limit: float = 5.0) -> bytes:
    with socket.create_connection(address(rec), timeout=limit) as sock:
        sock.sendall(data)
        return read_answer(sock, limit)[0]


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def test_accepts_and_passes_the_event_id_from_header_or_query():
    sink = Sink()
    with serving(sink) as rec, httpx.Client(timeout=5) as http:
        r = http.post(rec.url + "/cb", params=signed(), json={"a": 1},
                      headers={"X-Event-Id": "ledger-1"})
        assert r.status_code == 200 and r.json() == {"ActionStatus": "OK", "ErrorCode": 0,
                                                     "ErrorInfo": ""}
        assert http.post(rec.url, params=signed(EventId="ledger 2/é"),
                         json={"a": 2}).status_code == 200
        assert http.post(rec.url, params=signed(), json={"a": 3,
                         "CallbackCommand": "X"}).status_code == 200
    assert sink.got == [({"a": 1, "CallbackCommand": GIFT}, "ledger-1"),
                        ({"a": 2, "CallbackCommand": GIFT}, "ledger 2/é"),
                        ({"a": 3, "CallbackCommand": "X"}, None)]
    assert rec.accepted == 3


@pytest.mark.parametrize("params,headers", [
    ({"EventId": "x" * 129}, {}),
    ({"EventId": "a\nb"}, {}),
    ({"EventId": ""}, {}),
    ({}, {"X-Event-Id": "x" * 129}),
    ({"EventId": "one"}, {"X-Event-Id": "two"}),
])
def test_a_bad_event_id_is_400(params, headers):
    sink = Sink()
    with serving(sink) as rec:
        r = httpx.post(rec.url, params=signed(**params), json={}, headers=headers, timeout=5)
    assert r.status_code == 400 and r.json()["ActionStatus"] == "FAIL"
    assert sink.got == []


def test_sdkappid_and_signature_are_checked_without_echoing_the_token():
    sink = Sink()
    old = str(int(time.time()) - 120)
    cases = [({**signed(), "SdkAppid": 1}, 403),
             ({**signed(), "Sign": "0" * 64}, 401),
             ({**signed(), "RequestTime": old, "Sign": expected_sign(TOKEN, old)}, 401),
             ({"SdkAppid": SDKAPPID}, 401),
             # Non-ASCII: a 401, not a 500 with a traceback (compare_digest and int() raise)
             ({**signed(), "Sign": "\u00e9" * 64}, 401),
             ({**signed(), "RequestTime": "\u00b2"}, 401)]
    with serving(sink) as rec, httpx.Client(timeout=5) as http:
        for params, status in cases:
            r = http.post(rec.url, params=params, json={})
            assert r.status_code == status, params
            assert r.json()["ErrorCode"] == 1 and TOKEN not in r.text
    assert sink.got == [] and rec.rejected == len(cases)


def test_an_honest_large_content_length_is_413_before_the_body():
    with serving(Sink()) as rec:
        r = httpx.post(rec.url, params=signed(), content=b"{" + b" " * 70_000 + b"}",
                       timeout=5)
        assert r.status_code == 413
        # Refused on the header alone: no need to send (or wait for) the 100 KB.
        answer = raw(rec, request_line(token=TOKEN)
                     + b"Content-Length: 100000\r\n\r\n{", limit=3)
        assert status_of(answer) == 413 and b"connection: close" in answer.lower()


def _chunked(total: int, chunk: int = 8192):
    sent = 0
    while sent < total:
        yield b" " * chunk
        sent += chunk


def test_a_chunked_body_is_cut_at_64_kib_whatever_the_length_says():
    sink = Sink()
    with serving(sink) as rec:
        r = httpx.post(rec.url, params=signed(), content=_chunked(200_000), timeout=5)
        assert r.status_code == 413
        body = b"".join(b"2000\r\n" + b" " * 0x2000 + b"\r\n" for _ in range(12)) + b"0\r\n\r\n"
        lying = raw(rec, request_line(token=TOKEN) + b"Content-Length: 10\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n" + body, limit=3)
        assert status_of(lying) == 413  # chunked wins over the length (RFC 9112 6.3)
    assert sink.got == []


@pytest.mark.parametrize("length", [b"-1", b"abc", b"1e3", b"10, 20"])
def test_a_bad_content_length_is_answered_400_not_a_hang(length):
    with serving(Sink()) as rec:
        t0 = time.monotonic()
        answer = raw(rec, request_line(token=TOKEN) + b"Content-Length: " + length
                     + b"\r\n\r\n{}", limit=3)
    assert status_of(answer) == 400
    assert time.monotonic() - t0 < 2


def test_not_json_or_not_an_object_is_400():
    with serving(Sink()) as rec, httpx.Client(timeout=5) as http:
        for content in (b"{", b"[1]", b"\xff\xfe", b"[" * 5000, b""):
            assert http.post(rec.url, params=signed(), content=content).status_code == 400


def test_a_client_trickling_its_body_gets_408_at_the_deadline():
    with serving(Sink()) as rec, socket.create_connection(address(rec), timeout=5) as sock:
        t0 = time.monotonic()
        sock.sendall(request_line(token=TOKEN) + b"Content-Length: 1000\r\n\r\n{")
        for _ in range(20):  # one byte every 0.1 s: 2 s of trickle, deadline 1 s
            try:
                sock.sendall(b" ")
            except OSError:
                break
            time.sleep(0.1)
        answer, _ = read_answer(sock, 3)
        elapsed = time.monotonic() - t0
    assert status_of(answer) == 408 and b"connection: close" in answer.lower()
    assert elapsed < FAST.read_timeout + 1.5


def test_a_client_trickling_its_headers_gets_408_at_the_deadline():
    with serving(Sink()) as rec:
        with socket.create_connection(address(rec), timeout=5) as sock:
            t0 = time.monotonic()
            sock.sendall(request_line(token=TOKEN))
            for i in range(20):
                try:
                    sock.sendall(f"X-Slow-{i}: y\r\n".encode())
                except OSError:
                    break
                time.sleep(0.1)
            answer, _ = read_answer(sock, 3)
            elapsed = time.monotonic() - t0
        assert status_of(answer) == 408
        assert elapsed < FAST.read_timeout + 1.5
        # A connection that sends nothing at all is closed at the deadline too.
        with socket.create_connection(address(rec), timeout=5) as idle:
            answer, waited = read_answer(idle, 4)
        assert waited < FAST.read_timeout + 1.5


def in_flight(rec: Receiver) -> float:
    return rec.metrics.registry.get_sample_value("scorer_receiver_in_flight")


def slow_request(rec: Receiver) -> socket.socket:
    """A connection whose request is in and whose body never finishes."""
    s = socket.create_connection(address(rec), timeout=5)
    s.sendall(request_line(token=TOKEN) + b"Content-Length: 100\r\n\r\n{")
    return s


def test_connections_beyond_the_limit_get_503_not_threads():
    limits = Limits(read_timeout=5.0, limit_concurrency=4, shutdown_timeout=1.0)
    sink = Sink()
    with serving(sink, limits=limits) as rec:
        slow: list[socket.socket] = []
        try:
            threads = threading.active_count()
            for i in range(limits.limit_concurrency):  # the limit, all held open
                slow.append(slow_request(rec))
                wait_for(lambda n=i + 1: in_flight(rec) >= n, 3, interval=0.01,
                         what=f"{i + 1} requests in flight")
            assert in_flight(rec) == limits.limit_concurrency
            t0 = time.monotonic()
            for _ in range(3):  # beyond it: answered at once, not queued
                extra = slow_request(rec)
                answer, _ = read_answer(extra, 2)
                extra.close()
                assert status_of(answer) == 503 and b'"ActionStatus": "FAIL"' in answer
            r = httpx.post(rec.url, params=signed(), json={}, timeout=5)
            assert r.status_code == 503 and time.monotonic() - t0 < 2
            assert httpx.get(rec.url + "/healthz", timeout=5).status_code == 200
            assert threading.active_count() <= threads  # asyncio: no thread per connection
            assert in_flight(rec) == limits.limit_concurrency  # the held ones still wait
        finally:
            for s in slow:
                s.close()
        wait_for(lambda: not in_flight(rec), 3, interval=0.01, what="held requests gone")
        assert httpx.post(rec.url, params=signed(), json={}, timeout=5).status_code == 200
        text = httpx.get(rec.url + "/metrics", timeout=5).text
    assert 'scorer_receiver_rejected_total{reason="overload"} 4.0' in text
    assert len(sink.got) == 1


def test_enqueue_failure_is_503_and_nothing_is_claimed(caplog):
    def down(body, event_id):
        raise OperationalError("Error 111 connecting to redis://:hunter2@127.0.0.1:1")

    with caplog.at_level(logging.INFO, logger="scorer.receiver"), serving(down) as rec:
        t0 = time.monotonic()
        r = httpx.post(rec.url, params=signed(), json={"a": 1}, timeout=5)
        assert r.status_code == 503 and r.json()["ActionStatus"] == "FAIL"
        assert time.monotonic() - t0 < 2
        assert rec.accepted == 0
        assert 'scorer_receiver_rejected_total{reason="broker"} 1.0' in \
            httpx.get(rec.url + "/metrics", timeout=5).text
    assert "OperationalError" in caplog.text and "hunter2" not in caplog.text


def test_a_hung_enqueue_is_503_at_the_enqueue_timeout():
    release = threading.Event()
    with serving(lambda body, event_id: release.wait(10)) as rec:
        t0 = time.monotonic()
        r = httpx.post(rec.url, params=signed(), json={}, timeout=5)
        release.set()
    assert r.status_code == 503
    assert FAST.enqueue_timeout - 0.1 < time.monotonic() - t0 < FAST.enqueue_timeout + 1


def test_a_real_celery_app_with_its_broker_down_answers_503_fast():
    broker = CeleryBroker(Celery("t", broker=f"redis://127.0.0.1:{closed_port()}/0"),
                          queue="celery", timeout=1.0)
    with serving(token=None, broker=broker) as rec, httpx.Client(timeout=10) as http:
        t0 = time.monotonic()
        r = http.post(rec.url, params=signed(None), json={"a": 1})
        assert r.status_code == 503 and time.monotonic() - t0 < 4
        t0 = time.monotonic()
        assert http.get(rec.url + "/readyz").status_code == 503
        assert time.monotonic() - t0 < 3
        assert http.get(rec.url + "/healthz").json() == {"status": "ok"}


def test_a_real_broker_gets_the_body_and_event_id_and_readyz_is_200(redis_url):
    broker = CeleryBroker(Celery("t", broker=redis_url), queue="scorer-test")
    with serving(token=None, broker=broker) as rec, httpx.Client(timeout=10) as http:
        assert http.get(rec.url + "/readyz").json() == {"status": "ready"}
        r = http.post(rec.url, params=signed(None), json={"BattleId": "b1", "secret": "s3"},
                      headers={"X-Event-Id": "ledger-9"})
        assert r.status_code == 200
    r = redis.Redis.from_url(redis_url)
    messages = r.lrange("scorer-test", 0, -1)
    r.close()
    assert len(messages) == 1
    msg = json.loads(messages[0])
    assert msg["headers"]["task"] == "scorer.webhook"
    assert "s3" not in msg["headers"]["kwargsrepr"]  # Flower shows ids, not the body
    _args, kwargs, _embed = json.loads(base64.b64decode(msg["body"]))
    assert kwargs == {"body": {"BattleId": "b1", "secret": "s3",
                               "CallbackCommand": GIFT}, "event_id": "ledger-9"}


def test_a_broker_outage_is_503_and_the_receiver_recovers_after_it():
    server = RedisServer().start()
    try:
        broker = CeleryBroker(Celery("t", broker=server.url), queue="celery", timeout=1.0)
        with serving(token=None, broker=broker) as rec, httpx.Client(timeout=10) as http:

            def post() -> httpx.Response:
                return http.post(rec.url, params=signed(None), json={})

            assert post().status_code == 200
            server.kill()
            t0 = time.monotonic()
            assert post().status_code == 503
            assert http.get(rec.url + "/readyz").status_code == 503
            assert time.monotonic() - t0 < 4
            server.start()
            assert http.get(rec.url + "/readyz").status_code == 200
            # The pooled connection died with the server: replaced, not answered 503.
            assert post().status_code == 200
        r = redis.Redis.from_url(server.url)
        assert r.llen("celery") == 1  # the one sent after the restart (no AOF: data lost)
        r.close()
    finally:
        server.cleanup()


def test_routes_health_metrics_and_methods():
    with serving(Sink()) as rec, httpx.Client(timeout=5) as http:
        assert http.get(rec.url + "/healthz").json() == {"status": "ok"}
        assert http.get(rec.url + "/readyz").status_code == 200  # injected enqueue: ready
        http.post(rec.url + "/cb", params=signed(), json={})
        http.post(rec.url + "/cb", params={"SdkAppid": 1}, json={})
        http.post(rec.url, params=signed(), content=b"x" * 70_000)
        assert http.get(rec.url + "/").status_code == 405
        assert http.post(rec.url + "/healthz").status_code == 405
        text = http.get(rec.url + "/metrics").text
    for line in ('scorer_receiver_requests_total{route="callback",status="200"} 1.0',
                 'scorer_receiver_requests_total{route="callback",status="403"} 1.0',
                 'scorer_receiver_requests_total{route="healthz",status="200"} 1.0',
                 'scorer_receiver_rejected_total{reason="sdkappid"} 1.0',
                 'scorer_receiver_rejected_total{reason="too_large"} 1.0',
                 "scorer_receiver_enqueue_seconds_count 1.0",
                 "scorer_receiver_in_flight 1.0"):  # the /metrics request itself
        assert line in text, line


def test_each_receiver_has_its_own_registry():
    with serving(Sink()) as a, serving(Sink()) as b:
        httpx.post(a.url, params=signed(), json={}, timeout=5)
        assert "scorer_receiver_enqueue_seconds_count 1.0" in \
            httpx.get(a.url + "/metrics", timeout=5).text
        assert "scorer_receiver_enqueue_seconds_count 0.0" in \
            httpx.get(b.url + "/metrics", timeout=5).text


def test_the_access_log_has_no_query_no_sign_no_body(caplog):
    params = signed(EventId="ledger-5")
    with caplog.at_level(logging.INFO, logger="scorer.receiver"):
        with serving(Sink()) as rec, httpx.Client(timeout=5) as http:
            http.post(rec.url + "/tencent/cb", params=params, json={"Secret": "body-value"})
            http.post(rec.url + "/tencent/cb", params={**params, "Sign": "f" * 64}, json={})
        lines = [r.getMessage() for r in caplog.records if r.name == "scorer.receiver"]
    assert any(line.startswith("POST /tencent/cb 200 ") and "event_id=yes" in line
               for line in lines), lines
    assert any(line.startswith("POST /tencent/cb 401 ") for line in lines), lines
    text = "\n".join(lines)
    for secret in (params["Sign"], "f" * 64, "?", "RequestTime", "body-value", TOKEN,
                   "ledger-5"):
        assert secret not in text


def test_stop_lets_a_request_in_flight_finish():
    entered = threading.Event()

    def slow_enqueue(body, event_id):
        entered.set()
        time.sleep(0.5)

    rec = Receiver(SDKAPPID, TOKEN, slow_enqueue, limits=FAST).start()
    result: dict = {}
    client = threading.Thread(target=lambda: result.update(
        r=httpx.post(rec.url, params=signed(), json={}, timeout=5)))
    client.start()
    assert entered.wait(5)
    t0 = time.monotonic()
    rec.stop()  # what SIGTERM does in `battle-scorer receive`
    client.join(5)
    assert result["r"].status_code == 200 and rec.accepted == 1
    assert time.monotonic() - t0 < 3
    with pytest.raises(httpx.ConnectError):
        httpx.get(rec.url + "/healthz", timeout=2)


def test_importing_the_receiver_needs_no_uvicorn():
    code = ("import sys; sys.modules['uvicorn'] = None\n"
            "from worker.doors.receiver.serve import check, expected_sign, Rejected, Receiver\n"
            "assert check({'SdkAppid': '7'}, 7, None, 0) is None\n"
            "try:\n    Receiver(7, None, lambda b, e: None).start()\n"
            "except ImportError:\n    print('needs uvicorn')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "needs uvicorn"


def test_battle_scorer_receive_serves_and_stops_on_sigterm(redis_url):
    port = closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    # No SCORER_SECRET_KEY: the receiver never signs a Tencent call.
    env.update(SCORER_SDKAPPID=str(SDKAPPID), SCORER_REDIS_URL=redis_url,
               SCORER_CALLBACK_TOKEN=TOKEN, SCORER_QUEUE="receiver-test")
    proc = subprocess.Popen([sys.executable, "-m", "worker.doors.cli", "receive", "--port",
                             str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert "receiving Tencent callbacks on" in proc.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/readyz", timeout=5).status_code == 200
        assert httpx.post(url + "/cb", params=signed(), json={},
                          timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        r = redis.Redis.from_url(redis_url)
        assert r.llen("receiver-test") == 1  # SCORER_QUEUE
        r.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    err = proc.stderr.read()
    assert "POST /cb 200" in err and TOKEN not in err and "Sign" not in err
