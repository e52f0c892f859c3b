"""The drain against real Redis: real Celery messages, crashes at each step, give-back rules."""

from __future__ import annotations

import base64
import json
import time

import pytest
from celery import Celery

from tests.helpers import gift_body, start_body
from worker.engine.ingest import drain
from worker.engine.ingest.gifts import handle
from worker.engine.state import keys
from worker.engine.state.keys import BattleKeys

ROOMS = {"room_a": "owner_a", "room_b": "owner_b"}
KNOWN = {"scorer.webhook", "scorer.webhooks", "scorer.flush", "bench.noop"}.__contains__


@pytest.fixture
def producer(rt):
    app = Celery(broker=rt.settings.redis_url)
    yield app
    app.close()


@pytest.fixture
def battle(rt, sandbox):
    from scorer_local.sandbox_control import SandboxControl

    ctl = SandboxControl(sandbox.url)
    info = ctl.create_battle(ROOMS, duration_ms=600_000, start=time.time() - 1)
    ctl.close()
    bid = info["BattleId"]
    handle(rt, [(start_body(bid, info["StartTime"], 600_000, ROOMS), None)])
    return bid


def _queue_gifts(producer, n: int, start: int = 0) -> int:
    total = 0
    with producer.producer_or_acquire() as prod:
        for i in range(start, start + n):
            room = "room_a" if i % 2 else "room_b"
            value = 1 + i % 7
            total += value
            producer.send_task("scorer.webhook", producer=prod, kwargs={
                "body": gift_body(room, ROOMS[room], value), "event_id": f"g{i}"})
    return total


def _ledger(rt, bid) -> int:
    return sum(int(v) for v in rt.redis.hgetall(BattleKeys(bid).ledger).values())


def test_decodes_the_messages_celery_sends(producer, rt):
    producer.send_task("scorer.webhook", kwargs={"body": {"a": 1}, "event_id": "e1"})
    producer.send_task("scorer.webhook", args=({"b": 2},))
    producer.send_task("scorer.webhooks", kwargs={"items": [{"body": {}, "event_id": None}]})
    first, second, third = reversed(rt.broker.lrange("celery", 0, -1))
    assert drain.webhook_args(drain.decode(first)) == ({"a": 1}, "e1")
    assert drain.webhook_args(drain.decode(second)) == ({"b": 2}, None)
    msg = drain.decode(third)
    assert msg.task == "scorer.webhooks" and msg.kwargs["items"][0]["body"] == {}


def test_a_hand_built_protocol_2_message_is_read():
    """What a producer in another language pushes onto the list (README: producers)."""
    body = base64.b64encode(json.dumps([[], {"body": {"x": 1}, "event_id": "h1"},
                                        {"callbacks": None}]).encode()).decode()
    raw = json.dumps({"body": body, "content-encoding": "utf-8",
                      "content-type": "application/json",
                      "headers": {"lang": "go", "task": "scorer.webhook", "id": "1"},
                      "properties": {"body_encoding": "base64", "delivery_tag": "t1",
                                     "delivery_mode": 2, "priority": 0,
                                     "delivery_info": {"exchange": "", "routing_key": "celery"}}})
    assert drain.webhook_args(drain.decode(raw)) == ({"x": 1}, "h1")


def test_drain_ingests_every_message_once(producer, rt, battle):
    total = _queue_gifts(producer, 1200)
    counts = drain.drain(rt, "t1", KNOWN)
    assert counts["messages"] == 1200 and counts["ingested"] == 1200
    assert counts["batches"] == 3  # 500 + 500 + 200
    assert _ledger(rt, battle) == total
    assert rt.broker.llen("celery") == 0 and rt.broker.zcard(keys.DRAIN_CLAIMS) == 0


