"""A per-battle owner lock with a heartbeat: never taken over while its holder is alive.

A bare TTL would let a second worker take a battle while the first still has a request in
flight (a slow Tencent answer), and the read-back that resolves an ambiguous call is only
sound with a single writer. So the holder renews the lock from a thread every ttl/3; the lock
expires only when the holder is dead or frozen for a whole ttl. Scripts that change a battle
also check the token (fencing), so a holder that lost its lock cannot commit.

A holder SIGKILLed on this host is noticed at once: the token names its host and pid, and a
lock whose holder is a dead process of this host is taken over without waiting for the ttl
(a battle near its end cannot afford to wait). A holder on another host expires with the ttl.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid

from worker import scripts

DEFAULT_TTL_MS = 6_000
HOST = socket.gethostname()


def _holder_is_dead_here(token: str) -> bool:
    """True when `token` was made by a process of this host that no longer exists."""
    host, _, rest = token.rpartition("|")[0].partition("|")
    if host != HOST or not rest.isdigit():
        return False
    try:
        os.kill(int(rest), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class BattleLock:
    """Context manager: `with BattleLock(r, key) as lock:` — `lock.held` says if we got it."""

    def __init__(self, redis, key: str, ttl_ms: int = DEFAULT_TTL_MS) -> None:
        self.redis = redis
        self.key = key
        self.ttl_ms = ttl_ms
        self.token = f"{HOST}|{os.getpid()}|{uuid.uuid4().hex}"
        self.held = False
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renew = redis.register_script(scripts.LOCK_RENEW)
        self._release = redis.register_script(scripts.LOCK_RELEASE)

    def __enter__(self) -> "BattleLock":
        self.held = bool(self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))
        if not self.held:
            holder = self.redis.get(self.key)
            if holder and _holder_is_dead_here(holder):
                # Compare-and-delete, then try once more: two stealers cannot both win.
                self._release(keys=[self.key], args=[holder])
                self.held = bool(self.redis.set(self.key, self.token, nx=True,
                                                px=self.ttl_ms))
        if self.held:
            self._thread = threading.Thread(target=self._beat, daemon=True,
                                            name=f"heartbeat:{self.key}")
            self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                if not self._renew(keys=[self.key], args=[self.token, self.ttl_ms]):
                    self.lost = True
                    return
            except Exception:  # a Redis blip: try again next beat; the ttl covers two misses
                continue

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self.held:
            try:
                self._release(keys=[self.key], args=[self.token])
            except Exception:  # the ttl frees it
                pass
