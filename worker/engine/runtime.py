"""Per-process runtime: settings, the state Redis, the Tencent client and the Lua scripts."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from redis import Redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from worker.engine import redis_urls
from worker.engine.settings import Settings, get_settings
from worker.engine.state import scripts
from worker.engine.state.counters import CallTally
from worker.engine.state.redisclock import RedisClock
from worker.engine.tencent import TencentClient
from worker.engine.tencent.clock import TencentClock
from worker.engine.tencent.limiter import RedisRateLimiter
from worker.engine.timers import TIMERS


def connect(url: str, sentinel_master: str | None = None,
            sentinel_password: str | None = None, quick: float | None = None) -> redis.Redis:
    """A Redis client, replies decoded as str: a Redis Cluster for `redis+cluster://` URLs, the
    current master named `sentinel_master` for `sentinel://` URLs (one Sentinel or kombu's ';'
    list; `sentinel_password` for the Sentinels themselves), one server otherwise.

    `quick`: a client that must say "down" within its caller's own deadline (a metrics scrape,
    a health check, the beat's hook): `quick` s timeouts and one immediate retry (a pooled
    connection a Redis restart closed), not redis-py's default retries with back-off."""
    options: dict[str, Any]
    if quick is not None:
        options = {"decode_responses": True, "socket_timeout": quick,
                   "socket_connect_timeout": quick, "retry": Retry(NoBackoff(), 1)}
    else:
        # A timeout on every command: a half-open connection must not hang a lock's
        # heartbeat or a flush forever (no command of ours blocks on purpose).
        options = {"decode_responses": True, "health_check_interval": 10,
                   "socket_keepalive": True, "retry_on_timeout": True, "socket_timeout": 10,
                   "socket_connect_timeout": 5}
    if redis_urls.is_cluster_url(url):
        from redis.cluster import RedisCluster

        cluster: dict[str, Any] = {"decode_responses": True}
        if quick is not None:
            cluster.update(socket_timeout=quick, socket_connect_timeout=quick)
        # Typed as one Redis: the engine sends a Cluster the same commands (pipeline.py
        # batches them serially where a cluster pipeline refuses EVALSHA).
        return cast(redis.Redis, RedisCluster.from_url(redis_urls.cluster_node_url(url),
                                                        **cluster))
    if redis_urls.is_sentinel_url(url):
        return _sentinel_master(url, sentinel_master, sentinel_password, quick, **options)
    return redis.Redis.from_url(url, **options)


def _sentinel_master(url: str, master: str | None, sentinel_password: str | None,
                     quick: float | None, **options: Any) -> redis.Redis:
    """The master's client through its Sentinels, as kombu's Sentinel transport builds it: the
    URL's user, password and database go to the master, the Sentinels get `sentinel_kwargs`.
    The client asks a Sentinel for the master's address on each new connection, so it follows
    a failover (connections to the old master are dropped)."""
    from redis.sentinel import Sentinel

    if not master:
        raise ValueError("a sentinel:// URL needs the master's name (SCORER_SENTINEL_MASTER)")
    parsed = redis_urls.parse_sentinel_url(url)
    sentinel = Sentinel(list(parsed.nodes),
                        sentinel_kwargs=redis_urls.sentinel_kwargs(sentinel_password, quick))
    return sentinel.master_for(master, db=parsed.db, username=parsed.username,
                               password=parsed.password, **options)


@dataclass
class Runtime:
    """What the tasks of one process share."""

    # `Redis`, not `redis.Redis`, in this class: the field `redis` hides the module here.
    settings: Settings
    redis: Redis
    client: TencentClient
    clock: Callable[[], float] = time.time
    #: Tencent's clock, made from `redis` and `clock` (see __post_init__).
    tclock: TencentClock = field(init=False)
    #: The Tencent calls' metrics, written every TIMERS.state.call_metrics_every (None: none).
    calls: CallTally | None = field(default=None, repr=False)
    _broker: Redis | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        # through `self.clock` at each call: tests move a runtime's clock by replacing it
        self.tclock = TencentClock(self.redis, lambda: self.clock())

    @property
    def broker(self) -> Redis:
        """The broker's Redis (kombu's queues live there): the state Redis when they are one."""
        if self._broker is None:
            same = self.settings.redis_url == self.settings.state_url
            self._broker = self.redis if same else connect(
                self.settings.redis_url, self.settings.sentinel_master,
                self.settings.sentinel_secret)
        return self._broker

    def script(self, name: str, broker: bool = False) -> Script:
        """A Lua script by its name in worker.engine.state.scripts (scripts.load: registered
        once per client, EVALSHA, loaded on demand), on the state Redis, or on the broker's
        for the scripts about its queues."""
        return scripts.load(self.broker if broker else self.redis, name)


def build_runtime(settings: Settings, clock: Callable[[], float] | None = None) -> Runtime:
    """A runtime for `settings`: state Redis, shared limiter, Tencent client, and its clock:
    Redis's clock read on this host unless `clock` is given (worker/engine/state/redisclock.py:
    every time that another host may compare is taken on it)."""
    r = connect(settings.state_url, settings.sentinel_master, settings.sentinel_secret)
    limiter = RedisRateLimiter(r, settings.api_rate)
    client = TencentClient(settings, limiter)

    calls = CallTally(r)  # written in one round trip at most every half second
    client.on_call = calls.record
    rt = Runtime(settings=settings, redis=r, client=client, calls=calls)
    # The clock measures on a quick client of the broker's Redis: a measure that cannot be
    # made must not hold a caller of rt.clock() for a normal client's timeouts and retries.
    rt.clock = clock if clock is not None else RedisClock(
        connect(settings.redis_url, settings.sentinel_master, settings.sentinel_secret,
                quick=TIMERS.clock.redis_quick))
    client.clock = rt.clock
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
