"""An owner lock in Redis with a heartbeat and a fencing token: never taken over while its
holder is alive. Battles hold it (flush, reconcile: their `lock` and `rlock` keys), and so do
the tick, a room's drain of held gifts and the end-game runner.

A bare TTL would let a second worker take a battle while the first still has a request in
flight (a slow Tencent answer), and the read-back that resolves an ambiguous call is only
sound with a single writer. So the holder renews the lock every ttl/3 (one heartbeat thread
per process renews every lock it holds); the lock expires only when the holder is dead or
frozen for a whole ttl. Scripts that change a battle
also check the token (fencing), so a holder that lost its lock cannot commit.

A holder SIGKILLed next to us is noticed at once: the token (`identity|pid|uuid`) names the PID
namespace its pid belongs to, and a lock whose holder is a dead process of our own PID namespace
is taken over without waiting for the ttl (a battle near its end cannot afford to wait). The
identity is hostname/boot id/PID namespace (`/proc/sys/kernel/random/boot_id`, the link
`/proc/self/ns/pid`), not the hostname alone: containers that share a hostname (host
networking, a fixed compose `hostname:`) but not a PID namespace would otherwise see a live
holder next door as dead (its pid missing here) and take its battle, two writers, a double
count. The boot id tells kernels apart (every host's initial PID namespace has the same inode),
the namespace inode tells containers of one kernel apart; the hostname is for people. Any
other holder (another host, container or namespace, a token of an older format) expires with
the ttl, and so does every holder when the identity cannot be read here (HOST is None).
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from typing import cast

import redis
from redis.commands.core import Script

from worker.engine.state import scripts
from worker.engine.timers import TIMERS

#: A lock's ttl (renewed every third of it: see the module docstring).
DEFAULT_TTL_MS = TIMERS.state.lock_ttl_ms
#: A write leaves only while its lock's lease has this long left (`RedisLock.fresh`).
LEASE_MARGIN = TIMERS.state.lease_margin
_BOOT_ID = "/proc/sys/kernel/random/boot_id"
_PID_NS = "/proc/self/ns/pid"


def _clean(part: str) -> str:
    """No '|' (the token's separator) nor '/' (the identity's) in a part of the identity."""
    return re.sub(r"[^A-Za-z0-9._:\[\]-]", "_", part) or "_"


def _identity() -> str | None:
    """`hostname/boot id/pid:[inode]`, naming the PID namespace our pids belong to; None when
    the boot id or the namespace cannot be read (then no lock is ever taken over early)."""
    try:
        with open(_BOOT_ID) as f:
            boot = f.read().strip()
        ns = os.readlink(_PID_NS)
    except OSError:
        return None
    if not re.fullmatch(r"[0-9a-fA-F-]{32,36}", boot) or not re.fullmatch(r"pid:\[\d+\]", ns):
        return None
    return f"{_clean(socket.gethostname())}/{boot.lower()}/{ns}"


#: Who we are in lock tokens. A test may set it (another container: the same hostname and boot
#: id, another namespace); None: unknown, a lock is only ever freed by its ttl.
HOST: str | None = _identity()


def _token_host() -> str:
    # Unknown identity: a '?' that no real identity contains, so no one takes our locks early.
    return HOST if HOST is not None else f"{_clean(socket.gethostname())}/?"


def process_token() -> str:
    """A fresh token naming this process: "host identity|pid|uuid" (holder_is_dead_here reads
    it)."""
    return f"{_token_host()}|{os.getpid()}|{uuid.uuid4().hex}"


def holder_is_dead_here(token: str) -> bool:
    """True when `token` was made by a process of our own PID namespace (same kernel boot, same
    namespace) that no longer exists. False whenever that is not certain."""
    host, _, rest = token.rpartition("|")[0].partition("|")
    if HOST is None or host != HOST or not rest.isdigit():
        return False
    try:
        os.kill(int(rest), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class _Heartbeat:
    """One thread per process renews every lock the process holds. (A thread per lock cost a
    start and a join per flush: about a fifth of the control pool's time at 180 flushes/s.)"""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._locks: dict[int, RedisLock] = {}
        self._mu = threading.Lock()
        self._pid = 0

    def add(self, lock: RedisLock) -> None:
        with self._mu:
            self._locks[id(lock)] = lock
            if self._pid != os.getpid():  # first use in this process (threads die in a fork)
                self._pid = os.getpid()
                threading.Thread(target=self._run, daemon=True, name="lock-heartbeat").start()

    def remove(self, lock: RedisLock) -> None:
        with self._mu:
            self._locks.pop(id(lock), None)

    def _run(self) -> None:
        while True:
            with self._mu:
                locks = list(self._locks.values())
            for lock in locks:
                if time.monotonic() - lock.renewed < lock.ttl_ms / 3000:
                    continue
                try:
                    asked = time.monotonic()  # the ttl runs from no earlier than this
                    if lock._renew(keys=[lock.key], args=[lock.token, lock.ttl_ms]):
                        lock.renewed = asked
                    else:
                        lock.lost = True
                        self.remove(lock)
                except Exception:  # a Redis blip: try again next beat; the ttl covers two misses
                    continue
            time.sleep(0.1)


_HEARTBEAT = _Heartbeat()
os.register_at_fork(after_in_child=_HEARTBEAT._reset)


class RedisLock:
    """Context manager: `with RedisLock(r, key) as lock:` — `lock.held` says if we got it."""

    def __init__(self, redis: redis.Redis, key: str, ttl_ms: int = DEFAULT_TTL_MS) -> None:
        self.redis = redis
        self.key = key
        self.ttl_ms = ttl_ms
        self.token = process_token()
        self.held = False
        self.lost = False
        self.renewed = 0.0  # monotonic time of the last renewal (or of taking it)
        self._renew: Script = scripts.load(redis, "LOCK_RENEW")
        self._release: Script = scripts.load(redis, "LOCK_RELEASE")

    def __enter__(self) -> RedisLock:
        asked = time.monotonic()  # the ttl runs from no earlier than this
        self.held = bool(self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))
        if not self.held:
            holder = cast("str | None", self.redis.get(self.key))  # decode_responses
            if holder and holder_is_dead_here(holder):
                # Compare-and-delete, then try once more: two stealers cannot both win.
                self._release(keys=[self.key], args=[holder])
                self.held = bool(self.redis.set(self.key, self.token, nx=True,
                                                px=self.ttl_ms))
        if self.held:
            self.renewed = asked
            _HEARTBEAT.add(self)
        return self

    def fresh(self, margin: float = LEASE_MARGIN) -> bool:
        """Whether the lease surely runs `margin` s more: held, not found lost, and renewed
        (asked, by this process's monotonic clock) less than ttl - margin ago. Checked right
        before a write leaves (the fence): a process frozen past its lease, or whose heartbeat
        is stuck, stops its own writes without asking Redis."""
        return (self.held and not self.lost
                and time.monotonic() - self.renewed < self.ttl_ms / 1000 - margin)

    def __exit__(self, *exc: object) -> None:
        _HEARTBEAT.remove(self)
        if self.held:
            try:
                self._release(keys=[self.key], args=[self.token])
            except Exception:  # the ttl frees it
                pass
