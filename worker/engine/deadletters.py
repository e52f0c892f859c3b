"""The dead-letter store: events that could not be scored, kept with their reason, and read.

A Redis list (keys.DEAD_LETTERS), oldest first, bounded three ways: each entry by bytes, the
store by count and by bytes (its byte total kept beside it, keys.DEAD_LETTERS_BYTES, by the one
Lua script that changes it). Ingest, the drain and the unknown-task hook write to it;
operators list it; worker/engine/ingest/replay.py runs its entries through ingest again with
the bookkeeping below (it is the one module here that needs ingest, so this module never
imports it).
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

#: A dead letter keeps at most this many bytes of the original body: its JSON text, as escaped
#: inside the entry (a giant body is itself the bug). Past it the body is cut, and marked:
#: {"truncated": <the start of its JSON text>, "bytes": <the whole text's length>}.
MAX_DEAD_BODY = 64 * 1024
#: Hard bound on one stored entry, every escaping done: the body's share, plus a quarter of it
#: for the rest. The rest is at most 14.5 KB: a reason cut to 1,000 characters and an event id
#: to 200, each escaped to at most 12 bytes a character (one outside the BMP: a \uXXXX pair),
#: the time and the field names (80 KiB).
MAX_DEAD_ENTRY = MAX_DEAD_BODY + MAX_DEAD_BODY // 4
#: Dead letters kept; past this the oldest go and `dead_letters_dropped` counts them.
MAX_DEAD_LETTERS = 100_000
#: Bytes of dead letters kept, all entries together; past this the oldest go the same way.
#: 256 MiB (4,096 bodies at their cut): the state Redis is the broker by default, with
#: noeviction, so a full store must not take the memory ingest and producers need. Typical
#: dead letters (a webhook body, under 1 KB) reach the 100,000 count first (under 100 MB):
#: the byte cap only binds on big bodies, which before it could take 100,000 x 128 KiB.
MAX_DEAD_BYTES = MAX_DEAD_BODY * 4096


def dead_letter(rt: Runtime, body: Any, event_id: Any, reason: str,
                pipe: redis.client.Pipeline | SerialBatch | None = None) -> None:
    """Keep an event that cannot be scored, with its reason, for listing and replay.

    The entry is at most MAX_DEAD_ENTRY bytes (its body cut past MAX_DEAD_BODY, its reason
    and event id never lost: cut to 1,000 and 200 characters). The store then drops its oldest
    entries past MAX_DEAD_LETTERS or MAX_DEAD_BYTES (counted in `dead_letters_dropped`).
    With `pipe`, the write is queued on it and the caller executes it (one round trip for
    a batch's dead letters)."""
    event = None if event_id is None else str(event_id)[:200]
    entry = json.dumps({"reason": str(reason)[:1000], "event_id": event, "at": rt.clock(),
                        "body": _kept_body(body)})
    # Alone: one EVALSHA. In the caller's pipeline: redis-py checks the script once per
    # execute (SCRIPT EXISTS), shared by every script of that batch.
    rt.script("DEAD_LETTER")(keys=_KEYS, args=["push", entry, MAX_DEAD_LETTERS, MAX_DEAD_BYTES],
                             client=pipe or rt.redis)
    log.warning("dead-lettered event: %s", reason, extra={"event_id": event})


#: The keys of the store's script (one slot: the list's hash tag).
_KEYS = [keys.DEAD_LETTERS, keys.DEAD_LETTERS_DROPPED, keys.DEAD_LETTERS_BYTES]
#: The marker of a cut body around its text: {"truncated": "", "bytes": N} is this plus N.
_CUT = '{"truncated": "", "bytes": }'


def _kept_body(body: Any) -> Any:
    """The body as the entry keeps it: itself while its JSON text is at most MAX_DEAD_BODY,
    else that text's start, marked {"truncated": ..., "bytes": <its whole length>} and at
    most MAX_DEAD_BODY bytes once escaped again (the same body is always cut the same)."""
    try:
        raw = json.dumps(body, default=repr)
    except (TypeError, ValueError, RecursionError):
        raw = json.dumps(repr(body))
    if len(raw) <= MAX_DEAD_BODY:
        return json.loads(raw)
    # `raw` is printable ASCII (json.dumps escapes the rest): embedded as a string again, only
    # its quotes and backslashes double. Take the longest start that fits once escaped.
    room = MAX_DEAD_BODY - len(_CUT) - len(str(len(raw)))
    lo, hi = 0, room
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if mid + raw.count('"', 0, mid) + raw.count("\\", 0, mid) <= room:
            lo = mid
        else:
            hi = mid - 1
    return {"truncated": raw[:lo], "bytes": len(raw)}


def is_truncated(entry: dict[str, Any]) -> bool:
    """Whether an entry's body was cut when it was kept (it cannot be replayed). Entries kept
    before the cut was marked with its size have {"truncated": ...} alone."""
    body = entry.get("body")
    return isinstance(body, dict) and "truncated" in body and set(body) <= {"truncated", "bytes"}


def list_entries(rt: Runtime, limit: int = 100) -> list[dict[str, Any]]:
    """The oldest `limit` dead letters."""
    return [json.loads(x) for x in rt.redis.lrange(keys.DEAD_LETTERS, 0, limit - 1)]


# -- replay bookkeeping: the oldest entry is read, then either kept (moved to the end) or
# -- settled (removed once its events are stored); each only if it is still the oldest -------


def count(rt: Runtime) -> int:
    """How many dead letters are kept."""
    return int(rt.redis.llen(keys.DEAD_LETTERS))


def size(rt: Runtime) -> int:
    """Bytes of the dead letters kept, as the store counts them against MAX_DEAD_BYTES."""
    return int(rt.redis.get(keys.DEAD_LETTERS_BYTES) or 0)


def head(rt: Runtime) -> tuple[str, dict[str, Any]] | None:
    """The oldest dead letter as stored and as read, left in place; None when there is none.
    The stored text is what keep_oldest and settle_oldest check the oldest against."""
    raw = rt.redis.lindex(keys.DEAD_LETTERS, 0)
    return None if raw is None else (raw, json.loads(raw))


def oldest(rt: Runtime) -> dict[str, Any] | None:
    """The oldest dead letter, left in place; None when there is none."""
    got = head(rt)
    return None if got is None else got[1]


def keep_oldest(rt: Runtime, raw: str | None = None) -> bool:
    """Move the oldest dead letter to the end as it is, in one atomic step (never lost in
    between, as a read then a push could be). With `raw` (from head()), only if the oldest is
    still that entry: the caps may have dropped it meanwhile. True if one was moved."""
    return _at_oldest(rt, "keep", raw)


def settle_oldest(rt: Runtime, raw: str | None = None) -> bool:
    """Remove the oldest dead letter once it has been replayed, and count it (`replayed`).
    With `raw` (from head()), only if the oldest is still that entry: once the caps dropped
    it, another entry, not yet replayed, would go. True if one was removed."""
    if not _at_oldest(rt, "settle", raw):
        return False
    bump(rt.redis, "replayed")
    return True


def _at_oldest(rt: Runtime, op: str, raw: str | None) -> bool:
    """Run the store's script on its oldest entry (`raw`, or whichever it is)."""
    if raw is None:
        got = head(rt)
        if got is None:
            return False
        raw = got[0]
    return bool(rt.script("DEAD_LETTER")(keys=_KEYS, args=[op, raw], client=rt.redis))
