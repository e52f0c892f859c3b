"""A broker shared with an app's own Celery: the scorer on its own queue loses no gift, the
app loses no task, and a message the scorer does not know is dead-lettered, not discarded."""

from __future__ import annotations

import base64
import json
import os
import time
import uuid

import pytest
import redis
from celery import Celery

from scorer_local.sandbox_control import SandboxControl
from scorer_local.stack import Processes
from tests.conftest import ROOT, worker_env
from tests.helpers import gift_body, start_body, wait_for
from worker.engine.state import keys

QUEUE = "scorer"
ROOMS = {"sb_r1": "sb_o1", "sb_r2": "sb_o2"}


@pytest.fixture
def shared(settings, tmp_path):
    """The scorer's worker and beat with SCORER_QUEUE=scorer, and the app's worker on the
    default queue `celery`, all on the same Redis database."""
    env = worker_env(settings, queue=QUEUE)
    other_env = {**os.environ, "OTHERAPP_BROKER": settings.redis_url,
                 "PYTHONPATH": str(ROOT)}
    scorer = Processes(env, tmp_path)
    shop = Processes(other_env, tmp_path, app="tests.otherapp")
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:  # processes are stopped even when start-up fails (a leak outlives the test run)
        scorer.worker("worker", concurrency=1)
        scorer.beat()
        shop.worker("shop", concurrency=1)
        wait_for(lambda: float(r.hget(keys.INGEST_WATERMARK, "w") or 0) > 0, timeout=60,
                 what="the scorer's first ticks")
        yield r, tmp_path
    finally:
        scorer.stop(30)
        shop.stop(30)
        r.close()


def test_scorer_and_app_share_a_redis_and_lose_nothing(shared, settings, sandbox):
    r, logs = shared
    ctl = SandboxControl(sandbox.url)
    producer = Celery(broker=settings.redis_url)  # the app's producer, as the README shows
    producer.conf.task_serializer = "json"
    start = time.time()
    bid = ctl.create_battle(ROOMS, 20_000, start=start)["BattleId"]
    producer.send_task("scorer.webhook", queue=QUEUE,
                       kwargs={"body": start_body(bid, start, 20_000, ROOMS), "event_id": None})
    truth = {room: 0 for room in ROOMS}
    for n in range(40):
        room = list(ROOMS)[n % 2]
        truth[room] += n + 1
        producer.send_task("scorer.webhook", queue=QUEUE,
                           kwargs={"body": gift_body(room, ROOMS[room], n + 1),
                                   "event_id": f"sb-{n}"})
        producer.send_task("shop.record", args=[n])  # the app's own task, its default queue
    producer.send_task("shop.refund", queue=QUEUE, args=[7])  # sent to the wrong queue
    wait_for(lambda: ctl.scores(bid) == truth, timeout=60, what=f"scores {truth}")
    wait_for(lambda: r.scard("shop:done") == 40, timeout=60, what="the app's 40 tasks")
    wait_for(lambda: r.llen(keys.DEAD_LETTERS) >= 1, timeout=30, what="the unknown task kept")
    dead = [json.loads(e) for e in r.lrange(keys.DEAD_LETTERS, 0, -1)]
    # Taken by a drain (the queue was busy) or by Celery's consumer: kept either way.
    assert [d["reason"].endswith("unknown task 'shop.refund'") for d in dead] == [True]
    assert dead[0]["body"]["task"] == "shop.refund" and dead[0]["body"]["args"] == [7]
    assert "scorer.webhook" not in (logs / "shop.log").read_text()  # never on its queue
    ctl.close()


def test_an_unknown_task_on_an_idle_queue_is_dead_lettered_by_the_consumer(shared, settings):
    """One message alone (no drain): Celery's consumer rejects it as unregistered, and the
    task_unknown hook keeps it with its reason (worker/doors/unknown_tasks.py)."""
    r, _ = shared
    producer = Celery(broker=settings.redis_url)
    producer.send_task("shop.refund", queue=QUEUE, args=[8], kwargs={"why": "typo"})
    wait_for(lambda: r.llen(keys.DEAD_LETTERS) >= 1, timeout=30, what="the unknown task kept")
    dead = [json.loads(e) for e in r.lrange(keys.DEAD_LETTERS, 0, -1)]
    assert [d["reason"] for d in dead] == ["unknown task 'shop.refund'"]
    assert dead[0]["body"] == {"task": "shop.refund", "queue": QUEUE, "args": [8],
                               "kwargs": {"why": "typo"}}
    assert r.hget(keys.STATS, "dead_lettered") == "1"  # seen by the metrics and alerts


def hand_built_message(body: dict, event_id: str, queue: str) -> str:
    """The exact JSON a producer in another language pushes (LPUSH) onto the queue's Redis
    list: kombu's envelope around a Celery protocol 2 message (README, "Producers in other
    languages")."""
    task_id = str(uuid.uuid4())
    payload = [[], {"body": body, "event_id": event_id},
               {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    return json.dumps({
        "body": base64.b64encode(json.dumps(payload).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": "scorer.webhook", "id": task_id,
                    "root_id": task_id, "parent_id": None, "group": None},
        "properties": {"correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": queue},
                       "priority": 0, "body_encoding": "base64",
                       "delivery_tag": str(uuid.uuid4())},
    })


def test_a_hand_built_message_is_scored(shared, sandbox):
    """What a Go or Node producer does: LPUSH the JSON envelope; the worker scores it."""
    r, _ = shared
    ctl = SandboxControl(sandbox.url)
    start = time.time()
    rooms = {"hb_r1": "hb_o1", "hb_r2": "hb_o2"}
    bid = ctl.create_battle(rooms, 20_000, start=start)["BattleId"]
    r.lpush(QUEUE, hand_built_message(start_body(bid, start, 20_000, rooms), "hb-start", QUEUE))
    r.lpush(QUEUE, hand_built_message(gift_body("hb_r1", "hb_o1", 25), "hb-1", QUEUE))
    r.lpush(QUEUE, hand_built_message(gift_body("hb_r2", "hb_o2", 9), "hb-2", QUEUE))
    r.lpush(QUEUE, hand_built_message(gift_body("hb_r2", "hb_o2", 9), "hb-2", QUEUE))  # again
    wait_for(lambda: ctl.scores(bid) == {"hb_r1": 25, "hb_r2": 9}, timeout=60,
             what="the hand-built gifts scored once")
    assert not r.llen(keys.DEAD_LETTERS)
    ctl.close()
