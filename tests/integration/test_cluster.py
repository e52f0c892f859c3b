"""The pipeline with its state in a real 3-node Redis Cluster (the broker stays a plain Redis)."""

from __future__ import annotations

import time

import pytest
import redis

from scorer_local.sandbox_control import SandboxControl
from scorer_local.stack import RedisCluster
from tests.conftest import SDKAPPID, SECRET
from tests.helpers import gift_body, start_body
from worker.engine.flush.flusher import flush_battle
from worker.engine.ingest.gifts import handle
from worker.engine.reconcile.reconciler import reconcile_battle
from worker.engine.runtime import build_runtime
from worker.engine.settings import Settings


@pytest.fixture(scope="module")
def cluster():
    c = RedisCluster().start()
    yield c
    c.cleanup()


def test_pipeline_runs_on_a_redis_cluster(cluster, redis_url, sandbox):
    from tasks.control import run_tick

    s = Settings(_env_file=None, sdkappid=SDKAPPID, secret_key=SECRET, api_url=sandbox.url,
                 redis_url=redis_url, state_redis_url=cluster.url, flush_interval=0.2)
    rt = build_runtime(s)
    ctl = SandboxControl(sandbox.url)
    ids = []
    for i in range(6):  # battles and rooms spread over the cluster's slots
        rooms = {f"cr{i}a": f"co{i}a", f"cr{i}b": f"co{i}b"}
        start = time.time() - 1
        bid = ctl.create_battle(rooms, 60_000, start=start)["BattleId"]
        ids.append((bid, rooms))
        handle(rt, [(gift_body(f"cr{i}a", f"co{i}a", 4), f"held-{i}")])  # before the start
        handle(rt, [(start_body(bid, start, 60_000, rooms), None)])
        handle(rt, [(gift_body(f"cr{i}b", f"co{i}b", 6), f"g-{i}"),
                    (gift_body(f"cr{i}b", f"co{i}b", 6), f"g-{i}")])
    sent = []
    run_tick(rt, dispatch=lambda task, ids: sent.extend((task.name, b) for b in ids))
    for name, bid in sent:
        if name == "scorer.flush":
            flush_battle(rt, bid)
        else:
            reconcile_battle(rt, bid)
    for bid, rooms in ids:
        a, b = rooms
        assert ctl.scores(bid) == {a: 4, b: 6}
    nodes_used = {cluster.nodes.index(n) for n in cluster.nodes
                  if redis.Redis(host="127.0.0.1", port=n.port).dbsize()}
    assert len(nodes_used) >= 2  # the state really is spread over the cluster
