"""worker.engine.deadletters: bad events kept with their reason, capped, oldest first."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.unit.conftest import T0
from worker.engine import deadletters
from worker.engine.deadletters import (
    MAX_DEAD_BODY,
    count,
    dead_letter,
    keep_oldest,
    list_entries,
    oldest,
    settle_oldest,
)
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.counters import read
from worker.engine.state.pipeline import pipeline


def test_an_entry_keeps_the_body_its_reason_its_event_id_and_when(frt: Runtime) -> None:
    dead_letter(frt, {"CallbackCommand": "x", "n": 1}, 12345, "bad: n")
    assert list_entries(frt) == [{"reason": "bad: n", "event_id": "12345", "at": T0,
                                  "body": {"CallbackCommand": "x", "n": 1}}]
    dead_letter(frt, "plain", None, "why")
    assert list_entries(frt)[1]["event_id"] is None


def test_a_body_json_cannot_hold_is_kept_as_its_repr(frt: Runtime) -> None:
    loop: list[Any] = []
    loop.append(loop)
    dead_letter(frt, {"when": {1, 2}}, None, "a set")  # default=repr: kept inside the object
    dead_letter(frt, loop, None, "a cycle")  # not serializable at all: its repr, as a string
    first, second = list_entries(frt)
    assert first["body"] == {"when": "{1, 2}"}
    assert second["body"] == "[[...]]"


def test_a_giant_body_and_event_id_are_cut(frt: Runtime) -> None:
    dead_letter(frt, {"blob": "x" * (MAX_DEAD_BODY + 10)}, "e" * 500, "too big")
    (entry,) = list_entries(frt)
    assert set(entry["body"]) == {"truncated"} and len(entry["body"]["truncated"]) == \
        MAX_DEAD_BODY
    assert entry["event_id"] == "e" * 200


def test_the_oldest_go_past_the_cap(frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deadletters, "MAX_DEAD_LETTERS", 3)
    for i in range(5):
        dead_letter(frt, {"i": i}, None, "r")
    assert [e["body"]["i"] for e in list_entries(frt)] == [2, 3, 4]


def test_dropped_dead_letters_are_counted(frt: Runtime,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deadletters, "MAX_DEAD_LETTERS", 3)
    for i in range(5):
        dead_letter(frt, {"i": i}, None, "r")
    assert read(frt.redis).get("dead_letters_dropped") == 2


def test_with_a_pipeline_the_entry_is_written_when_the_caller_executes(frt: Runtime) -> None:
    pipe = pipeline(frt.redis)
    dead_letter(frt, {"a": 1}, None, "later", pipe=pipe)
    dead_letter(frt, {"a": 2}, None, "later", pipe=pipe)
    assert count(frt) == 0
    pipe.execute()
    assert [e["body"] for e in list_entries(frt)] == [{"a": 1}, {"a": 2}]


def test_list_entries_reads_the_oldest_first_up_to_a_limit(frt: Runtime) -> None:
    assert list_entries(frt) == [] and oldest(frt) is None and count(frt) == 0
    for i in range(4):
        dead_letter(frt, {"i": i}, None, "r")
    assert [e["body"]["i"] for e in list_entries(frt, limit=2)] == [0, 1]
    assert oldest(frt)["body"] == {"i": 0} and count(frt) == 4  # type: ignore[index]


def test_keep_moves_the_oldest_to_the_end_and_settle_removes_and_counts_it(
        frt: Runtime) -> None:
    for i in range(3):
        dead_letter(frt, {"i": i}, None, "r")
    keep_oldest(frt)
    assert [e["body"]["i"] for e in list_entries(frt)] == [1, 2, 0]
    settle_oldest(frt)
    assert [e["body"]["i"] for e in list_entries(frt)] == [2, 0]
    assert read(frt.redis)["replayed"] == 1
    assert [json.loads(x)["body"]["i"] for x in frt.redis.lrange(keys.DEAD_LETTERS, 0, -1)] \
        == [2, 0]
