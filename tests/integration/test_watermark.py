"""The ingest watermark against real Redis: queue, kombu's unacked messages, drain claims."""

from __future__ import annotations

import json
import time

from worker.engine.ingest import watermark
from worker.engine.state import keys


def _advance(rt, times: int = 3) -> watermark.Watermark:
    mark = None
    for _ in range(times):
        time.sleep(0.06)  # the script wants a little time between taking and promoting
        mark = watermark.advance(rt)
    return mark


def _unacked(rt, tag: str, routing_key: str, delivered: float) -> None:
    """A message a worker holds, as kombu's Redis transport records it."""
    rt.broker.hset(keys.KOMBU_UNACKED, tag, json.dumps([{"body": "..."}, "", routing_key]))
    rt.broker.zadd(keys.KOMBU_UNACKED_INDEX, {tag: delivered})


def test_follows_the_present_when_nothing_is_queued(rt):
    start = time.time()
    mark = _advance(rt)
    assert mark.w >= start and mark.lag < 1.0
    assert watermark.current(rt) == mark.w


def test_stops_at_a_message_that_stays_queued(rt):
    _advance(rt)
    rt.broker.lpush("celery", "m1")
    queued_at = time.time()
    mark = _advance(rt, 5)
    assert mark.w <= queued_at and mark.queue == 1
    rt.broker.rpop("celery")  # taken and done
    assert _advance(rt).w > queued_at


def test_waits_for_ingest_messages_a_worker_holds_but_not_for_control_ones(rt):
    _advance(rt)
    _unacked(rt, "c1", keys.CONTROL_QUEUE, time.time())  # a long control task: irrelevant
    _unacked(rt, "i1", "celery", time.time())  # an ingest task still running
    held_since = time.time()
    assert _advance(rt, 5).w <= held_since
    rt.broker.hdel(keys.KOMBU_UNACKED, "i1")  # acknowledged
    rt.broker.zrem(keys.KOMBU_UNACKED_INDEX, "i1")
    assert _advance(rt).w > held_since


def test_waits_for_a_drain_claim_being_ingested(rt):
    _advance(rt)
    rt.broker.lpush("celery", "m1", "m2")
    rt.script("DRAIN_CLAIM", broker=True)(
        keys=["celery", keys.DRAIN_CLAIMS, keys.drain_claim_key("x:0")], args=[10])
    claimed = time.time()
    assert _advance(rt, 5).w <= claimed
    rt.broker.delete(keys.drain_claim_key("x:0"))
    rt.broker.zrem(keys.DRAIN_CLAIMS, keys.drain_claim_key("x:0"))
    assert _advance(rt).w > claimed


def test_unknown_until_first_advanced(rt):
    assert watermark.current(rt) == 0.0


def test_an_ingest_message_of_a_dead_consumer_goes_back_to_the_queue(rt, monkeypatch):
    msg = {"body": "b", "headers": {"task": "scorer.webhook"}, "properties": {}}
    rt.broker.hset(keys.KOMBU_UNACKED, "dead1", json.dumps([msg, "", "celery"]))
    rt.broker.zadd(keys.KOMBU_UNACKED_INDEX, {"dead1": time.time() - 60})
    _unacked(rt, "ctl1", keys.CONTROL_QUEUE, time.time() - 60)  # a long control task: kept
    _unacked(rt, "live1", "celery", time.time())  # just taken: kept
    assert watermark.give_back_stuck(rt) == 1
    assert json.loads(rt.broker.rpop("celery")) == msg
    assert set(rt.broker.hkeys(keys.KOMBU_UNACKED)) == {"ctl1", "live1"}
