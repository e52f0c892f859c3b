"""The faults the sandbox injects: queued ones for the next calls, then random ones at rates."""

from __future__ import annotations

import random
from collections import defaultdict, deque

FAULT_KINDS = ("http502", "error100001", "latency", "lost_response", "late_landing",
               "http429", "http408")
#: Faults that only writes suffer at random (a read has nothing to land late), and the writes.
WRITE_FAULTS = frozenset({"late_landing"})
WRITES = frozenset({"set_battle_score", "create_battle"})
#: A `late_landing` request is held this long, then applied, then answered: past the client's
#: 5 s read timeout, so the client has given up on a write that lands after all.
LATE_LANDING = 8.0


def _check_kind(kind: str) -> None:
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}")


class Faults:
    """Faults to inject and those injected so far. Not locked: the sandbox's state calls it
    under its own lock."""

    def __init__(self) -> None:
        self.queued: deque[tuple[str | None, str, float]] = deque()
        self.rates: dict[str, float] = {}
        self.rate_latency = 0.3
        self.rate_apis: set[str] | None = None
        self.rng = random.Random()
        self.injected: dict[str, int] = defaultdict(int)

    def inject(self, api: str | None, kind: str, count: int = 1, latency: float = 0.0) -> None:
        """Queue `count` faults of `kind` for the next calls of `api` (None: any API)."""
        _check_kind(kind)
        for _ in range(count):
            self.queued.append((api, kind, latency))

    def set_rates(self, rates: dict[str, float], latency: float = 0.3,
                  seed: int | None = None, apis: list[str] | None = None) -> None:
        """Inject faults at random: kind → probability per call."""
        for kind in rates:
            _check_kind(kind)
        self.rates, self.rate_latency = dict(rates), latency
        self.rng = random.Random(seed)
        self.rate_apis = set(apis) if apis else None

    def clear(self) -> None:
        """No more faults (those injected stay counted)."""
        self.queued.clear()
        self.rates = {}

    def take(self, api: str) -> tuple[str, float] | None:
        """The fault this call suffers, if any (queued first, then random)."""
        for i, (fapi, kind, latency) in enumerate(self.queued):
            if fapi in (None, api):
                del self.queued[i]
                self.injected[kind] += 1
                return kind, latency
        if self.rates and (self.rate_apis is None or api in self.rate_apis):
            x = self.rng.random()
            for kind, p in self.rates.items():
                if x < p:
                    if kind in WRITE_FAULTS and api not in WRITES:
                        return None  # a read has nothing to land late
                    self.injected[kind] += 1
                    return kind, self.rate_latency
                x -= p
        return None
