"""worker.engine.state.pipeline: one round trip on one Redis, a serial batch on a Cluster."""

from __future__ import annotations

import fakeredis
import pytest
import redis
from redis.client import Pipeline
from redis.cluster import RedisCluster

from worker.engine.state import scripts
from worker.engine.state.pipeline import SerialBatch, is_cluster, pipeline


def test_one_redis_gets_a_plain_non_transactional_pipeline(
        fake_redis: fakeredis.FakeRedis) -> None:
    pipe = pipeline(fake_redis)
    assert isinstance(pipe, Pipeline) and not pipe.transaction
    pipe.set("a", 1).incr("a")
    assert fake_redis.get("a") is None  # nothing runs before execute
    assert pipe.execute() == [True, 2]


def test_a_cluster_client_gets_a_serial_batch() -> None:
    cluster = object.__new__(RedisCluster)  # an instance that never connected
    assert is_cluster(cluster)
    assert not is_cluster(fakeredis.FakeRedis())
    assert isinstance(pipeline(cluster), SerialBatch)


def test_a_serial_batch_runs_each_command_at_once_and_keeps_replies_in_order(
        fake_redis: fakeredis.FakeRedis) -> None:
    batch = SerialBatch(fake_redis)
    batch.set("a", 1).incr("a")
    assert fake_redis.get("a") == "2"  # already applied
    batch.hset("h", "f", "v")
    assert len(batch) == 3
    assert batch.execute() == [True, 2, 1]
    assert len(batch) == 0 and batch.execute() == []  # execute starts a new batch


def test_a_script_through_a_serial_batch_is_one_reply_even_after_noscript(
        fake_redis: fakeredis.FakeRedis) -> None:
    fake_redis.set("k", "me")
    release = scripts.load(fake_redis, "LOCK_RELEASE")
    fake_redis.script_flush()  # the EVALSHA fails with NOSCRIPT: script_load is no reply
    batch = SerialBatch(fake_redis)
    release(keys=["k"], args=["me"], client=batch)
    release(keys=["k"], args=["me"], client=batch)
    assert batch.execute() == [1, 0]


def test_a_failing_command_raises_at_once_and_is_no_reply(
        fake_redis: fakeredis.FakeRedis) -> None:
    fake_redis.set("s", "text")
    batch = SerialBatch(fake_redis)
    batch.set("a", 1)
    with pytest.raises(redis.ResponseError, match="integer"):
        batch.incr("s")
    assert batch.execute() == [True]
