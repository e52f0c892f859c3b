"""The dead-letter store: events that could not be scored, kept with their reason, and read.

A Redis list (keys.DEAD_LETTERS), oldest first. Ingest, the drain and the unknown-task hook
write to it; operators list it; worker/engine/ingest/replay.py runs its entries through ingest again
with the bookkeeping below (it is the one module here that needs ingest, so this module
never imports it).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.counters import bump
from worker.engine.state.pipeline import SerialBatch

# The logger dead letters have always been logged under (they used to be written by ingest).
log = logging.getLogger("scorer.ingest")

#: A dead letter keeps at most this much of the original body (a giant body is itself the bug).
MAX_DEAD_BODY = 64 * 1024
#: Dead letters kept; past this the oldest go and `dead_letters_dropped` counts them.
MAX_DEAD_LETTERS = 100_000


def dead_letter(rt: Runtime, body: Any, event_id: Any, reason: str,
                pipe: redis.client.Pipeline | SerialBatch | None = None) -> None:
    """Keep an event that cannot be scored, with its reason, for listing and replay.

    With `pipe`, the write is queued on it and the caller executes it (one round trip for
    a batch's dead letters)."""
    try:
        raw = json.dumps(body, default=repr)
    except (TypeError, ValueError, RecursionError):
        raw = json.dumps(repr(body)[:MAX_DEAD_BODY])
    if len(raw) > MAX_DEAD_BODY:
        raw = json.dumps({"truncated": raw[:MAX_DEAD_BODY]})
    entry = json.dumps({"reason": reason, "event_id": None if event_id is None else
                        str(event_id)[:200], "at": rt.clock(), "body": json.loads(raw)})
    # Alone: one EVALSHA. In the caller's pipeline: redis-py checks the script once per
    # execute (SCRIPT EXISTS), shared by every script of that batch.
    rt.script("DEAD_LETTER")(keys=[keys.DEAD_LETTERS, keys.DEAD_LETTERS_DROPPED],
                             args=[entry, MAX_DEAD_LETTERS], client=pipe or rt.redis)
    log.warning("dead-lettered event: %s", reason,
                extra={"event_id": None if event_id is None else str(event_id)[:200]})


def list_entries(rt: Runtime, limit: int = 100) -> list[dict[str, Any]]:
    """The oldest `limit` dead letters."""
    return [json.loads(x) for x in rt.redis.lrange(keys.DEAD_LETTERS, 0, limit - 1)]


# -- replay bookkeeping: the oldest entry is read, then either kept (moved to the end) or
# -- settled (removed once its events are stored) -----------------------------------------


def count(rt: Runtime) -> int:
    """How many dead letters are kept."""
    return int(rt.redis.llen(keys.DEAD_LETTERS))


def oldest(rt: Runtime) -> dict[str, Any] | None:
    """The oldest dead letter, left in place; None when there is none."""
    raw = rt.redis.lindex(keys.DEAD_LETTERS, 0)
    return None if raw is None else json.loads(raw)


def keep_oldest(rt: Runtime) -> None:
    """Move the oldest dead letter to the end as it is, in one atomic LMOVE (never lost in
    between, as a read then a push could be)."""
    rt.redis.lmove(keys.DEAD_LETTERS, keys.DEAD_LETTERS, "LEFT", "RIGHT")


def settle_oldest(rt: Runtime) -> None:
    """Remove the oldest dead letter once it has been replayed, and count it (`replayed`)."""
    rt.redis.lpop(keys.DEAD_LETTERS)
    bump(rt.redis, "replayed")
