"""Fuzz: arbitrary JSON into ingest and the receiver; nothing crashes, nothing valid is lost."""

from __future__ import annotations

import itertools
import json
import time

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scorer_local.sandbox_control import SandboxControl
from tests.conftest import SDKAPPID
from tests.helpers import gift_body, start_body
from worker.doors.receiver.serve import Receiver
from worker.engine import events
from worker.engine.flush.flusher import flush_battle
from worker.engine.ingest.gifts import handle

_n = itertools.count()
OUTCOMES = ("ingested", "duplicate", "held", "not_to_owner", "ignored", "lifecycle",
            "dead_lettered")

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30),
                    st.floats(allow_nan=False), st.text(max_size=50),
                    st.text(alphabet="{}%:|*\x00\u202e", max_size=20),
                    st.just("x" * 5000))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12)


def _nested(depth: int):
    v: object = {"RoomId": "r"}
    for _ in range(depth):
        v = {"GiftWater": v}
    return v


@st.composite
def mutated_gift(draw):
    """A valid gift body with one field replaced by something arbitrary."""
    body = gift_body(f"fz{next(_n)}", "own", 5)
    where = draw(st.sampled_from(["RoomId", "CallbackCommand", "GiftWater", "Count", "Coins",
                                  "Time", "To_Account", "From_Account", "GiftId"]))
    value = draw(json_values)
    if where in ("RoomId", "CallbackCommand", "GiftWater"):
        body[where] = value
    else:
        body["GiftWater"][where] = value
    return body


bodies = st.one_of(json_values, mutated_gift(), st.just(_nested(200)),
                   st.fixed_dictionaries({"CallbackCommand": st.sampled_from(
                       [*events.COMMANDS, "Live.Unknown"])}, optional={
                       "BattleId": json_values, "RoomId": st.text(max_size=300)}))
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(batch=st.lists(st.tuples(bodies, st.one_of(st.none(), json_values)), max_size=6))
def test_ingest_accounts_for_every_item_and_never_raises(rt, batch):
    counts = handle(rt, batch)
    assert counts["received"] == len(batch)
    assert sum(counts.get(k, 0) for k in OUTCOMES) == len(batch), counts
    for raw in rt.redis.lrange("bs:deadletters", 0, -1):
        assert json.loads(raw)["reason"]


@FUZZ
@given(items=st.one_of(json_values, st.lists(st.one_of(
    json_values, st.fixed_dictionaries({"body": bodies, "event_id": json_values})),
    max_size=5)))
def test_bulk_task_never_raises(rt, items):
    from tasks.ingest import webhooks

    webhooks.run(items)


def test_keys_stay_bounded_and_tagged(rt):
    batch = [(gift_body("{evil}" + "r" * 100, "o{x}", 1), "id{1}"),
             (start_body("b{tag}", time.time(), 60_000, {"{r}": "{o}"}), None),
             (gift_body("{r}", "{o}", 3), "e{2}")]
    handle(rt, batch)
    keys = list(rt.redis.scan_iter("*"))
    assert keys
    for key in keys:
        assert key.startswith("bs:") and len(key) <= 300
        if "{" in key:  # exactly one hash tag, of our own making
            tag = key[key.index("{") + 1:key.index("}")]
            assert tag.split(":")[0] in ("b", "r", "rl") and key.count("{") == 1


def test_valid_events_in_a_garbage_batch_still_count(rt, sandbox):
    ctl = SandboxControl(sandbox.url)
    rooms = {"fv1": "ov1", "fv2": "ov2"}
    start = time.time() - 1
    bid = ctl.create_battle(rooms, 60_000, start=start)["BattleId"]
    garbage = [({"CallbackCommand": events.GIFT, "RoomId": ["x"]}, None), ([1, 2], None),
               (_nested(300), None), ("text", None), ({"GiftWater": None}, {"id": 1})]
    valid = [(start_body(bid, start, 60_000, rooms), None),
             (gift_body("fv1", "ov1", 7), "v1"), (gift_body("fv2", "ov2", 11), "v2")]
    counts = handle(rt, garbage[:3] + valid + garbage[3:])
    assert counts["ingested"] == 2 and counts["dead_lettered"] == 5
    assert flush_battle(rt, bid) == "ok"
    assert ctl.scores(bid) == {"fv1": 7, "fv2": 11}


@settings(max_examples=40, deadline=None)
@given(payload=st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v)
                                                                   .encode()),
                         st.just(b"\xff\xfe" * 10), st.just(b"{" * 5000)))
def test_receiver_answers_every_body_without_5xx(payload):
    got: list = []
    rec = Receiver(SDKAPPID, None, lambda body, event_id: got.append(body)).start()
    try:
        r = httpx.post(rec.url, params={"SdkAppid": SDKAPPID}, content=payload, timeout=5)
        assert r.status_code in (200, 400, 413)
        assert all(isinstance(b, dict) for b in got)
    finally:
        rec.stop()


def test_receiver_rejects_a_huge_body():
    rec = Receiver(SDKAPPID, None, lambda body, event_id: None).start()
    try:
        r = httpx.post(rec.url, params={"SdkAppid": SDKAPPID}, content=b"x" * 200_000,
                       timeout=5)
        assert r.status_code == 413
    finally:
        rec.stop()
