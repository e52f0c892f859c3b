"""The receiver's Prometheus metrics, in a registry of its own (several receivers per process)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

#: Route labels: a fixed set, never the raw path (a path is client-chosen: unbounded series).
ROUTES = ("callback", "healthz", "readyz", "metrics", "other", "unparsed")

#: Enqueue latency buckets (seconds): a local Redis answers in well under 1 ms, and anything
#: near the enqueue timeout is a broker in trouble.
_ENQUEUE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0)


class ReceiverMetrics:
    """Counters, histogram and gauge of one receiver, exposed at its /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "scorer_receiver_requests", "HTTP requests answered, by route and status",
            ["route", "status"], registry=self.registry)
        self.rejected = Counter(
            "scorer_receiver_rejected", "callbacks refused, by reason",
            ["reason"], registry=self.registry)
        self.enqueue_seconds = Histogram(
            "scorer_receiver_enqueue_seconds", "time to hand one accepted body to the broker",
            buckets=_ENQUEUE_BUCKETS, registry=self.registry)
        self.in_flight = Gauge(
            "scorer_receiver_in_flight", "requests being handled now",
            registry=self.registry)

    def answered(self, route: str, status: int) -> None:
        """Count one answered request."""
        self.requests.labels(route=route, status=str(status)).inc()

    def refused(self, reason: str) -> None:
        """Count one refused callback (reason: a fixed label such as too_large)."""
        self.rejected.labels(reason=reason).inc()

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
