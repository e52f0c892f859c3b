"""worker.engine.ingest.replay: dead letters through ingest again, the still-bad kept, no loop."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.unit.ingest.world import gift, ledger, start_battle
from worker.engine import deadletters
from worker.engine.deadletters import MAX_DEAD_BODY, dead_letter, list_entries
from worker.engine.ingest.replay import replay
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.counters import read


def _task(kwargs: Any, task: str = "scorer.webhok") -> dict[str, Any]:
    """A whole task message as the unknown-task hook keeps it (a producer's typo)."""
    return {"task": task, "args": [], "kwargs": kwargs}


def test_a_fixed_dead_letter_is_ingested_and_removed(frt: Runtime) -> None:
    start_battle(frt)
    dead_letter(frt, gift("room_a", 4), "e1", "state Redis was down, say")
    counts = replay(frt)
    assert counts["ingested"] == 1 and counts["received"] == 1
    assert ledger(frt) == {"room_a": 4}
    assert deadletters.count(frt) == 0 and read(frt.redis)["replayed"] == 1


def test_a_still_bad_entry_is_kept_once_with_its_current_reason(frt: Runtime) -> None:
    dead_letter(frt, {"CallbackCommand": "Live.CallbackBeforeSendGift"}, None, "old reason")
    dead_letter(frt, ["junk"], None, "old reason")
    counts = replay(frt)
    assert counts["dead_lettered"] == 2 and counts["received"] == 2  # each tried once
    entries = list_entries(frt)
    assert len(entries) == 2 and all(e["reason"] != "old reason" for e in entries)
    assert read(frt.redis)["replayed"] == 2  # the old entries settled; new ones took over


def test_a_replayed_gift_counts_once_however_often_it_is_replayed(frt: Runtime) -> None:
    start_battle(frt)
    body = gift("room_b", 3)
    dead_letter(frt, body, "e1", "r")
    dead_letter(frt, body, "e1", "r")  # kept twice (a retry after a partial failure)
    counts = replay(frt)
    assert (counts["ingested"], counts["duplicate"]) == (1, 1)
    assert ledger(frt) == {"room_b": 3}


def test_task_messages_are_replayed_by_their_kwargs(frt: Runtime) -> None:
    start_battle(frt)
    dead_letter(frt, _task({"body": gift("room_a", 2), "event_id": "k1"}), None, "unknown task")
    dead_letter(frt, _task({"items": [{"body": gift("room_b", 5), "event_id": "k2"},
                                      "bad item"]}), None, "unknown task")
    counts = replay(frt)
    assert counts["ingested"] == 2 and ledger(frt) == {"room_a": 2, "room_b": 5}
    (left,) = list_entries(frt)  # the bad bulk item, dead-lettered anew
    assert left["body"] == "bad item"


def test_a_task_message_with_no_webhook_is_kept_as_it_is_at_the_end(frt: Runtime) -> None:
    no_webhook = _task({"x": 1}, task="someone.else")
    dead_letter(frt, no_webhook, None, "unknown task")
    dead_letter(frt, gift("room_a", 1), "later", "r")
    counts = replay(frt)
    assert counts["kept"] == 1
    (entry,) = list_entries(frt)  # the gift was held (no battle) and settled
    assert entry["body"] == no_webhook and entry["reason"] == "unknown task"


def test_a_webhook_body_with_a_task_field_is_still_a_webhook(frt: Runtime) -> None:
    start_battle(frt)
    body = {**gift("room_a", 6), "task": "not a task message"}
    dead_letter(frt, body, "t1", "r")
    assert replay(frt)["ingested"] == 1


def test_replay_stops_at_its_limit(frt: Runtime) -> None:
    start_battle(frt)
    for i in range(3):
        dead_letter(frt, gift("room_a", 1), f"e{i}", "r")
    assert replay(frt, limit=2)["ingested"] == 2
    assert deadletters.count(frt) == 1
    assert replay(frt) == {"received": 1, "dead_lettered": 0, "ignored": 0, "lifecycle": 0,
                           "ingested": 1, "duplicate": 0, "held": 0, "not_to_owner": 0}
    assert replay(frt) == {}


def test_a_truncated_entry_is_kept_as_it_is_with_its_reason(frt: Runtime) -> None:
    """A body cut when it was kept cannot be replayed: it stays, with its original reason and
    event id, neither handled (a new reason would replace the old) nor cut again."""
    start_battle(frt)
    big = {**gift("room_a", 2), "pad": '"' * MAX_DEAD_BODY}
    dead_letter(frt, big, "big-1", "too many rooms")
    before = list_entries(frt)
    counts = replay(frt)
    assert counts == {"kept": 1, "truncated": 1}
    assert list_entries(frt) == before and before[0]["reason"] == "too many rooms"
    assert before[0]["event_id"] == "big-1" and ledger(frt) == {}
    assert read(frt.redis)["dead_lettered"] == 0 and read(frt.redis)["replayed"] == 0
    assert replay(frt) == counts  # again: the same, no loop, nothing lost


def test_a_truncated_entry_kept_before_its_size_was_marked_is_kept_too(frt: Runtime) -> None:
    old = {"reason": "r", "event_id": "e1", "at": 1.0, "body": {"truncated": '{"Callback'}}
    frt.redis.rpush(keys.DEAD_LETTERS, json.dumps(old))
    assert replay(frt) == {"kept": 1, "truncated": 1} and list_entries(frt) == [old]


def test_an_entry_the_cap_drops_while_replayed_takes_no_other_with_it(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store is full: the still-bad oldest entry, dead-lettered anew by its replay, pushes
    itself out. Settling must not then remove the next entry, not yet replayed."""
    start_battle(frt)
    monkeypatch.setattr(deadletters, "MAX_DEAD_LETTERS", 2)
    dead_letter(frt, ["junk"], None, "old reason")
    dead_letter(frt, gift("room_a", 7), "g1", "state Redis was down, say")
    counts = replay(frt)
    assert counts["ingested"] == 1 and ledger(frt) == {"room_a": 7}
    assert [e["body"] for e in list_entries(frt)] == [["junk"]]
    assert read(frt.redis)["dead_letters_dropped"] == 1
