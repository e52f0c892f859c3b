"""The receiver's broker side: publish to `scorer.webhook` and ping, both failing fast."""

from __future__ import annotations

from typing import Any

from worker.engine.ingest.intake import summarize

#: Seconds to connect to (or hear back from) the broker before giving up.
BROKER_TIMEOUT = 2.0


def fast_fail_options(timeout: float) -> dict[str, Any]:
    """kombu transport options for a producer that must fail in seconds, not retry.

    The worker's own configuration retries a lost broker forever (right for a consumer);
    a receiver must answer 503 quickly instead so that the webhook pipeline retries."""
    return {"max_retries": 0, "connect_retries_timeout": timeout,
            "socket_connect_timeout": timeout, "socket_timeout": timeout}


class CeleryBroker:
    """Publishes accepted callbacks with a Celery app, on a small pool of its own
    connections (single attempt, short timeouts) so a dead broker costs seconds."""

    def __init__(self, app: Any = None, queue: str | None = None, url: str | None = None,
                 timeout: float = BROKER_TIMEOUT, pool_size: int = 8) -> None:
        if app is None:  # imported here: building the worker's app reads the settings
            from worker.doors.app import app
        if queue is None:  # the worker's app routes to SCORER_QUEUE (worker/doors/celeryconfig.py)
            queue = app.conf.task_default_queue
        self.app, self.queue, self.url, self.timeout = app, queue, url, timeout
        self.pool = self._connection().Pool(limit=pool_size)

    def _connection(self) -> Any:
        options = fast_fail_options(self.timeout)
        # Through Sentinels, their own connections fail as fast (Celery merges these options
        # over the worker's, whose Sentinel timeouts are a consumer's: 5 and 10 s).
        sentinels = (self.app.conf.broker_transport_options or {}).get("sentinel_kwargs")
        if sentinels:
            options["sentinel_kwargs"] = {**sentinels, "socket_timeout": self.timeout,
                                          "socket_connect_timeout": self.timeout}
        return self.app.connection_for_write(self.url, connect_timeout=self.timeout,
                                             transport_options=options)

    def enqueue(self, body: dict, event_id: str | None) -> None:
        """Send one body to `scorer.webhook`; raises if the broker did not take it."""
        try:
            self._send(body, event_id)
        except Exception:  # retried once; the second failure propagates
            # A pooled connection can be stale (the broker restarted since its last use):
            # one more try on a fresh one, so a restart does not cost each connection a 503.
            self._send(body, event_id)

    def _send(self, body: dict, event_id: str | None) -> None:
        kwargs: dict[str, Any] = {"body": body, "event_id": event_id}
        with self.pool.acquire(block=True, timeout=self.timeout) as conn:
            try:
                # What Flower shows of it (kwargsrepr): the command and ids, never the body.
                self.app.send_task("scorer.webhook", kwargs=kwargs, queue=self.queue,
                                   kwargsrepr=summarize(kwargs), connection=conn, retry=False)
            except Exception:
                _discard(conn)
                raise

    def ping(self) -> None:
        """Connect to the broker on a fresh connection (for Redis: PING); raises if down."""
        conn = self._connection()
        try:
            conn.ensure_connection(max_retries=0, timeout=self.timeout)
        finally:
            conn.release()

    def close(self) -> None:
        """Close the pooled connections."""
        self.pool.force_close_all()


def _discard(conn: Any) -> None:
    """Drop a connection's broken transport; its next use connects afresh."""
    try:
        conn.collect()
    except Exception:  # best effort: the broker is gone anyway
        pass
