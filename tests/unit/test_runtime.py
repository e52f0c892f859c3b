"""worker.engine.runtime: Redis clients by URL, the per-process runtime and its parts."""

from __future__ import annotations

import time
from typing import Any

import fakeredis
import pytest
import redis
from redis.cluster import RedisCluster

from tests.unit.conftest import T0
from worker.engine import runtime
from worker.engine.runtime import Runtime, build_runtime, connect, get_runtime, set_runtime
from worker.engine.settings import Settings
from worker.engine.state import keys, scripts
from worker.engine.tencent.limiter import RedisRateLimiter
from worker.engine.timers import TIMERS


def _kwargs(client: redis.Redis) -> dict[str, Any]:
    return client.connection_pool.connection_kwargs


def test_a_plain_url_gets_a_client_with_timeouts_on_every_command() -> None:
    r = connect("redis://:pw@h:6379/2")  # no connection is made yet
    kw = _kwargs(r)
    assert (kw["host"], kw["port"], kw["db"], kw["password"]) == ("h", 6379, 2, "pw")
    assert kw["decode_responses"] is True
    assert (kw["socket_timeout"], kw["socket_connect_timeout"]) == (10, 5)
    assert kw["health_check_interval"] == 10 and kw["retry_on_timeout"] is True


def test_a_quick_client_says_down_within_its_callers_deadline() -> None:
    kw = _kwargs(connect("redis://h:6379/0", quick=0.5))
    assert (kw["socket_timeout"], kw["socket_connect_timeout"]) == (0.5, 0.5)
    assert kw["retry"].get_retries() == 1  # one immediate retry, no back-off
    assert "health_check_interval" not in kw


def test_a_cluster_url_gets_a_cluster_client_on_its_node_url(
        monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[str, dict[str, Any]]] = []

    def from_url(url: str, **kw: Any) -> str:
        made.append((url, kw))
        return "cluster-client"

    monkeypatch.setattr(RedisCluster, "from_url", from_url)
    assert connect("redis+cluster://:pw@c1:7000/0") == "cluster-client"  # type: ignore[comparison-overlap]
    connect("redis+cluster://c1:7000", quick=0.25)
    assert made == [("redis://:pw@c1:7000/0", {"decode_responses": True}),
                    ("redis://c1:7000", {"decode_responses": True, "socket_timeout": 0.25,
                                         "socket_connect_timeout": 0.25})]


def test_a_sentinel_url_gets_the_named_master_through_its_sentinels() -> None:
    r = connect("sentinel://u:pw@s1:26379/3;sentinel://u:pw@s2:26380/3", "mymaster", "spw")
    pool = r.connection_pool
    assert pool.service_name == "mymaster"  # type: ignore[attr-defined]
    kw = pool.connection_kwargs
    assert (kw["db"], kw["username"], kw["password"]) == (3, "u", "pw")  # the master's auth
    sentinels = [s.connection_pool.connection_kwargs
                 for s in pool.sentinel_manager.sentinels]  # type: ignore[attr-defined]
    assert [(s["host"], s["port"], s.get("password")) for s in sentinels] == [
        ("s1", 26379, "spw"), ("s2", 26380, "spw")]  # the Sentinels' own password
    with pytest.raises(ValueError, match="SCORER_SENTINEL_MASTER"):
        connect("sentinel://s1:26379")


def test_the_broker_is_the_state_redis_when_their_urls_agree(frt: Runtime) -> None:
    assert frt.settings.redis_url == frt.settings.state_url
    assert frt.broker is frt.redis
    assert frt.script("DRAIN_CLAIM", broker=True) is scripts.load(frt.redis, "DRAIN_CLAIM")


def test_a_separate_broker_is_connected_once_and_gets_its_own_scripts(
        frt: Runtime, unit_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    broker = fakeredis.FakeRedis(decode_responses=True)
    asked: list[tuple[Any, ...]] = []

    def fake_connect(*args: Any) -> fakeredis.FakeRedis:
        asked.append(args)
        return broker

    monkeypatch.setattr(runtime, "connect", fake_connect)
    settings = unit_settings.model_copy(update={"state_redis_url": "redis://state:6379/1"})
    rt = Runtime(settings=settings, redis=frt.redis, client=frt.client, clock=frt.clock)
    assert rt.broker is broker and rt.broker is broker  # the second read reuses the first
    assert asked == [("redis://unit.invalid:6379/0", None, None)]
    assert rt.script("WATERMARK", broker=True).registered_client is broker
    assert rt.script("WATERMARK").registered_client is frt.redis


def test_tencents_clock_follows_the_runtimes_clock(frt: Runtime) -> None:
    assert frt.tclock.clock() == T0
    frt.clock = lambda: T0 + 42  # tests move a runtime's clock by replacing it
    assert frt.tclock.clock() == T0 + 42
    assert frt.tclock.latest() == T0 + 42 + 0.5  # no sample yet: the default spread


def test_build_runtime_wires_the_limiter_metrics_and_the_clock(
        unit_settings: Settings, fake_redis: fakeredis.FakeRedis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "connect", lambda url, master, password: fake_redis)
    rt = build_runtime(unit_settings, clock=lambda: T0)
    try:
        assert rt.redis is fake_redis and rt.clock() == T0
        assert isinstance(rt.client.limiter, RedisRateLimiter)
        assert rt.client.limiter.rate == 180  # SCORER_API_RATE 200, with the headroom
        assert rt.client.on_answer == rt.tclock.observe_date
        assert rt.client.on_call is not None
        assert rt.calls is not None and rt.calls.every == TIMERS.state.call_metrics_every
        rt.client.on_call("get_gift_count", "success", 0.02, 0.0)
        rt.client.on_call("get_gift_count", "success", 0.03, 0.0)
        assert fake_redis.hgetall(keys.METRICS_CALLS) == {}  # added up, not written yet
        rt.calls.close()
        assert fake_redis.hgetall(keys.METRICS_CALLS) == {"get_gift_count|success": "2"}
        # ... and written by the timer without waiting for another call.
        rt.calls.every = 0.05
        rt.client.on_call("get_gift_count", "success", 0.02, 0.0)
        deadline = time.monotonic() + 5
        while (fake_redis.hget(keys.METRICS_CALLS, "get_gift_count|success") != "3"
               and time.monotonic() < deadline):
            time.sleep(0.01)
        assert fake_redis.hgetall(keys.METRICS_CALLS) == {"get_gift_count|success": "3"}

        def down(*args: Any, **kwargs: Any) -> None:
            raise redis.ConnectionError("gone")

        monkeypatch.setattr(fake_redis, "pipeline", down)
        rt.client.on_call("get_gift_count", "success", 0.02, 0.0)  # metrics never fail a call
        rt.calls._due()  # and their timer swallows a Redis outage
    finally:
        rt.client.close()


def test_get_runtime_builds_once_per_process(frt: Runtime,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_runtime() is frt  # installed by the fixture
    built: list[Settings] = []

    def build(settings: Settings) -> Runtime:
        built.append(settings)
        return frt

    monkeypatch.setattr(runtime, "build_runtime", build)
    monkeypatch.setattr(runtime, "get_settings", lambda: frt.settings)
    monkeypatch.setattr(runtime, "_pid", -1)  # as in a forked child
    assert get_runtime() is frt and get_runtime() is frt
    assert built == [frt.settings]
    set_runtime(None)
    get_runtime()
    assert len(built) == 2
