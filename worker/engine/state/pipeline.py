"""One way to batch Redis commands: a pipeline on one Redis, a serial batch on a Cluster.

redis-py's cluster pipeline refuses EVALSHA, and every state change is a Lua script, so on a
Cluster the batch runs each command at once (same interface, replies in order). On one Redis
it is a plain non-transactional pipeline: one round trip for the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import redis
from redis.client import Pipeline


class SerialBatch:
    """Pipeline look-alike that executes each command immediately and keeps its reply."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._replies: list[Any] = []

    def __len__(self) -> int:
        return len(self._replies)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        target = getattr(self._client, name)
        if name == "script_load":  # used by Script.__call__ on NOSCRIPT: not a reply
            return target

        def run(*args: Any, **kwargs: Any) -> SerialBatch:
            self._replies.append(target(*args, **kwargs))
            return self

        return run

    def execute(self) -> list[Any]:
        """The replies of the commands since the last execute, in order."""
        replies, self._replies = self._replies, []
        return replies


#: What `pipeline` returns: a redis-py pipeline, or its serial look-alike on a Cluster.
Batch: TypeAlias = Pipeline | SerialBatch


def is_cluster(client: object) -> bool:
    """True for a redis-py RedisCluster client."""
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def pipeline(client: redis.Redis) -> Batch:
    """A batch of commands for `client` (see the module docstring)."""
    return SerialBatch(client) if is_cluster(client) else client.pipeline(transaction=False)
