"""`battle-scorer receive`: a signed-webhook HTTP endpoint that enqueues Tencent callbacks.

For teams whose webhook pipeline is not Python. It checks SdkAppid, and when a callback token
is set (SCORER_CALLBACK_TOKEN), Sign = sha256(Token + RequestTime) and a RequestTime within
60 s; it refuses bodies over 64 KiB, enqueues the body (and the app's ledger id, from the
X-Event-Id header or the EventId query parameter) to `scorer.webhook`, and answers Tencent's
JSON; 503 when the broker does not take it, so the pipeline retries. It never makes the
billing decision of Live.CallbackBeforeSendGift: it answers "allow" to everything it accepts,
so point Tencent's blocking gift callback at your own billing service, and use this for the
battle callbacks, the non-blocking gift configuration, or as the relay your billing service
forwards approved gifts to. It serves GET /healthz, /readyz and /metrics too.

An ASGI application (worker/doors/receiver/app.py) served by uvicorn (the `receiver` extra); see
docs/receiver.md for routes, limits, timeouts, status codes and metrics.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from worker.doors.receiver.app import Enqueue, Limits, ReceiverApp
from worker.doors.receiver.check import (
    MAX_AGE,
    MAX_BODY,
    OK,
    Rejected,
    check,
    expected_sign,
    fail,
)
from worker.doors.receiver.metrics import ReceiverMetrics

__all__ = ["MAX_AGE", "MAX_BODY", "OK", "Limits", "Receiver", "Rejected", "check",
           "expected_sign", "fail", "main"]


def _always_ready() -> None:
    """Readiness when the enqueue function was injected: there is no broker to ping."""


class Receiver:
    """The receiver: uvicorn serving a ReceiverApp on host:port.

    `enqueue(body, event_id)` is called (in a bounded thread pool) for every accepted
    callback; it must raise if the body was not enqueued. Without it, bodies go to Celery
    (`broker`, by default a CeleryBroker on the worker's app and SCORER_QUEUE), and /readyz
    pings that broker; with it, `ready()` (if given) answers /readyz."""

    def __init__(self, sdkappid: int, token: str | None, enqueue: Enqueue | None = None,
                 host: str = "127.0.0.1", port: int = 0, *,
                 ready: Callable[[], Any] | None = None, limits: Limits | None = None,
                 broker: Any = None) -> None:
        self.host, self.port = host, port
        self.limits = limits or Limits()
        self.broker = None
        if enqueue is None:
            from worker.doors.receiver.broker import CeleryBroker

            self.broker = broker or CeleryBroker(pool_size=self.limits.enqueue_threads)
            enqueue, ready = self.broker.enqueue, ready or self.broker.ping
        self.app = ReceiverApp(sdkappid, token, enqueue, ready or _always_ready, self.limits,
                               ReceiverMetrics())
        self.metrics = self.app.metrics
        self.url: str | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def accepted(self) -> int:
        """Callbacks enqueued so far."""
        return self.app.accepted

    @property
    def rejected(self) -> int:
        """Requests refused so far (4xx and 503)."""
        return self.app.rejected

    def _prepare(self) -> list:
        """Bind the socket (so port 0 is known before serving) and build the server."""
        from worker.doors.receiver.http import (  # uvicorn: the `receiver` extra
            build_server,
            listen,
        )

        sock = listen(self.host, self.port)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{sock.getsockname()[1]}"
        self._server = build_server(self.app, self.limits)
        return [sock]

    def start(self, timeout: float = 10.0) -> Receiver:
        """Serve in a background thread; returns once the server listens (`.url` is set)."""
        sockets = self._prepare()
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": sockets},
                                        name="receiver", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the receiver did not start")
            time.sleep(0.005)
        return self

    def serve(self, announce: Callable[[str], Any] | None = None) -> None:
        """Serve in this (main) thread until SIGTERM or SIGINT, then shut down gracefully:
        stop accepting, let requests in flight finish (up to limits.shutdown_timeout).
        `announce(url)` is called once the socket is bound."""
        sockets = self._prepare()
        if announce is not None and self.url is not None:  # (_prepare has set it)
            announce(self.url)
        try:
            self._server.run(sockets=sockets)
        finally:
            self._close()

    def stop(self) -> None:
        """Shut down gracefully (as on SIGTERM) and wait for the server thread."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(self.limits.shutdown_timeout + 2)
            if self._thread.is_alive():  # past the graceful timeout: drop what is left
                self._server.force_exit = True
                self._thread.join(2)
        self._close()

    def _close(self) -> None:
        self.app.close()
        if self.broker is not None:
            self.broker.close()


def main(argv: list[str] | None = None) -> int:
    """`battle-scorer receive [--host H] [--port P]`: serve until SIGTERM or SIGINT."""
    from worker.doors import logs
    from worker.doors.receiver.broker import CeleryBroker
    from worker.engine.settings import load_settings

    p = argparse.ArgumentParser(prog="battle-scorer receive", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    args = p.parse_args(argv)
    s = load_settings(require=("sdkappid",))  # no SCORER_SECRET_KEY in its container
    token = s.callback_token.get_secret_value() if s.callback_token else None
    # The access log and uvicorn's errors, with whichever secrets this process holds
    # redacted (it needs no Tencent key: it never signs a call).
    logs.to_stderr(s, ("scorer", "uvicorn"))
    limits = Limits()
    broker = CeleryBroker(queue=s.queue, pool_size=limits.enqueue_threads)
    rec = Receiver(s.sdkappid, token, host=args.host, port=args.port, limits=limits,
                   broker=broker)
    # uvicorn handles SIGTERM/SIGINT (graceful shutdown), then raises the signal again with
    # the previous handler: make that a KeyboardInterrupt for both, and exit 0.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    note = "" if token else " (no SCORER_CALLBACK_TOKEN: signatures not checked)"
    try:
        rec.serve(lambda url: print(f"receiving Tencent callbacks on {url}{note}", flush=True))
    except KeyboardInterrupt:
        pass
    return 0
