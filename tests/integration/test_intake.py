"""Ingest messages (worker/engine/ingest/intake.py): what Flower may show of them, and how a bulk
message's items are stored, with a drain asked for once the queue backs up."""

from __future__ import annotations

import json

from scorer_local.bodies import gift_body, start_body
from worker.engine.ingest import drain, intake


def test_a_summary_shows_ids_and_never_the_body():
    assert intake.summarize("not a dict") == "{}"
    assert json.loads(intake.summarize({"items": [1, 2, 3]})) == {"items": 3}
    assert json.loads(intake.summarize({"items": "x"})) == {"items": "invalid"}
    body = gift_body("room_a", "owner_a", 10)
    shown = json.loads(intake.summarize({"body": body, "event_id": "e" * 300}))
    assert shown == {"command": body["CallbackCommand"], "room_id": "room_a",
                     "event_id": "e" * 128}
    assert "GiftWater" not in intake.summarize({"body": body})


def test_bulk_items_are_stored_and_bad_ones_counted_as_dead_letters(rt, monkeypatch):
    now = rt.clock()
    sent: list[str] = []
    monkeypatch.setattr(drain, "request", lambda rt: "token-1")
    items = [{"body": start_body("b1", now - 10, 300_000, {"room_a": "owner_a"})},
             {"body": gift_body("room_a", "owner_a", 10, t=now), "event_id": "g1"},
             {"no": "body"}]
    counts = intake.store_items(rt, items, sent.append)
    assert counts["ingested"] == 1 and counts["lifecycle"] == 1
    assert counts["dead_lettered"] == 1
    assert sent == ["token-1"]


def test_a_failed_drain_request_never_fails_the_stored_events(rt, monkeypatch):
    def broken(rt):
        raise ConnectionError("broker gone")

    monkeypatch.setattr(drain, "request", broken)
    counts = intake.store(rt, [(gift_body("room_z", "owner_z", 1), "g2")], lambda token: None)
    assert counts["held"] == 1
