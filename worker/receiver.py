"""`battle-scorer receive`: a small signed-webhook endpoint that enqueues Tencent callbacks.

For teams whose webhook pipeline is not Python. It checks SdkAppid, and when a callback token
is set (SCORER_CALLBACK_TOKEN), Sign = sha256(Token + RequestTime) and a RequestTime within
60 s; it rejects oversized bodies, enqueues the body to `scorer.webhook`, and answers Tencent's
JSON at once. It never makes the billing decision of Live.CallbackBeforeSendGift: it answers
"allow" to everything it accepts, so point Tencent's blocking gift callback at your own billing
service, and use this for the battle callbacks, the non-blocking gift configuration, or as the
relay your billing service forwards approved gifts to.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

MAX_BODY = 64 * 1024
MAX_AGE = 60
OK = {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}


def expected_sign(token: str, request_time: str) -> str:
    """Tencent's callback signature: hex(sha256(Token + RequestTime))."""
    return hashlib.sha256((token + request_time).encode()).hexdigest()


class Rejected(Exception):
    """A request we refuse: HTTP status and a short reason (never echoing a secret)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def check(query: dict[str, str], sdkappid: int, token: str | None, now: float) -> str | None:
    """Validate the URL parameters; returns the CallbackCommand from the URL (if any)."""
    app = query.get("SdkAppid") or query.get("SdkAppId")
    if app != str(sdkappid):
        raise Rejected(403, "SdkAppid is not ours")
    if token:
        sign, rtime = query.get("Sign", ""), query.get("RequestTime", "")
        if not sign or not rtime.isdigit():
            raise Rejected(401, "missing Sign or RequestTime")
        if abs(now - int(rtime)) > MAX_AGE:
            raise Rejected(401, "RequestTime is more than 60 s from now")
        if not hmac.compare_digest(expected_sign(token, rtime), sign.lower()):
            raise Rejected(401, "bad Sign")
    return query.get("CallbackCommand") or query.get("WebhookCommand")


class Receiver:
    """The HTTP server; `enqueue(body)` is called for every accepted callback."""

    def __init__(self, sdkappid: int, token: str | None, enqueue: Callable[[dict], Any],
                 host: str = "127.0.0.1", port: int = 0) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # the query holds Sign: keep it out of logs
                pass

            def setup(self):
                super().setup()  # one answer per request: no Nagle delay behind its headers
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _answer(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802
                try:
                    url = urlparse(self.path)
                    query = {k: v[0] for k, v in parse_qs(url.query).items()}
                    command = check(query, sdkappid, token, time.time())
                    length = int(self.headers.get("Content-Length") or 0)
                    if length > MAX_BODY:
                        self.close_connection = True
                        raise Rejected(413, "body too large")
                    try:
                        body = json.loads(self.rfile.read(length) or b"null")
                    except (ValueError, UnicodeDecodeError):
                        raise Rejected(400, "body is not JSON") from None
                    if not isinstance(body, dict):
                        raise Rejected(400, "body must be a JSON object")
                    if command and "CallbackCommand" not in body:
                        body["CallbackCommand"] = command
                    enqueue(body)
                    outer.accepted += 1
                    self._answer(200, OK)
                except Rejected as rej:
                    outer.rejected += 1
                    self._answer(rej.status, {"ActionStatus": "FAIL", "ErrorCode": 1,
                                              "ErrorInfo": rej.reason})

        self.accepted = 0
        self.rejected = 0
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"

    def start(self) -> "Receiver":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def celery_enqueue(body: dict) -> None:
    """Send a body to `scorer.webhook`; Flower shows the command and room, not the body."""
    from worker import app

    summary = {"command": body.get("CallbackCommand"),
               "battle_id": body.get("BattleId"), "room_id": body.get("RoomId")}
    app.send_task("scorer.webhook", kwargs={"body": body, "event_id": None},
                  kwargsrepr=json.dumps(summary))


def main(argv: list[str] | None = None) -> int:
    """`battle-scorer receive --port P`."""
    from worker.settings import load_settings

    p = argparse.ArgumentParser(prog="battle-scorer receive", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    args = p.parse_args(argv)
    s = load_settings()
    token = s.callback_token.get_secret_value() if s.callback_token else None
    rec = Receiver(s.sdkappid, token, celery_enqueue, args.host, args.port).start()
    print(f"receiving Tencent callbacks on {rec.url}"
          + ("" if token else " (no SCORER_CALLBACK_TOKEN: signatures not checked)"),
          flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    rec.stop()
    return 0
