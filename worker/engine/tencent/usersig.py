"""The admin UserSig: generated with tls-sig-api-v2, cached and renewed well before expiry."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import TLSSigAPIv2

from worker.engine.timers import TIMERS

#: Lifetime of a generated UserSig. Long enough to be cheap, short enough that a leaked
#: one ages out within a day.
SIG_LIFETIME = TIMERS.tencent.sig_lifetime
#: Renew once less than this fraction of the lifetime is left (well before expiry).
RENEW_FRACTION = TIMERS.tencent.renew_fraction


class UserSigCache:
    """Holds one UserSig for the admin identifier; thread-safe; never reveals the key."""

    def __init__(self, sdkappid: int, secret_key: str, identifier: str,
                 lifetime: int = SIG_LIFETIME,
                 clock: Callable[[], float] = time.time) -> None:
        self._api = TLSSigAPIv2.TLSSigAPIv2(sdkappid, secret_key)
        self._identifier = identifier
        self._lifetime = lifetime
        self._clock = clock
        self._lock = threading.Lock()
        self._sig: str | None = None
        self._expires_at = 0.0
        self.generated = 0  # how many sigs this cache has made (tests and metrics read it)

    def __repr__(self) -> str:  # the key and the sig stay out of reprs and logs
        return f"UserSigCache(identifier={self._identifier!r}, expires_at={self._expires_at:.0f})"

    def get(self) -> str:
        """A valid UserSig, renewed when less than RENEW_FRACTION of its life is left."""
        with self._lock:
            now = self._clock()
            if self._sig is None or now >= self._expires_at - self._lifetime * RENEW_FRACTION:
                self._renew(now)
            return self._sig  # type: ignore[return-value]

    def invalidate(self) -> None:
        """Forget the cached sig (after Tencent said 70001: expired)."""
        with self._lock:
            self._sig = None

    def _renew(self, now: float) -> None:
        # gen_sig stamps time.time() itself; our clock only decides when to renew.
        self._sig = self._api.gen_sig(self._identifier, self._lifetime)
        self._expires_at = now + self._lifetime
        self.generated += 1
