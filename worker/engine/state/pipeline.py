"""One way to batch Redis commands: a pipeline on one Redis, a serial batch on a Cluster.

redis-py's cluster pipeline refuses EVALSHA, and every state change is a Lua script, so on a
Cluster the batch runs each command at once (same interface, replies in order). On one Redis
it is a plain non-transactional pipeline: one round trip for the whole batch.
"""

from __future__ import annotations

from typing import Any


class SerialBatch:
    """Pipeline look-alike that executes each command immediately and keeps its reply."""

    def __init__(self, client) -> None:
        self._client = client
        self._replies: list[Any] = []

    def __len__(self) -> int:
        return len(self._replies)

    def __getattr__(self, name: str):
        target = getattr(self._client, name)
        if name == "script_load":  # used by Script.__call__ on NOSCRIPT: not a reply
            return target

        def run(*args, **kwargs):
            self._replies.append(target(*args, **kwargs))
            return self

        return run

    def execute(self) -> list[Any]:
        replies, self._replies = self._replies, []
        return replies


def is_cluster(client) -> bool:
    """True for a redis-py RedisCluster client."""
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def pipeline(client):
    """A batch of commands for `client` (see the module docstring)."""
    return SerialBatch(client) if is_cluster(client) else client.pipeline(transaction=False)
