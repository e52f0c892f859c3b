"""worker.engine.ingest.intake: ingest messages stored, summarized without bodies, drains asked."""

from __future__ import annotations

import json

import pytest

from tests.unit.ingest.world import gift, ledger, start_battle
from worker.engine.ingest import drain, intake
from worker.engine.ingest.intake import store, store_items, summarize
from worker.engine.runtime import Runtime
from worker.engine.state import keys


def test_a_summary_shows_ids_never_the_body() -> None:
    body = {"CallbackCommand": "Live.CallbackBeforeSendGift", "RoomId": "r" * 300,
            "GiftWater": {"From_Account": "secret-viewer"}}
    shown = json.loads(summarize({"body": body, "event_id": "e1"}))
    assert shown == {"command": "Live.CallbackBeforeSendGift", "room_id": "r" * 128,
                     "event_id": "e1"}
    assert "secret-viewer" not in summarize({"body": body})


@pytest.mark.parametrize("kwargs,shown", [
    ({"items": [1, 2, 3]}, {"items": 3}),
    ({"items": "nope"}, {"items": "invalid"}),
    ({"body": "not a dict"}, {}),
    ({"body": {"CallbackCommand": "Live.CallbackAfterStartBattle", "BattleId": 7}},
     {"command": "Live.CallbackAfterStartBattle", "battle_id": "7"}),
    ("not kwargs", {}),
])
def test_a_summary_of_any_message(kwargs: object, shown: dict[str, object]) -> None:
    assert json.loads(summarize(kwargs)) == shown


def test_store_ingests_and_asks_no_drain_while_the_queue_is_short(frt: Runtime) -> None:
    start_battle(frt)
    sent: list[str] = []
    counts = store(frt, [(gift("room_a", 3), "e1")], sent.append)
    assert counts["ingested"] == 1 and ledger(frt) == {"room_a": 3}
    assert sent == [] and frt.broker.zcard(keys.DRAIN_SLOTS) == 0


def test_store_asks_a_drain_once_the_queue_backs_up(frt: Runtime) -> None:
    frt.broker.rpush(frt.settings.queue, *[f"m{i}" for i in range(drain.THRESHOLD)])
    sent: list[str] = []
    store(frt, [], sent.append)
    assert len(sent) == 1 and frt.broker.zscore(keys.DRAIN_SLOTS, sent[0]) is not None


def test_a_failed_drain_request_never_fails_the_stored_events(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    start_battle(frt)

    def broken(rt: Runtime) -> str | None:
        raise ConnectionError("broker gone")

    monkeypatch.setattr(intake.drain, "request", broken)
    counts = store(frt, [(gift("room_a", 3), "e1")], lambda token: None)
    assert counts["ingested"] == 1

    def send_fails(token: str) -> None:
        raise ConnectionError("broker gone")

    monkeypatch.setattr(intake.drain, "request", lambda rt: "token")
    assert store(frt, [(gift("room_a", 3), "e2")], send_fails)["ingested"] == 1


def test_store_items_counts_bad_items_as_dead_letters(frt: Runtime) -> None:
    start_battle(frt)
    counts = store_items(frt, [{"body": gift("room_a", 2), "event_id": "e1"}, "junk", {}],
                         lambda token: None)
    assert counts["ingested"] == 1 and counts["dead_lettered"] == 2
    assert store_items(frt, ["junk"], lambda token: None) == {"dead_lettered": 1}
    assert store_items(frt, "not a list", lambda token: None) == {"dead_lettered": 1}
