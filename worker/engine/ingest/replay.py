"""Replay: run dead letters through ingest again, after a fix; those still bad are kept again.

Ingest writes to the store (worker/engine/deadletters.py), which never imports ingest: this
module, which needs both, sits above them.
"""

from __future__ import annotations

import logging
from typing import Any

from worker.engine import deadletters
from worker.engine.ingest.gifts import bulk_pairs, handle
from worker.engine.runtime import Runtime

log = logging.getLogger("scorer.ingest")


def replay(rt: Runtime, limit: int = 10_000) -> dict[str, int]:
    """Run dead letters through ingest again (after a fix); those still bad are kept again.

    Each entry is handled before it is removed (a crash in between replays it again, which
    ingest's de-duplication makes harmless); one that still fails is appended anew by
    handle() with its current reason. Only as many entries as were there at the start are
    replayed, so a still-bad entry is not retried in a loop. An entry whose body was cut when
    it was kept (deadletters.is_truncated) cannot be replayed: it stays as it is, original
    reason and event id with it, moved to the end (`kept`, and `truncated`), as does a task
    message with no webhook in it (`kept`). An entry the store's caps dropped while it was
    being replayed is gone already: nothing else is removed in its place.
    """
    total: dict[str, int] = {}
    for _ in range(min(limit, deadletters.count(rt))):
        got = deadletters.head(rt)
        if got is None:
            break
        raw, entry = got
        cut = deadletters.is_truncated(entry)
        pairs = None if cut else _pairs(rt, entry)
        if pairs is None:  # a cut body, or a task message with no webhook: kept, at the end
            if deadletters.keep_oldest(rt, raw):  # (unless the caps dropped it meanwhile)
                total["kept"] = total.get("kept", 0) + 1
                if cut:
                    total["truncated"] = total.get("truncated", 0) + 1
            continue
        for k, v in handle(rt, pairs).items():
            total[k] = total.get(k, 0) + v
        deadletters.settle_oldest(rt, raw)
    if total.get("truncated"):
        log.warning("%d dead letters not replayed: their body was cut when they were kept "
                    "(battle-scorer dead-letters list shows them)", total["truncated"])
    return total


def _pairs(rt: Runtime, entry: dict[str, Any]) -> list[tuple[Any, Any]] | None:
    """The webhooks an entry holds. A whole task message (an unknown task name, such as a
    producer's typo of `scorer.webhook`, kept by worker/doors/unknown_tasks.py or a drain) is
    replayed by its kwargs: `body` as one webhook, `items` as a bulk; with neither it holds
    no webhook (None)."""
    body: Any = entry.get("body")
    if not (isinstance(body, dict) and "task" in body and "CallbackCommand" not in body):
        return [(body, entry.get("event_id"))]
    kwargs: dict[str, Any] = body["kwargs"] if isinstance(body.get("kwargs"), dict) else {}
    if isinstance(kwargs.get("body"), dict):
        return [(kwargs["body"], kwargs.get("event_id"))]
    if isinstance(kwargs.get("items"), list):
        return bulk_pairs(rt, kwargs["items"])[0]
    return None
