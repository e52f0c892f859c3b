"""worker.engine.ingest.drain: read kombu messages, claim batches, give back, recover, bound."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import pytest

from tests.unit.conftest import T0
from tests.unit.ingest.world import gift, ledger, start_battle
from tests.unit.state.server_clock import ServerClock
from worker.engine import deadletters
from worker.engine.ingest import drain
from worker.engine.ingest.drain import BadMessage, Message, decode, webhook_args
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.timers import TIMERS

KNOWN = {"scorer.webhook", "scorer.webhooks", "scorer.flush"}.__contains__


def _b64(payload: Any) -> str:
    return base64.b64encode(json.dumps(payload).encode()).decode()


def message(task: str, args: list[Any] | None = None, kwargs: dict[str, Any] | None = None,
            eta: str | None = None, **envelope: Any) -> str:
    """A Celery protocol 2 message as kombu's Redis transport queues it."""
    env = {"body": _b64([args or [], kwargs or {}, {"callbacks": None}]),
           "content-encoding": "utf-8", "content-type": "application/json",
           "headers": {"lang": "py", "task": task, "id": "id-1", "eta": eta},
           "properties": {"body_encoding": "base64", "delivery_tag": "t1"}}
    return json.dumps({**env, **envelope})


def _queue(rt: Runtime, *raws: str) -> None:
    """Publish like kombu: LPUSH, so the oldest is at the consuming (right) end."""
    for raw in raws:
        rt.broker.lpush(rt.settings.queue, raw)


def test_decode_reads_protocol_2_by_kwargs_or_args() -> None:
    assert webhook_args(decode(message("scorer.webhook", kwargs={"body": {"a": 1},
                                                                 "event_id": "e1"}))) == \
        ({"a": 1}, "e1")
    assert webhook_args(decode(message("scorer.webhook", args=[{"b": 2}, "e2"]))) == \
        ({"b": 2}, "e2")
    assert webhook_args(decode(message("scorer.webhook", args=[{"b": 2}]))) == ({"b": 2}, None)
    with pytest.raises(BadMessage, match="without a body"):
        webhook_args(decode(message("scorer.webhook")))


def test_decode_reads_protocol_1_and_a_plain_json_body() -> None:
    raw = json.dumps({"body": json.dumps({"task": "scorer.webhook", "args": [],
                                          "kwargs": {"body": {"x": 1}}, "eta": None}),
                      "content-type": "application/json", "properties": {}})
    assert decode(raw) == Message("scorer.webhook", [], {"body": {"x": 1}}, None)


@pytest.mark.parametrize("raw,why", [
    ("not json", "not a JSON envelope"),
    ("[1, 2]", "envelope is not an object"),
    (json.dumps({"headers": ["task"], "properties": {}}), "must be objects"),
    (message("scorer.webhook", body="%%%"), "not base64 JSON"),
    (message("scorer.webhook", body=_b64({"not": "a list"})), "must be \\[args, kwargs"),
    (message("scorer.webhook", body=_b64(["args", {}, {}])), "args must be a list"),
    (json.dumps({"body": _b64([1, 2]), "content-type": "application/json", "headers": {},
                 "properties": {"body_encoding": "base64"}}), "no task name"),
])
def test_decode_says_why_a_message_is_unreadable(raw: str, why: str) -> None:
    with pytest.raises(BadMessage, match=why):
        decode(raw)


def test_a_message_in_another_encoding_is_left_unread() -> None:
    assert not decode(message("scorer.webhook", **{"content-type": "application/x-pickle"}))\
        .readable
    zipped = json.loads(message("scorer.webhook"))
    zipped["headers"]["compression"] = "application/zlib"
    assert decode(json.dumps(zipped)) == Message("scorer.webhook", readable=False)


def test_ingest_messages_routes_each_kind_of_message(frt: Runtime) -> None:
    start_battle(frt)
    raws = [
        message("scorer.webhook", kwargs={"body": gift("room_a", 2), "event_id": "e1"}),
        message("scorer.webhooks", kwargs={"items": [{"body": gift("room_b", 3),
                                                      "event_id": "e2"}, "bad"]}),
        message("scorer.webhook", kwargs={"body": gift("room_a", 9)}, eta="2030-01-01"),
        message("scorer.flush", args=["b"]),  # a task of the app: Celery's to run
        message("scorer.webhook", **{"content-type": "application/x-pickle"}),
        message("someone.elses", args=[1]),
        "not json",
        message("scorer.webhook", kwargs={"event_id": "no body"}),
    ]
    counts = drain.ingest_messages(frt, raws, KNOWN)
    assert counts["messages"] == 8 and counts["ingested"] == 2
    assert counts["returned"] == 3 and counts["dead_lettered"] == 4
    assert ledger(frt) == {"room_a": 2, "room_b": 3}
    back = [decode(m) for m in frt.broker.lrange(frt.settings.queue, 0, -1)]
    assert sorted(str(m.task) for m in back) == ["scorer.flush", "scorer.webhook",
                                                 "scorer.webhook"]
    reasons = " ".join(e["reason"] for e in deadletters.list_entries(frt))
    assert "someone.elses" in reasons and "not a JSON envelope" in reasons
    assert "without a body" in reasons


