"""The dead-letter store's replay, for webhooks and for whole task messages kept unknown."""

from __future__ import annotations

import json
import time

from tests.helpers import gift_body, start_body
from worker.engine.deadletters import dead_letter
from worker.engine.ingest.gifts import handle
from worker.engine.ingest.replay import replay
from worker.engine.state import keys


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
