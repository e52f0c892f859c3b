"""The dead-letter store on a real Redis: its replay, for webhooks and for whole task messages
kept unknown, and its bounds (each entry by bytes, the store by count and by bytes)."""

from __future__ import annotations

import json
import time

import redis

from tests.helpers import gift_body, start_body
from worker.engine import deadletters
from worker.engine.deadletters import MAX_DEAD_BODY, MAX_DEAD_ENTRY, dead_letter, list_entries
from worker.engine.ingest.gifts import handle
from worker.engine.ingest.replay import replay
from worker.engine.state import counters, keys
from worker.engine.state.pipeline import pipeline


def test_a_typoed_task_name_is_replayed_by_its_kwargs(rt, ctl):
    """`scorer.webhok` (a producer's typo) was kept whole by the unknown-task hook: once the
    battle is known, replay scores the gift it carries; a task message with no webhook in it
    stays in the store with its reason, neither replayed nor dead-lettered again."""
    rooms = {"dl_r1": "dl_o1", "dl_r2": "dl_o2"}
    info = ctl.create_battle(rooms, 600_000, start=time.time() - 1)
    handle(rt, [(start_body(info["BattleId"], info["StartTime"], 600_000, rooms), None)])
    gift = gift_body("dl_r1", "dl_o1", 11)
    dead_letter(rt, {"task": "scorer.webhok", "queue": "celery", "args": [],
                     "kwargs": {"body": gift, "event_id": "dl-1"}}, "t1",
                "unknown task 'scorer.webhok'")
    dead_letter(rt, {"task": "shop.refund", "queue": "celery", "args": [7], "kwargs": {}},
                "t2", "unknown task 'shop.refund'")
    before = rt.redis.hget(keys.STATS, "dead_lettered")
    out = replay(rt)
    assert out.get("ingested") == 1 and out.get("kept") == 1
    left = [json.loads(e) for e in rt.redis.lrange(keys.DEAD_LETTERS, 0, -1)]
    assert [e["reason"] for e in left] == ["unknown task 'shop.refund'"]
    assert rt.redis.hget(keys.STATS, "dead_lettered") == before  # not dead-lettered again
    assert replay(rt) == {"kept": 1}  # a second replay changes nothing


# -- the bounds, on a real Redis ----------------------------------------------------------------

#: Characters json escapes to more than themselves: quote, backslash, control, CJK, emoji.
ESCAPING = '"\\\x01\x1f\u4e2d\U0001f600'


def _stored(rt) -> list[bytes]:
    """The entries as Redis holds them, in bytes (a client that does not decode)."""
    raw = redis.Redis.from_url(rt.settings.state_url)
    try:
        return raw.lrange(keys.DEAD_LETTERS, 0, -1)
    finally:
        raw.close()


def test_an_entry_of_escaping_characters_stays_under_its_bound(rt):
    body = {"CallbackCommand": (ESCAPING * MAX_DEAD_BODY)[:MAX_DEAD_BODY],
            ESCAPING * 100: ESCAPING}
    dead_letter(rt, body, ESCAPING * 100, "bad: " + ESCAPING * 500)
    (stored,) = _stored(rt)
    assert len(stored) <= MAX_DEAD_ENTRY
    assert int(rt.redis.get(keys.DEAD_LETTERS_BYTES)) == len(stored)
    (entry,) = list_entries(rt)
    assert entry["reason"] == ("bad: " + ESCAPING * 500)[:1000]
    assert entry["event_id"] == (ESCAPING * 100)[:200]
    assert entry["body"]["bytes"] == len(json.dumps(body))


def test_many_big_entries_keep_the_store_under_its_byte_cap(rt, monkeypatch):
    cap = 2 * 1024 * 1024
    monkeypatch.setattr(deadletters, "MAX_DEAD_BYTES", cap)
    pipe = pipeline(rt.redis)
    for i in range(100):  # each near MAX_DEAD_ENTRY; half of them through a pipeline
        dead_letter(rt, {"i": i, "blob": ESCAPING * MAX_DEAD_BODY}, f"e{i}", "big",
                    pipe=pipe if i % 2 else None)
        if i % 2:
            pipe.execute()
        stored = _stored(rt)
        assert sum(map(len, stored)) == deadletters.size(rt) <= cap
    kept = len(stored)
    assert kept >= cap // MAX_DEAD_ENTRY
    assert counters.read(rt.redis)["dead_letters_dropped"] == 100 - kept
    assert [e["event_id"] for e in list_entries(rt, limit=kept)] == \
        [f"e{i}" for i in range(100 - kept, 100)]


def test_settle_keep_and_a_lost_total_keep_the_byte_total_right(rt):
    for i in range(5):
        dead_letter(rt, {"i": i, "pad": ESCAPING * 50 * i}, None, "r")
    assert deadletters.size(rt) == sum(map(len, _stored(rt)))
    assert deadletters.keep_oldest(rt)
    assert deadletters.size(rt) == sum(map(len, _stored(rt)))
    raw, _ = deadletters.head(rt)
    assert deadletters.settle_oldest(rt, raw) and not deadletters.settle_oldest(rt, raw)
    assert deadletters.size(rt) == sum(map(len, _stored(rt))) and deadletters.count(rt) == 4
    rt.redis.delete(keys.DEAD_LETTERS_BYTES)  # lost: counted afresh by the next change
    assert deadletters.settle_oldest(rt)
    assert deadletters.size(rt) == sum(map(len, _stored(rt)))
    while deadletters.settle_oldest(rt):
        pass
    assert deadletters.count(rt) == 0 and not rt.redis.exists(keys.DEAD_LETTERS_BYTES)