def test_a_drain_request_needs_a_backlog_and_a_free_slot(frt: Runtime,
                                                         clock: ServerClock) -> None:
    assert drain.request(frt) is None
    _queue(frt, *[f"m{i}" for i in range(drain.THRESHOLD)])
    tokens = [drain.request(frt) for _ in range(drain.MAX_SLOTS + 2)]
    assert sum(t is not None for t in tokens) == drain.MAX_SLOTS
    clock.advance(drain.SLOT_LEASE + 0.001)  # their tasks never ran: the leases lapse
    assert drain.request(frt) is not None


def test_a_successor_takes_a_slot_whatever_the_queue(frt: Runtime, clock: ServerClock) -> None:
    token = drain.take_slot(frt)
    assert frt.broker.zscore(keys.DRAIN_SLOTS, token) == T0 + drain.SLOT_LEASE


def test_a_claim_key_in_use_is_refused(frt: Runtime) -> None:
    _queue(frt, "m1")
    claim = keys.drain_claim_key("same")
    frt.broker.rpush(claim, "left by a dead drain")
    with pytest.raises(Exception, match="claim key in use"):
        frt.script("DRAIN_CLAIM", broker=True)(
            keys=[frt.settings.queue, keys.DRAIN_CLAIMS, claim], args=[10])
    assert frt.broker.llen(frt.settings.queue) == 1


def test_stale_claims_go_back_to_the_consuming_end_oldest_first(frt: Runtime,
                                                                clock: ServerClock) -> None:
    _queue(frt, "m1", "m2", "m3", "m4")
    claim = keys.drain_claim_key("dead")
    got = frt.script("DRAIN_CLAIM", broker=True)(
        keys=[frt.settings.queue, keys.DRAIN_CLAIMS, claim], args=[3])
    assert got == ["m1", "m2", "m3"] and frt.broker.zscore(keys.DRAIN_CLAIMS, claim) == T0
    frt.broker.hset(keys.INGEST_WATERMARK, mapping={"w": "5", "cp_at": "6", "cp_msg": "m4"})
    clock.advance(drain.CLAIM_LEASE - 0.5)
    assert drain.recover(frt) == 0  # still within its lease
    clock.advance(1)
    assert drain.recover(frt) == 3
    assert [frt.broker.rpop(frt.settings.queue) for _ in range(4)] == ["m1", "m2", "m3", "m4"]
    assert not frt.broker.exists(claim) and frt.broker.zcard(keys.DRAIN_CLAIMS) == 0
    assert frt.broker.hgetall(keys.INGEST_WATERMARK) == {"w": "5"}  # the checkpoint dropped


def test_a_drain_claims_in_batches_and_releases_its_slot(frt: Runtime,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    start_battle(frt)
    monkeypatch.setattr(drain, "TIMERS",
                        replace(TIMERS, drain=replace(TIMERS.drain, batch=20, min_batch=5)))
    _queue(frt, *[message("scorer.webhook", kwargs={"body": gift("room_a", 1),
                                                    "event_id": f"e{i}"}) for i in range(47)])
    token = drain.take_slot(frt)
    pauses: list[float] = []
    counts = drain.drain(frt, token, KNOWN, sleep=pauses.append)
    assert counts["batches"] == 3 and counts["messages"] == 47 and counts["more"] == 0
    assert counts["ingested"] == 47 and ledger(frt) == {"room_a": 47}
    assert pauses == [drain.PAUSE]  # after the partial batch of 7, then a dry claim
    assert frt.broker.zcard(keys.DRAIN_SLOTS) == 0 and frt.broker.zcard(keys.DRAIN_CLAIMS) == 0
    assert not frt.broker.keys("bs:drain:claim:*")


def test_a_drain_out_of_time_asks_for_a_successor_only_in_a_flood(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drain, "TIMERS",
                        replace(TIMERS, drain=replace(TIMERS.drain, batch=10, min_batch=4)))
    _queue(frt, *[message("scorer.webhook", kwargs={"body": gift("room_a", 1)})
                  for _ in range(25)])
    ticks = iter([0.0, 99.0])  # started, then past run_for after the first batch
    counts = drain.drain(frt, "t", KNOWN, run_for=5.0, clock=lambda: next(ticks))
    assert counts["batches"] == 1 and counts["more"] == 1
    assert frt.broker.llen(frt.settings.queue) == 15
    frt.broker.ltrim(frt.settings.queue, 0, 2)  # a trickle left: no successor
    ticks = iter([0.0, 99.0])
    assert drain.drain(frt, "t", KNOWN, run_for=5.0, clock=lambda: next(ticks))["more"] == 0


def test_a_drain_whose_ingest_fails_keeps_its_claim_and_frees_its_slot(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    _queue(frt, message("scorer.webhook", kwargs={"body": gift("room_a", 1)}))
    token = drain.take_slot(frt)

    def outage(*args: Any) -> Any:
        raise ConnectionError("state Redis gone")

    monkeypatch.setattr(drain, "ingest_messages", outage)
    with pytest.raises(ConnectionError):
        drain.drain(frt, token, KNOWN)
    assert frt.broker.zcard(keys.DRAIN_SLOTS) == 0
    assert frt.broker.zcard(keys.DRAIN_CLAIMS) == 1  # recover() gives it back after its lease
