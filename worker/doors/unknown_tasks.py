"""A message of a task this worker does not know is dead-lettered with its reason, not discarded.

On a broker shared with an app's own Celery workers, a message on the scorer's queue that is
not one of its tasks (a producer's typo, another app's task sent to the wrong queue) would
otherwise be logged by Celery as "unregistered task" and rejected, which on Redis drops it.
Celery rejects it first and then sends `task_unknown`; this hook keeps the message in the
dead-letter store (`battle-scorer deadletters`), where it can be read and replayed. The drain
path does the same for the messages it takes in bulk (worker/engine/ingest/drain.py).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import task_unknown

log = logging.getLogger("scorer.tasks")


def unknown_task_entry(message: Any, name: Any) -> dict[str, Any]:
    """What the dead-letter store keeps of an unknown task's message: name, args, kwargs, and
    the queue it came from (the body as sent when it cannot be decoded)."""
    entry: dict[str, Any] = {"task": str(name)[:200],
                             "queue": (getattr(message, "delivery_info", None) or {})
                             .get("routing_key")}
    try:
        payload = message.payload  # protocol 2: (args, kwargs, embed)
        if isinstance(payload, (list, tuple)) and len(payload) >= 2:
            entry["args"], entry["kwargs"] = payload[0], payload[1]
        else:  # protocol 1: the whole message is a dict with args and kwargs
            entry["args"], entry["kwargs"] = payload.get("args"), payload.get("kwargs")
    except Exception:  # the consumer must go on; Celery has logged the body
        entry["body"] = repr(getattr(message, "body", b""))[:4096]
    return entry


@task_unknown.connect
def dead_letter_unknown(sender: Any = None, message: Any = None, name: Any = None,
                        id: Any = None, **_: Any) -> None:  # Celery passes `id`
    """Keep an unknown task's message in the dead-letter store (never raises into Celery)."""
    try:
        from worker.engine.deadletters import dead_letter
        from worker.engine.runtime import get_runtime
        from worker.engine.state.counters import bump

        rt = get_runtime()
        dead_letter(rt, unknown_task_entry(message, name), id,
                    f"unknown task {str(name)[:100]!r}")
        bump(rt.redis, "dead_lettered")
    except Exception:  # the consumer must go on; Celery has logged the body
        log.exception("could not dead-letter a message of unknown task %r", str(name)[:100])
