"""The metrics process's HTTP server: /metrics (worker/doors/metrics.py's collector) and /healthz.

prometheus_client's start_http_server serves a registry and nothing else, so this is a small
http.server of our own: daemon threads, a bound on concurrent requests, a socket timeout, no
line logged per request. /healthz answers 200 when the state Redis and the broker's answer a
PING, 503 otherwise, so a healthcheck sees a dead Redis as well as a dead process.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import redis as redis_lib
from prometheus_client.exposition import choose_encoder

if TYPE_CHECKING:
    from worker.engine.settings import Settings

log = logging.getLogger("scorer.metrics")

#: Requests served at once; more are refused (closed) rather than queued without bound.
MAX_CONCURRENT = 8
#: Seconds a client may take to send its request or read the answer.
SOCKET_TIMEOUT = 10.0
#: Redis command timeout of the metrics process: a scrape must answer before Prometheus's
#: 10 s scrape timeout, and a healthcheck within its own. A scrape with both Redis hanging
#: costs at most 2 parts x 2 tries x 2 s = 8 s, so `scorer_redis_up` 0 still gets through.
REDIS_TIMEOUT = 2.0


def connect(url: str, timeout: float = REDIS_TIMEOUT,
            settings: Settings | None = None) -> redis_lib.Redis:
    """A Redis client that fails within `timeout` (runtime.connect's quick client), through
    the Sentinels `settings` name for a sentinel:// URL."""
    from worker.engine.runtime import connect as redis_connect

    master = getattr(settings, "sentinel_master", None)
    secret = settings.sentinel_secret if settings is not None else None
    return redis_connect(url, master, secret, quick=timeout)


def clients(settings: Settings) -> tuple[redis_lib.Redis, redis_lib.Redis]:
    """(state Redis, broker Redis) for `settings`: one client when they are the same URL."""
    state = connect(settings.state_url, settings=settings)
    broker = state if settings.redis_url == settings.state_url else connect(
        settings.redis_url, settings=settings)
    return state, broker


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    server_version = "battle-scorer-metrics"
    timeout = SOCKET_TIMEOUT  # applied to the connection by StreamRequestHandler.setup

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._metrics()
        elif path == "/healthz":
            problem = self.server.problem()
            self._send(503 if problem else 200, f"{problem or 'ok'}\n".encode())
        elif path == "/":
            self._send(200, b"battle-scorer metrics: /metrics /healthz\n")
        else:
            self._send(404, b"not found\n")

    def _metrics(self) -> None:
        # The format the scraper asks for (OpenMetrics or text), as prometheus_client's own
        # server negotiates it.
        encoder, ctype = choose_encoder(self.headers.get("Accept") or "")
        try:
            body = encoder(self.server.registry)
        except Exception:  # a bug in the collector: answer 500, keep serving
            log.exception("metrics: collection failed")
            self._send(500, b"collection failed\n")
            return
        self._send(200, body, ctype)

    def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:
        pass  # one line per scrape is noise; failures are logged where they happen


class MetricsServer(ThreadingHTTPServer):
    """Threaded HTTP server with a bound on concurrent requests."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], registry, pings) -> None:
        self.registry = registry
        self.pings = pings  # name → Redis client, for /healthz
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        infos = socket.getaddrinfo(addr[0] or None, addr[1], type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        self.address_family = infos[0][0]  # IPv6 when asked for (`--host ::`)
        super().__init__(addr, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can hang for seconds in a
        # container without reverse DNS; the name is only used in CGI environments.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def problem(self) -> str | None:
        """None when every Redis answers a PING, else which one does not (no URL: it may
        carry a password)."""
        for name, client in self.pings.items():
            try:
                client.ping()
            except redis_lib.RedisError as err:
                return f"{name} Redis unavailable: {type(err).__name__}"
        return None

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many at once: refuse, never pile up threads
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def start(addr: str, port: int, redis: redis_lib.Redis, broker: redis_lib.Redis | None = None,
          queue: str | None = None) -> tuple[MetricsServer, threading.Thread]:
    """Serve on (addr, port) in a daemon thread; returns (server, thread). Port 0: any free
    port (read it from `server.server_address[1]`). `queue`: SCORER_QUEUE (its default when
    None)."""
    from worker.doors.metrics import DEFAULT_QUEUE, registry_for

    queue = DEFAULT_QUEUE if queue is None else queue

    broker = redis if broker is None else broker
    pings = {"state": redis} if broker is redis else {"state": redis, "broker": broker}
    server = MetricsServer((addr, port), registry_for(redis, broker, queue), pings)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server, thread


def get_status(url: str, timeout: float = 3.0) -> tuple[int, str]:
    """GET `url`: (status, first line of the body); status 0 when it could not connect."""
    import httpx

    try:
        resp = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as err:
        return 0, type(err).__name__
    return resp.status_code, (resp.text.splitlines() or [""])[0][:200]
