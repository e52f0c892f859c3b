"""worker.engine.deadletters: bad events kept with their reason, capped (each entry by bytes,
the store by count and by bytes), oldest first."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.unit.conftest import T0
from worker.engine import deadletters
from worker.engine.deadletters import (
    MAX_DEAD_BODY,
    MAX_DEAD_BYTES,
    MAX_DEAD_ENTRY,
    MAX_DEAD_LETTERS,
    count,
    dead_letter,
    head,
    is_truncated,
    keep_oldest,
    list_entries,
    oldest,
    settle_oldest,
    size,
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
    body = {"blob": "x" * (MAX_DEAD_BODY + 10)}
    dead_letter(frt, body, "e" * 500, "too big")
    (entry,) = list_entries(frt)
    raw = json.dumps(body)
    cut = entry["body"]
    assert set(cut) == {"truncated", "bytes"} and cut["bytes"] == len(raw)
    assert raw.startswith(cut["truncated"]) and len(json.dumps(cut)) <= MAX_DEAD_BODY
    assert len(cut["truncated"]) > MAX_DEAD_BODY - 100  # nothing to escape: nearly all kept
    assert entry["event_id"] == "e" * 200 and entry["reason"] == "too big"
    assert is_truncated(entry)


#: A character of each kind that json escapes to more than itself: a quote and a backslash
#: (2 bytes), a control character and one outside ASCII (6), one outside the BMP (12).
ESCAPING = ['"', "\\", "\x01", "\u4e2d", "\U0001f600"]


def _stored(frt: Runtime) -> list[bytes]:
    """The entries as Redis holds them, in bytes."""
    return [e.encode() for e in frt.redis.lrange(keys.DEAD_LETTERS, 0, -1)]


@pytest.mark.parametrize("ch", [*ESCAPING, "".join(ESCAPING)])
def test_a_body_of_escaping_characters_stays_under_the_entry_bound(frt: Runtime,
                                                                   ch: str) -> None:
    """A 64 KiB body made of characters that escape: as a string, as a value, as keys. Its
    entry is at most MAX_DEAD_ENTRY bytes, its reason and event id whole, its body marked."""
    text = (ch * MAX_DEAD_BODY)[:MAX_DEAD_BODY]
    bodies: list[Any] = [text, {"CallbackCommand": text},
                         {ch * 8 + str(i): ch for i in range(MAX_DEAD_BODY // 16)}]
    for body in bodies:
        dead_letter(frt, body, "evt-1", "bad body")
    stored = _stored(frt)
    assert len(stored) == 3 and max(map(len, stored)) <= MAX_DEAD_ENTRY
    for body, entry in zip(bodies, list_entries(frt), strict=True):
        assert (entry["reason"], entry["event_id"]) == ("bad body", "evt-1")
        assert is_truncated(entry) and entry["body"]["bytes"] == len(json.dumps(body))
        assert json.dumps(body).startswith(entry["body"]["truncated"])
        assert len(json.dumps(entry["body"])) <= MAX_DEAD_BODY


def test_the_entry_bound_holds_with_the_longest_reason_and_event_id(frt: Runtime) -> None:
    """Everything at its worst: a body of quotes, a reason and an event id of characters
    outside the BMP (12 bytes each once escaped), both past their cuts."""
    worst = "\U0001f600"
    dead_letter(frt, '"' * (4 * MAX_DEAD_BODY), worst * 5000, worst * 5000)
    (stored,) = _stored(frt)
    assert len(stored) <= MAX_DEAD_ENTRY
    (entry,) = list_entries(frt)
    assert entry["reason"] == worst * 1000 and entry["event_id"] == worst * 200
    # The body kept all the room it had: a quote is 4 bytes once escaped twice.
    assert len(entry["body"]["truncated"]) >= MAX_DEAD_BODY // 2 - 40


def test_a_body_is_cut_the_same_way_every_time(frt: Runtime) -> None:
    body = {"k": ('a"\\\u00e9' * MAX_DEAD_BODY)}
    dead_letter(frt, body, None, "r")
    dead_letter(frt, body, None, "r")
    first, second = list_entries(frt)
    assert first == second and is_truncated(first)


def test_a_body_that_fits_is_kept_whole_and_not_marked(frt: Runtime) -> None:
    body = {"text": "\u4e2d" * (MAX_DEAD_BODY // 7)}  # 6 bytes each once escaped: it fits
    dead_letter(frt, body, None, "r")
    (entry,) = list_entries(frt)
    assert entry["body"] == body and not is_truncated(entry)
    assert not is_truncated({"body": {"truncated": "x", "CallbackCommand": "y"}})
    assert is_truncated({"body": {"truncated": "x"}})  # as kept before the size was


def test_the_bounds_as_chosen() -> None:
    assert (MAX_DEAD_BODY, MAX_DEAD_ENTRY) == (64 * 1024, 80 * 1024)
    assert (MAX_DEAD_LETTERS, MAX_DEAD_BYTES) == (100_000, 256 * 1024 * 1024)


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


def _total(frt: Runtime) -> int:
    """The summed length of the entries kept: what the byte total must say."""
    return sum(map(len, _stored(frt)))


def _big(i: int) -> dict[str, Any]:
    return {"i": i, "blob": "\\" * MAX_DEAD_BODY}  # cut: an entry near its bound


def test_the_oldest_go_past_the_byte_cap_and_are_counted(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deadletters, "MAX_DEAD_BYTES", 5 * MAX_DEAD_BODY)
    for i in range(20):
        dead_letter(frt, _big(i), f"e{i}", "r")
        assert size(frt) == _total(frt) <= 5 * MAX_DEAD_BODY
    kept = [e["event_id"] for e in list_entries(frt)]
    assert kept == [f"e{i}" for i in range(20 - len(kept), 20)] and len(kept) == 4
    assert read(frt.redis)["dead_letters_dropped"] == 16
    dead_letter(frt, {"small": 1}, "s", "r")  # small ones fit beside them
    assert size(frt) == _total(frt) and count(frt) == 5


def test_the_newest_entry_is_kept_even_past_the_byte_cap(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deadletters, "MAX_DEAD_BYTES", 100)
    dead_letter(frt, {"i": 0}, None, "r")
    dead_letter(frt, _big(1), "last", "r")
    assert [e["event_id"] for e in list_entries(frt)] == ["last"] and size(frt) == _total(frt)
    assert read(frt.redis)["dead_letters_dropped"] == 1


def test_the_count_cap_keeps_the_byte_total_right(frt: Runtime,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deadletters, "MAX_DEAD_LETTERS", 3)
    for i in range(6):
        dead_letter(frt, {"i": "x" * i}, None, "r")
    assert count(frt) == 3 and size(frt) == _total(frt)


def test_keep_and_settle_keep_the_byte_total_right(frt: Runtime) -> None:
    for i in range(3):
        dead_letter(frt, {"i": i, "pad": "p" * 100 * i}, None, "r")
    before = size(frt)
    assert before == _total(frt)
    assert keep_oldest(frt) and size(frt) == before
    raw, _ = head(frt)  # type: ignore[misc]
    assert settle_oldest(frt, raw) and size(frt) == before - len(raw) == _total(frt)
    assert settle_oldest(frt) and settle_oldest(frt) and count(frt) == 0
    assert not frt.redis.exists(keys.DEAD_LETTERS_BYTES)  # none kept: no total at all
    assert not settle_oldest(frt) and not keep_oldest(frt)  # nothing to do
    assert read(frt.redis)["replayed"] == 3


def test_keep_and_settle_leave_an_entry_that_is_no_longer_the_oldest(frt: Runtime) -> None:
    dead_letter(frt, {"i": 0}, None, "r")
    dead_letter(frt, {"i": 1}, None, "r")
    gone, _ = head(frt)  # type: ignore[misc]
    settle_oldest(frt, gone)  # the one read is gone (the caps may drop it just the same)
    assert not settle_oldest(frt, gone) and not keep_oldest(frt, gone)
    assert [e["body"]["i"] for e in list_entries(frt)] == [1]
    assert read(frt.redis)["replayed"] == 1 and size(frt) == _total(frt)


def test_a_lost_byte_total_is_counted_afresh(frt: Runtime) -> None:
    for i in range(250):  # more than one slice of the recount
        dead_letter(frt, {"i": i}, None, "r")
    frt.redis.delete(keys.DEAD_LETTERS_BYTES)
    dead_letter(frt, {"i": 250}, None, "r")
    assert size(frt) == _total(frt)
    frt.redis.set(keys.DEAD_LETTERS_BYTES, -5)  # written around the script: healed as well
    settle_oldest(frt)
    assert size(frt) == _total(frt)
    frt.redis.delete(keys.DEAD_LETTERS_BYTES)
    settle_oldest(frt)
    assert size(frt) == _total(frt)


def test_entries_kept_before_the_total_existed_are_counted(
        frt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """After an upgrade the store holds entries with no total beside them: the first write
    counts them, and the byte cap holds from then on."""
    old = json.dumps({"reason": "r", "event_id": None, "at": T0, "body": {"truncated": "x" *
                                                                          MAX_DEAD_BODY}})
    frt.redis.rpush(keys.DEAD_LETTERS, *[old] * 10)
    monkeypatch.setattr(deadletters, "MAX_DEAD_BYTES", 3 * MAX_DEAD_BODY)
    dead_letter(frt, {"new": 1}, None, "r")
    assert count(frt) == 3 and size(frt) == _total(frt) <= 3 * MAX_DEAD_BODY
    assert read(frt.redis)["dead_letters_dropped"] == 8
