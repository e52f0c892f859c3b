"""The receiver's HTTP layer: uvicorn's h11 protocol with a deadline on request headers."""

# Imported only to serve (it needs uvicorn, the `receiver` extra). uvicorn itself has no
# timeout on a request's headers: a client could hold a connection open for ever by sending
# one header line a minute. This protocol starts the request's deadline at its first byte,
# answers 408 and closes if the headers are not complete by then, and hands the start time to
# the app, which applies the same deadline to the body. It also answers the requests uvicorn
# would refuse itself (unparsable, over the concurrency limit) with Tencent's JSON, counted
# and logged like the others.

from __future__ import annotations

import asyncio
import http
import json
import socket
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from worker.doors.receiver.app import STARTED_KEY, Limits, ReceiverApp
from worker.doors.receiver.check import fail

#: Routes served even above the concurrency limit: liveness must not fail because the
#: receiver is busy, and an operator needs the metrics most then. (/readyz does say 503.)
_ALWAYS_SERVED = ("/healthz", "/metrics")


def raw_response(status: int, payload: dict) -> bytes:
    """A complete HTTP/1.1 JSON response that closes the connection."""
    data = json.dumps(payload).encode()
    head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(data)}\r\n"
            "connection: close\r\n\r\n")
    return head.encode("ascii") + data


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one, read it back)."""
    family, kind, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


def protocol_class(receiver: ReceiverApp, limits: Limits) -> type[H11Protocol]:
    """uvicorn's h11 protocol, bound to this receiver's app and limits."""

    class ReceiverProtocol(H11Protocol):
        """One connection: h11, plus the header deadline and JSON refusals."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # The concurrency limit is checked in _app (same rule) so that its 503 is
            # Tencent's JSON, counted and logged; uvicorn's own check would bypass the app.
            self._limit, self.limit_concurrency = self.limit_concurrency, None
            self._started: float | None = None
            self._timer: asyncio.TimerHandle | None = None
            self.app = self._app

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the first bytes of the next request on a kept-alive connection
            super().data_received(data)

        def send_400_response(self, msg: str) -> None:
            """h11 could not parse the request (bad request line, header or length)."""
            self._refuse(400, "invalid HTTP request", "invalid_http")

        def _arm(self) -> None:
            self._disarm()
            self._started = time.monotonic()
            self._timer = self.loop.call_later(limits.read_timeout, self._headers_late)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _headers_late(self) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # the app has the request: it applies the deadline to the body
            self._refuse(408, "request not received in time", "timeout")

        def _refuse(self, status: int, reason: str, label: str) -> None:
            self._disarm()
            receiver.unparsed(status, label, self._started or time.monotonic())
            self.transport.write(raw_response(status, fail(reason)))
            self.transport.close()

        async def _app(self, scope: dict, receive: Any, send: Any) -> None:
            """The app, with the request's start time; 503 above the concurrency limit."""
            self._disarm()
            scope[STARTED_KEY], self._started = self._started or time.monotonic(), None
            # This request's task is already in self.tasks, this connection in connections.
            if self._limit is not None and scope.get("path") not in _ALWAYS_SERVED and (
                    len(self.connections) > self._limit or len(self.tasks) > self._limit):
                await receiver.overloaded(scope, send)
                return
            await receiver(scope, receive, send)

    return ReceiverProtocol


def build_server(receiver: ReceiverApp, limits: Limits) -> uvicorn.Server:
    """A uvicorn server for this app (not started: `run(sockets=...)` it)."""
    config = uvicorn.Config(
        receiver, http=protocol_class(receiver, limits), interface="asgi3", lifespan="off",
        ws="none", loop="asyncio", log_config=None,
        access_log=False,  # uvicorn's access line has the query string, so Sign: ours has not
        proxy_headers=False, server_header=False,
        timeout_keep_alive=limits.keep_alive,  # type: ignore[arg-type]
        limit_concurrency=limits.limit_concurrency,
        timeout_graceful_shutdown=limits.shutdown_timeout)  # type: ignore[arg-type]
    return uvicorn.Server(config)
