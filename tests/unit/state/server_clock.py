"""A clock for fakeredis's server: TIME, key expiry and Lua's redis.call('TIME') read it.

The scripts that read Redis's own clock (RATE, DRAIN_*, WATERMARK) and every TTL then run on
a time the test moves, with no sleep. Only the calling test's thread sees the fake time
(another thread, such as the lock heartbeat, keeps the real one).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import fakeredis._helpers
import fakeredis._socket._base
import fakeredis.commands_mixins.server_mixin
import pytest

#: The fakeredis modules that read `time.time()` for the server's clock.
_MODULES = (fakeredis._socket._base, fakeredis.commands_mixins.server_mixin, fakeredis._helpers)


class ServerClock:
    """Stands for the `time` module in fakeredis: `time()` is `t`, for the owning thread."""

    def __init__(self, t: float) -> None:
        self.t = t
        self._owner = threading.get_ident()

    def time(self) -> float:
        """The fake wall time (the real one in any other thread)."""
        return self.t if threading.get_ident() == self._owner else time.time()

    def advance(self, seconds: float) -> None:
        """Move the server's clock on."""
        self.t += seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def freeze_server_time(monkeypatch: pytest.MonkeyPatch, t: float) -> ServerClock:
    """Make every fakeredis server of this test read `t` (moved with `advance`)."""
    clock = ServerClock(t)
    for module in _MODULES:
        monkeypatch.setattr(module, "time", clock)
    return clock