@pytest.mark.parametrize("crash_after", ["claim", "ingest"])
def test_a_drain_that_dies_loses_nothing_and_counts_nothing_twice(producer, rt, battle,
                                                                  monkeypatch, crash_after):
    total = _queue_gifts(producer, 300)
    claim = keys.drain_claim_key("dead:0")
    raws = rt.script("DRAIN_CLAIM", broker=True)(
        keys=["celery", keys.DRAIN_CLAIMS, claim], args=[200])
    assert len(raws) == 200 and rt.broker.llen("celery") == 100
    if crash_after == "ingest":  # stored its events, died before releasing the claim
        drain.ingest_messages(rt, raws, KNOWN)
    # ...the process is gone. Until the lease runs out, the claim is left alone:
    assert drain.recover(rt) == 0
    monkeypatch.setattr(drain, "CLAIM_LEASE", 0.0)
    assert drain.recover(rt) == 200
    assert rt.broker.llen("celery") == 300 and rt.broker.zcard(keys.DRAIN_CLAIMS) == 0
    drain.drain(rt, "t2", KNOWN)
    assert _ledger(rt, battle) == total
    assert rt.redis.scard(BattleKeys(battle).seen) == 300


def test_other_tasks_go_back_to_celery_and_unknown_ones_are_kept(producer, rt, battle):
    from worker.engine import deadletters

    producer.send_task("bench.noop")
    producer.send_task("scorer.webhook", countdown=60,
                       kwargs={"body": gift_body("room_a", "owner_a", 5), "event_id": "later"})
    producer.send_task("someone.elses_task", args=(1,))
    rt.broker.lpush("celery", "not json at all")
    counts = drain.drain(rt, "t3", KNOWN)
    assert counts["returned"] == 2 and counts["dead_lettered"] == 2
    names = {drain.decode(m).task for m in rt.broker.lrange("celery", 0, -1)}
    assert names == {"bench.noop", "scorer.webhook"}
    reasons = [e["reason"] for e in deadletters.list_entries(rt)]
    assert any("someone.elses_task" in r for r in reasons)
    assert any("not a JSON envelope" in r for r in reasons)


def test_request_needs_a_backlog_and_bounds_the_drains(producer, rt, battle):
    assert drain.request(rt) is None  # nothing queued
    _queue_gifts(producer, drain.THRESHOLD)
    tokens = [drain.request(rt) for _ in range(drain.MAX_SLOTS + 2)]
    assert sum(t is not None for t in tokens) == drain.MAX_SLOTS
    drain.drain(rt, tokens[0], KNOWN)  # a drain frees its slot
    assert rt.broker.zcard(keys.DRAIN_SLOTS) == drain.MAX_SLOTS - 1


def test_sigkill_of_draining_processes_at_random_moments(settings, rt, battle, producer,
                                                         tmp_path):
    """A real worker drains a backlog while its pool children are SIGKILLed at random moments
    (mid-claim, mid-ingest, mid-release): every gift ends in the ledger exactly once."""
    import os
    import random
    import signal
    import subprocess
    from pathlib import Path

    from scorer_local.stack import Processes, children_map
    from tests.conftest import worker_env
    from tests.helpers import wait_for

    n = 6000
    total = _queue_gifts(producer, n)
    procs = Processes(worker_env(settings), tmp_path)
    worker = procs.start("worker", "worker", "--loglevel=INFO", "-n", "killme@%h")
    procs.beat()
    rng = random.Random(7)
    kills = 0
    try:
        # Kill draining processes, not starting ones (Celery gives up on a pool whose
        # children die before they first report ready: a start-up matter, not a drain's).
        wait_for(lambda: _ledger(rt, battle) > 0, timeout=60, interval=0.02,
                 what="the drain under way")
        deadline = time.time() + 20
        while time.time() < deadline and kills < 6 and rt.broker.llen("celery"):
            time.sleep(rng.uniform(0.05, 0.4))
            kids = [p for p in children_map().get(worker.pid, [])
                    if "scorer.control" not in Path(f"/proc/{p}/cmdline").read_text()]
            if kids:
                os.kill(rng.choice(kids), signal.SIGKILL)
                kills += 1
        assert kills >= 2, "the backlog drained before the kills: raise n"
        # A killed drain's claim comes back after its lease; the tick gives it back.
        wait_for(lambda: _ledger(rt, battle) >= total and not rt.broker.llen("celery")
                 and not rt.broker.zcard(keys.DRAIN_CLAIMS), timeout=90, interval=0.5,
                 what="every gift ingested")
        time.sleep(1)
        assert _ledger(rt, battle) == total
        assert rt.redis.scard(BattleKeys(battle).seen) == n
    finally:
        procs.stop()
        assert not subprocess.run(["pgrep", "-f", "killme"], capture_output=True).stdout
