"""A frozen ingest consumer holds a popped message the queue and kombu's unacked set do not show.

An idle kombu consumer has a BRPOP pending: Redis pops the next message into its socket as soon
as it comes, and the consumer records it as unacknowledged only once it reads it. Frozen
(SIGSTOP), it holds that message out of every place the ingest watermark looks, and on main the
watermark passed it (reconcile then took the gift Tencent counted for a lost webhook: the
`frozen` referee scenario's false +2,493 correction). Now the watermark waits for every live
consumer to check in after a pop (worker/engine/ingest/consumers.py).
"""

from __future__ import annotations

import json
import os
import signal
import time

import redis
from celery import Celery

from scorer_local.stack import Processes
from tests.conftest import worker_env
from tests.helpers import gift_body, wait_for
from worker.engine.ingest import consumers, watermark
from worker.engine.state import keys
from worker.engine.state.redisclock import redis_now


def test_the_watermark_waits_for_a_frozen_consumer_holding_a_popped_message(
        rt, settings, tmp_path):
    procs = Processes(worker_env(settings), tmp_path)
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    producer = Celery(broker=settings.redis_url)
    producer.conf.task_serializer = "json"
    pid = None
    try:
        pid = procs.worker("worker", concurrency=1).pid  # the consumer: its main process
        wait_for(lambda: r.zcard(keys.INGEST_CONSUMERS) >= 1, timeout=60,
                 what="the worker's check-in")
        time.sleep(1.0)  # its BRPOP pending
        swallowed_at = None
        for attempt in range(5):  # until the frozen consumer's pending BRPOP takes it
            os.kill(pid, signal.SIGSTOP)
            time.sleep(0.3)
            sent = redis_now(r)
            producer.send_task("scorer.webhook", kwargs={
                "body": gift_body("frozen_room", "frozen_owner", 5, t=time.time()),
                "event_id": f"frozen-{attempt}"})
            time.sleep(0.5)
            if r.llen(settings.queue) == 0 and r.zcard(keys.KOMBU_UNACKED_INDEX) == 0:
                swallowed_at = sent
                break
            os.kill(pid, signal.SIGCONT)
            wait_for(lambda: r.llen(settings.queue) == 0, timeout=20, what="the queue drained")
            time.sleep(1.0)
        assert swallowed_at is not None, "the frozen consumer never took a message"
        # Neither queued nor unacknowledged: only the consumers' check-ins show it is held.
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            w = watermark.advance(rt).w
            assert w < swallowed_at, (w, swallowed_at)
            time.sleep(0.1)
        os.kill(pid, signal.SIGCONT)
        wait_for(lambda: watermark.advance(rt).w > swallowed_at, timeout=20,
                 what="the watermark once the consumer woke")
    finally:
        if pid is not None:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        r.close()
        procs.stop(30)


def test_a_consumer_that_left_or_died_is_not_waited_for(rt):
    now = rt.clock()
    rt.broker.zadd(keys.INGEST_CONSUMERS, {
        "elsewhere|1|old": now - consumers.DEAD_AFTER - 1,  # silent too long: dead
        f"{consumers.member().rsplit('|', 2)[0]}|999999999|gone": now - 2,  # no such pid here
        consumers.member(): now - 2,  # this process: alive, only quiet
    })
    assert consumers.forget_dead(rt, now) == (2, now - 2)  # (and when the dead one was seen)
    assert rt.broker.zrange(keys.INGEST_CONSUMERS, 0, -1) == [consumers.member()]
    consumers.leave(rt)
    assert rt.broker.zcard(keys.INGEST_CONSUMERS) == 0


def test_what_a_consumer_dead_here_had_taken_goes_back_at_once(rt):
    """A worker SIGKILLed just after it took a burst held the watermark, and every reconcile
    read, for STUCK_SECONDS (bench.chaos: reads stopped from 14 s to 28 s into its battles);
    its death is known at once (its pid is gone here), and so is what it may hold."""
    now = rt.clock()
    msg = {"body": "b", "headers": {"task": "scorer.webhook"}, "properties": {}}
    rt.broker.hset(keys.KOMBU_UNACKED, "held", json.dumps([msg, "", rt.settings.queue]))
    rt.broker.zadd(keys.KOMBU_UNACKED_INDEX, {"held": now - 3})  # taken 3 s ago, < STUCK
    # Taken by a live consumer after the dead one's last check-in: not its, it stays.
    rt.broker.hset(keys.KOMBU_UNACKED, "live", json.dumps([msg, "", rt.settings.queue]))
    rt.broker.zadd(keys.KOMBU_UNACKED_INDEX, {"live": now - 1.5})
    here = consumers.member().rsplit("|", 2)[0]
    rt.broker.zadd(keys.INGEST_CONSUMERS, {f"{here}|999999999|gone": now - 2.5})
    watermark.advance(rt)
    assert json.loads(rt.broker.rpop(rt.settings.queue)) == msg
    assert rt.broker.llen(rt.settings.queue) == 0
    assert rt.broker.hkeys(keys.KOMBU_UNACKED) == ["live"]
