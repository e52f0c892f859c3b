"""The Lua scripts that make each state change atomic, and the one registry that loads them.

Each script touches keys of one hash tag only (one Redis Cluster slot). They live in small
modules by concern (ingest, flush, reconcile, lock, clock, rate, drain, watermark,
dead letters); every
name stays importable from here (`scripts.INGEST`). Every caller gets its callable script
from `load(client, name)`: registered once per client, run by EVALSHA, loaded on NOSCRIPT.
"""

from __future__ import annotations

import redis
from redis.commands.core import Script

from worker.engine.state.scripts.clock import CLOCK_OBSERVE
from worker.engine.state.scripts.deadletters import DEAD_LETTER
from worker.engine.state.scripts.drain import DRAIN_CLAIM, DRAIN_RECOVER, DRAIN_REQUEST
from worker.engine.state.scripts.flush import ADOPT, CLAIM, COMMIT, MARK
from worker.engine.state.scripts.ingest import COUNT_OUTSIDE, INDEX_BATTLE, INGEST, ROUTE_OR_HOLD
from worker.engine.state.scripts.lock import LOCK_RELEASE, LOCK_RENEW
from worker.engine.state.scripts.rate import RATE, SENT
from worker.engine.state.scripts.reconcile import (
    CORRECT,
    GIVE_UP,
    RECON_STORE,
    UNRESOLVED_SINCE,
)
from worker.engine.state.scripts.watermark import WATERMARK

#: Every script by its name: what `load` (and Runtime.script) accept.
SOURCES: dict[str, str] = {
    "INGEST": INGEST,
    "ROUTE_OR_HOLD": ROUTE_OR_HOLD,
    "COUNT_OUTSIDE": COUNT_OUTSIDE,
    "INDEX_BATTLE": INDEX_BATTLE,
    "CLAIM": CLAIM,
    "COMMIT": COMMIT,
    "MARK": MARK,
    "ADOPT": ADOPT,
    "CORRECT": CORRECT,
    "RECON_STORE": RECON_STORE,
    "GIVE_UP": GIVE_UP,
    "UNRESOLVED_SINCE": UNRESOLVED_SINCE,
    "LOCK_RENEW": LOCK_RENEW,
    "LOCK_RELEASE": LOCK_RELEASE,
    "CLOCK_OBSERVE": CLOCK_OBSERVE,
    "RATE": RATE,
    "SENT": SENT,
    "DRAIN_REQUEST": DRAIN_REQUEST,
    "DRAIN_CLAIM": DRAIN_CLAIM,
    "DRAIN_RECOVER": DRAIN_RECOVER,
    "WATERMARK": WATERMARK,
    "DEAD_LETTER": DEAD_LETTER,
}

__all__ = [*SOURCES, "SOURCES", "load"]

#: The attribute of a client that holds its registered scripts, by name.
_CACHE = "_scorer_scripts"


def load(client: redis.Redis, name: str) -> Script:
    """The script `name` (a key of SOURCES) registered on `client`, made once per client.

    The cache hangs on the client itself, so it lives and dies with it (a cache keyed by
    client would keep every client alive: a Script holds its client). A Script may be called
    from any thread, and with `client=` a pipeline of the same server.
    """
    try:
        cache: dict[str, Script] | None = vars(client).get(_CACHE)
        if cache is None:
            cache = vars(client).setdefault(_CACHE, {})
    except TypeError:  # a client without a __dict__ (a stand-in): register each time
        return client.register_script(SOURCES[name])
    script = cache.get(name)
    if script is None:
        # Two threads may both get here: each registers an equal Script, either one is kept.
        script = cache[name] = client.register_script(SOURCES[name])
    return script
