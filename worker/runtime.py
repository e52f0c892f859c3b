"""Per-process runtime: settings, the state Redis, the Tencent client and the Lua scripts."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import redis

from worker import scripts
from worker.ratelimit import RedisRateLimiter
from worker.settings import Settings, get_settings
from worker.tclock import TencentClock
from worker.tencent import TencentClient


def connect(url: str) -> redis.Redis:
    """A Redis client (Redis Cluster for `redis+cluster://` URLs), replies decoded as str."""
    if url.startswith("redis+cluster://"):
        from redis.cluster import RedisCluster

        return RedisCluster.from_url("redis://" + url[len("redis+cluster://"):],
                                     decode_responses=True)
    # A timeout on every command: a half-open connection must not hang a lock's heartbeat or
    # a flush forever (no command of ours blocks on purpose).
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=10,
                                socket_keepalive=True, retry_on_timeout=True,
                                socket_timeout=10, socket_connect_timeout=5)


@dataclass
class Runtime:
    """What the tasks of one process share."""

    settings: Settings
    redis: redis.Redis
    client: TencentClient
    clock: Callable[[], float] = time.time
    scripts: dict = field(default_factory=dict)
    tclock: TencentClock | None = None

    def __post_init__(self) -> None:
        if self.tclock is None:
            # through `self.clock` at each call: tests move a runtime's clock by replacing it
            self.tclock = TencentClock(self.redis, lambda: self.clock())

    _broker: redis.Redis | None = None

    @property
    def broker(self) -> redis.Redis:
        """The broker's Redis (kombu's queues live there): the state Redis when they are one."""
        if self._broker is None:
            same = self.settings.redis_url == self.settings.state_url
            self._broker = self.redis if same else connect(self.settings.redis_url)
        return self._broker

    def script(self, name: str, broker: bool = False):
        """A registered Lua script by its name in worker.scripts (EVALSHA, loaded on demand),
        on the state Redis, or on the broker's for the scripts about its queues."""
        key = f"broker:{name}" if broker else name
        s = self.scripts.get(key)
        if s is None:
            client = self.broker if broker else self.redis
            s = self.scripts[key] = client.register_script(getattr(scripts, name))
        return s


def build_runtime(settings: Settings, clock: Callable[[], float] = time.time) -> Runtime:
    """A runtime for `settings`: state Redis, shared limiter, Tencent client."""
    from worker.metrics import record_call

    r = connect(settings.state_url)
    limiter = RedisRateLimiter(r, settings.api_rate)
    client = TencentClient(settings, limiter)

    def on_call(api: str, outcome: str, seconds: float, waited: float) -> None:
        try:
            record_call(r, api, outcome, seconds, waited)
        except redis.RedisError:  # metrics never fail a call
            pass

    client.on_call = on_call
    rt = Runtime(settings=settings, redis=r, client=client, clock=clock)
    client.on_answer = rt.tclock.observe_date
    return rt


_runtime: Runtime | None = None
_pid = 0


def get_runtime() -> Runtime:
    """The runtime of this process, built on first use and again after a fork."""
    global _runtime, _pid
    if _runtime is None or _pid != os.getpid():
        _runtime = build_runtime(get_settings())
        _pid = os.getpid()
    return _runtime


def set_runtime(rt: Runtime | None) -> None:
    """Install a runtime (tests, in-process tools)."""
    global _runtime, _pid
    _runtime, _pid = rt, os.getpid()
