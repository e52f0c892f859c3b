"""The receiver's ASGI application: routes, read deadline, size limit, enqueue; each request
recorded (metrics, access log: worker/doors/receiver/exchange.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from worker.doors.receiver.check import (
    MAX_BODY,
    OK,
    Rejected,
    check,
    declared_length,
    event_id_of,
    fail,
    parse_body,
    parse_query,
)
from worker.doors.receiver.exchange import (
    Exchange,
    access_log,
    describe_error,
    has_body,
    header,
)
from worker.doors.receiver.metrics import ReceiverMetrics

log = logging.getLogger("scorer.receiver")

#: Scope key where the HTTP protocol puts the monotonic time the request's first byte came
#: in, so that one deadline covers headers and body together (receiver_http.py).
STARTED_KEY = "scorer.request_started"
#: The GET routes; a POST to any other path is a callback.
GET_ROUTES = {"/healthz": "healthz", "/readyz": "readyz", "/metrics": "metrics"}

Enqueue = Callable[[dict, "str | None"], Any]


@dataclass(frozen=True)
class Limits:
    """Timeouts (seconds) and bounds of one receiver."""

    read_timeout: float = 10.0  # headers + body of one request; past it: 408, closed
    keep_alive: float = 5.0  # an idle keep-alive connection is closed after this
    limit_concurrency: int = 100  # connections or requests at once; above it: 503
    enqueue_threads: int = 8  # threads publishing to the broker
    enqueue_timeout: float = 5.0  # one publish; past it: 503 (the pipeline retries)
    ready_timeout: float = 2.0  # the /readyz broker ping
    # Graceful shutdown: requests in flight get this long (a read plus an enqueue).
    shutdown_timeout: float = 15.0


class ClientGone(Exception):
    """The client closed the connection before its request was read: nobody to answer."""


class ReceiverApp:
    """The plain ASGI callable: Tencent callbacks on POST, health, readiness and metrics."""

    def __init__(self, sdkappid: int, token: str | None, enqueue: Enqueue,
                 ready: Callable[[], Any], limits: Limits,
                 metrics: ReceiverMetrics | None = None) -> None:
        self.sdkappid, self.token = sdkappid, token
        self.enqueue, self.ready, self.limits = enqueue, ready, limits
        self.metrics = metrics or ReceiverMetrics()
        self.accepted = 0
        self.rejected = 0
        # Bounded: a hung broker can hold at most this many threads; the rest wait their turn
        # (and are answered 503 at the enqueue timeout).
        self.enqueue_pool = ThreadPoolExecutor(limits.enqueue_threads, "receiver-enqueue")
        self.ready_pool = ThreadPoolExecutor(1, "receiver-ready")

    def close(self) -> None:
        """Stop the thread pools (publishes in progress finish on their own)."""
        self.enqueue_pool.shutdown(wait=False, cancel_futures=True)
        self.ready_pool.shutdown(wait=False, cancel_futures=True)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are not served
            return
        started = scope.get(STARTED_KEY) or time.monotonic()
        method, path = scope["method"], scope["path"]
        ex = Exchange(method, path, self._route_of(method, path), started,
                      started + self.limits.read_timeout)
        self.metrics.in_flight.inc()
        try:
            await self._dispatch(ex, scope, receive, send)
        except ClientGone:
            ex.status = 499  # nginx's "client closed request": logged, nothing sent
        except asyncio.CancelledError:
            # uvicorn cancels what still runs past the graceful-shutdown timeout: say 503
            # (the pipeline retries) rather than let uvicorn log a traceback and send 500.
            if not ex.status:
                await self._answer(ex, send, 503, fail("shutting down"), close=True)
        except Exception as exc:  # a defect of ours: one line, not a traceback
            log.error("receiver: %s while answering %s %s", type(exc).__name__, method, path)
            if not ex.status:
                await self._answer(ex, send, 500, fail("internal error"), close=True)
        finally:
            self.metrics.in_flight.dec()
            self._record(ex)

    @staticmethod
    def _route_of(method: str, path: str) -> str:
        if path in GET_ROUTES:
            return GET_ROUTES[path]
        return "callback" if method == "POST" else "other"

    async def _dispatch(self, ex: Exchange, scope: dict, receive: Callable,
                        send: Callable) -> None:
        if ex.route == "callback":
            await self._callback(ex, scope, receive, send)
        elif ex.route == "other" or ex.method != "GET":
            allow = b"POST" if ex.route == "other" else b"GET"
            await self._answer(ex, send, 405, fail("method not allowed"), close=True,
                               headers=[(b"allow", allow)])
        elif ex.route == "healthz":
            await self._answer(ex, send, 200, {"status": "ok"}, close=has_body(scope))
        elif ex.route == "readyz":
            await self._readyz(ex, scope, send)
        else:
            data, ctype = self.metrics.render()
            await self._answer(ex, send, 200, data, close=has_body(scope),
                               content_type=ctype.encode())

    async def _callback(self, ex: Exchange, scope: dict, receive: Callable,
                        send: Callable) -> None:
        try:
            query = parse_query(scope.get("query_string", b""))
            # Cheap checks first: an unsigned or foreign request is refused unread.
            command = check(query, self.sdkappid, self.token, time.time())
            event_id = event_id_of(header(scope, b"x-event-id"), query)
            ex.has_event_id = event_id is not None
            declared_length(header(scope, b"content-length"))
            raw = await self._read_body(ex, receive)
            body = parse_body(raw, command)
            await self._enqueue(body, event_id)
        except Rejected as rej:
            self.rejected += 1
            self.metrics.refused(rej.label)
            # A body left unread would be parsed as the next request: close instead.
            await self._answer(ex, send, rej.status, fail(rej.reason), close=not ex.body_read)
            return
        self.accepted += 1
        await self._answer(ex, send, 200, OK)

    async def _read_body(self, ex: Exchange, receive: Callable) -> bytes:
        """The whole body, by the request's deadline and never more than MAX_BODY."""
        chunks: list[bytes] = []
        while True:
            remaining = ex.deadline - time.monotonic()
            if remaining <= 0:
                raise Rejected(408, "request not received in time")
            try:
                message = await asyncio.wait_for(receive(), remaining)
            except TimeoutError:
                raise Rejected(408, "request not received in time") from None
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            ex.size += len(chunk)
            if ex.size > MAX_BODY:  # whatever Content-Length said (chunked, or a lie)
                raise Rejected(413, "body too large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                ex.body_read = True
                return b"".join(chunks)

    async def _enqueue(self, body: dict, event_id: str | None) -> None:
        """Hand the body to the broker in the bounded pool; any failure is a 503."""
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        try:
            job = loop.run_in_executor(self.enqueue_pool, self.enqueue, body, event_id)
            await asyncio.wait_for(job, self.limits.enqueue_timeout)
        except Exception as exc:  # whatever went wrong, it was not taken
            # 503 makes the pipeline retry. If the publish went through after all (a timeout
            # on a slow broker), the retry is a duplicate: the worker counts an event id, or
            # a body's derived id, once.
            log.warning("enqueue failed, answered 503: %s", describe_error(exc))
            raise Rejected(503, "could not enqueue: broker unavailable", "broker") from None
        finally:
            self.metrics.enqueue_seconds.observe(time.monotonic() - t0)

    async def _readyz(self, ex: Exchange, scope: dict, send: Callable) -> None:
        loop = asyncio.get_running_loop()
        try:
            job = loop.run_in_executor(self.ready_pool, self.ready)
            await asyncio.wait_for(job, self.limits.ready_timeout)
        except Exception as exc:  # any failure means not ready
            log.warning("readiness: broker unreachable: %s", describe_error(exc))
            await self._answer(ex, send, 503, {"status": "broker unreachable"}, close=True)
            return
        await self._answer(ex, send, 200, {"status": "ready"}, close=has_body(scope))

    async def _answer(self, ex: Exchange, send: Callable, status: int, payload: dict | bytes,
                      close: bool = False, content_type: bytes = b"application/json",
                      headers: list[tuple[bytes, bytes]] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        out = [(b"content-type", content_type), (b"content-length", str(len(data)).encode())]
        if close:  # uvicorn closes the connection after a response that says so
            out.append((b"connection", b"close"))
        ex.status = status
        await send({"type": "http.response.start", "status": status,
                    "headers": out + (headers or [])})
        await send({"type": "http.response.body", "body": data})

    def _record(self, ex: Exchange) -> None:
        """Metrics and the access log line of one request."""
        self.metrics.answered(ex.route, ex.status)
        access_log(ex.method, ex.path, ex.status, time.monotonic() - ex.started, ex.size,
                   ex.has_event_id)

    async def overloaded(self, scope: dict, send: Callable) -> None:
        """Answer 503 to a request above the concurrency limit (counted and logged)."""
        started = scope.get(STARTED_KEY) or time.monotonic()
        ex = Exchange(scope["method"], scope["path"],
                      self._route_of(scope["method"], scope["path"]), started, started)
        self.rejected += 1
        self.metrics.refused("overload")
        try:
            await self._answer(ex, send, 503, fail("too many requests at once"), close=True)
        finally:
            self._record(ex)

    def unparsed(self, status: int, label: str, started: float) -> None:
        """Count and log a request the HTTP layer answered before it reached the app
        (unparsable request line or headers, or headers not in by the deadline)."""
        self.rejected += 1
        self.metrics.refused(label)
        self.metrics.answered("unparsed", status)
        access_log("-", "-", status, time.monotonic() - started, 0, False)
