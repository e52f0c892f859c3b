"""Every Redis key the worker uses, in one place (see docs/design.md for types and lifetimes).

Keys of one battle share the hash tag `{b:<BattleId>}` and keys of one room `{r:<RoomId>}`, so
each Lua script touches a single Redis Cluster slot. Ids are validated (printable ASCII, at
most 128 characters) before they reach a key; braces are escaped so an id cannot forge a tag.
"""

from __future__ import annotations

PREFIX = "bs"


def _tag_safe(ident: str) -> str:
    # A `}` inside an id would end the hash tag early and move the key to another slot.
    return ident.replace("{", "%7B").replace("}", "%7D")


class BattleKeys:
    """The keys of one battle (all in the slot of `{b:<id>}`)."""

    # Unsorted on purpose: all() lists the keys in this order, the meta hash first (GIVE_UP).
    __slots__ = ("battle_id", "meta", "pending", "inflight", "applied", "ledger",  # noqa: RUF023
                 "corr", "unapplied", "seen", "secs", "lock", "rlock", "flushes", "recon")

    def __init__(self, battle_id: str) -> None:
        base = f"{PREFIX}:{{b:{_tag_safe(battle_id)}}}"
        self.battle_id = battle_id
        self.meta = f"{base}:meta"  # hash: start, end, duration_ms, rooms, owners, status...
        self.pending = f"{base}:pending"  # hash room → value (gifts, corrections) not yet claimed
        self.inflight = f"{base}:inflight"  # hash: the claimed batch of one flush
        self.applied = f"{base}:applied"  # hash room → score Tencent holds, by our account
        self.ledger = f"{base}:ledger"  # hash room → value of the gifts ingested for it
        self.corr = f"{base}:corr"  # hash room → reconcile corrections (+ lost, - uncounted)
        self.unapplied = f"{base}:unapplied"  # hash room → value Tencent refused (1, 100006)
        self.seen = f"{base}:seen"  # set of event ids: exactly-once ingest
        self.secs = f"{base}:secs"  # hash "room|second" → value (judging reconcile reads)
        self.lock = f"{base}:lock"  # string: owner token of the battle's writer, heartbeat TTL
        self.rlock = f"{base}:rlock"  # string: owner token of its reconcile pass (reads)
        self.flushes = f"{base}:flushes"  # list: recent flush records (capped)
        self.recon = f"{base}:recon"  # hash: baselines and observations per room

    def all(self) -> list[str]:
        """Every key of the battle (for expiry)."""
        return [getattr(self, s) for s in self.__slots__ if s != "battle_id"]


class RoomKeys:
    """The keys of one room (all in the slot of `{r:<id>}`)."""

    __slots__ = ("room_id", "base", "battles", "held", "drain")  # noqa: RUF023

    def __init__(self, room_id: str) -> None:
        self.base = base = f"{PREFIX}:{{r:{_tag_safe(room_id)}}}"
        self.room_id = room_id
        self.battles = f"{base}:battles"  # hash BattleId → "start end owner", pruned by age
        self.held = f"{base}:held"  # list of gifts waiting for their battle to be known
        self.drain = f"{base}:drain"  # string: lock of the one process draining `held`

    def seen_outside(self, bucket: int) -> str:
        """set: event ids counted outside a battle in one time bucket (each bucket expires
        whole: worker/engine/battles/registry.py `count_outside`)."""
        return f"{self.base}:seen_outside:{bucket}"


#: zset BattleId → time its next flush is due.
FLUSH_DUE = f"{PREFIX}:due:flush"
#: zset BattleId → time its next reconcile is due.
RECONCILE_DUE = f"{PREFIX}:due:reconcile"
#: zset BattleId → end time, for every battle not yet finalized.
ACTIVE = f"{PREFIX}:active"
#: zset "BattleId|RoomId" → its battle's start, for every room reconcile has no baseline of
#: yet (the metric of rooms still without one some seconds after their start).
RECON_UNBASED = f"{PREFIX}:recon:unbased"
#: zset BattleId → next try, battles known only by id (create webhook) awaiting get_battle_info.
UNRESOLVED = f"{PREFIX}:unresolved"
#: zset RoomId → deadline of its oldest held gift.
HELD_ROOMS = f"{PREFIX}:held_rooms"
#: list of dead letters (JSON: reason, body, event_id, at), newest last.
DEAD_LETTERS = f"{PREFIX}:deadletters"
#: string: dead letters dropped past the caps (the list's hash tag: one slot with it).
DEAD_LETTERS_DROPPED = f"{{{DEAD_LETTERS}}}:dropped"
#: string: bytes of the dead letters kept (their summed lengths; same slot; absent when none).
DEAD_LETTERS_BYTES = f"{{{DEAD_LETTERS}}}:bytes"
#: hash of counters (ingested, duplicate, dead_lettered, ignored, outside, ...).
STATS = f"{PREFIX}:stats"
#: hash lo, hi, at: bounds on Tencent's clock minus ours (worker/engine/tencent/clock.py).
CLOCK = f"{PREFIX}:clock"
#: hash: host → "offset,at": its clock minus Redis's as last measured (state/redisclock.py).
CLOCK_HOSTS = f"{PREFIX}:clock:hosts"
#: string: lock of the one end-game runner (worker/engine/flush/endgame.py).
ENDGAME_LOCK = f"{PREFIX}:endgame:lock"
#: string: pid of the dedicated end-game process, renewed while it runs
#: (worker/doors/endgame_main.py).
ENDGAME_DEDICATED = f"{PREFIX}:endgame:dedicated"
#: zset BattleId → when value first waited: battles in their end game with value to flush.
ENDGAME_DUE = f"{PREFIX}:due:endgame"
#: zset BattleId → its end less endgame.FINAL_LEAD (Tencent's clock): battles whose ambiguous
#: write may still land get one last absolute write then (worker/engine/flush/endgame.py).
FINAL_DUE = f"{PREFIX}:due:final"
#: zset BattleId → when its next score audit is due (worker/engine/flush/audit.py).
AUDIT_DUE = f"{PREFIX}:due:audit"
#: set of BattleIds audited even with nothing applied (after a Redis restart), expires.
AUDIT_FORCED = f"{PREFIX}:audit:forced"
#: string: the run_id of the Redis server the tick last saw (a change: state may be lost).
REDIS_RUN = f"{PREFIX}:redis:run_id"
#: string: when the tick last saw Redis restarted (rt.clock): audits follow the landing window.
REDIS_RESTART_SEEN = f"{PREFIX}:redis:restart_seen"
#: zset per API of recent call stamps: the shared sliding-window rate limiter.


def rate_key(api: str) -> str:
    """The sliding-window log of one Tencent API's calls."""
    return f"{PREFIX}:{{rl:{api}}}:calls"


def rate_reserve_key(api: str) -> str:
    """Calls per window of one API kept for flushes with a deadline (set by the tick)."""
    return f"{PREFIX}:{{rl:{api}}}:reserve"


def rate_sent_key(api: str) -> str:
    """zset: when the last window's requests of one API left (the limiter's send log)."""
    return f"{PREFIX}:{{rl:{api}}}:sent"


def rate_high_key(api: str) -> str:
    """zset: the HIGH lane's admissions of the last window (they use up the reserve)."""
    return f"{PREFIX}:{{rl:{api}}}:high"


#: string: the lock that keeps ticks from overlapping.
TICK_LOCK = f"{PREFIX}:tick:lock"
#: string: time of the last safety sweep.
SAFETY_SWEEP = f"{PREFIX}:tick:sweep"
#: string: time of the last tick (its budget covers the time since: worker/engine/tick/schedule.py).
TICK_AT = f"{PREFIX}:tick:at"
#: string: the length of a round of flush turns, published by the tick for ingest
#: (worker/engine/battles/turns.py); expires when ticks stop.
FLUSH_ROUND = f"{PREFIX}:tick:round"
#: string: when the beat last published `scorer.tick` (its health check; expires, 300 s)
BEAT_PUBLISHED = f"{PREFIX}:beat:published"
#: hash "api|outcome" → Tencent calls (metrics).
METRICS_CALLS = f"{PREFIX}:metrics:calls"
#: hash api → summed call seconds; hash "api|le" → calls in that latency bucket (metrics).
METRICS_LATENCY_SUM = f"{PREFIX}:metrics:latency_sum"
METRICS_LATENCY_BUCKETS = f"{PREFIX}:metrics:latency_buckets"
#: hash api → seconds spent waiting for the rate limiter (metrics).
METRICS_LIMITER_WAIT = f"{PREFIX}:metrics:limiter_wait"


# -- Queues besides the ingest queue (SCORER_QUEUE) ------------------------------------------
#: Control tasks (tick, flush, reconcile): run by the worker's own thread pool, never by the
#: processes that ingest needs (worker/doors/control_pool.py).
CONTROL_QUEUE = "scorer.control"
#: Drain tasks: an ingest process that takes one empties the ingest queue in batches.
DRAIN_QUEUE = "scorer.drain"

# -- Keys in the broker's Redis, beside kombu's own (they describe its ingest queue) ---------
#: zset claim key → lease expiry (Redis time): batches of ingest messages a drain holds.
DRAIN_CLAIMS = f"{PREFIX}:drain:claims"
#: zset drain token → lease expiry: drains requested or running, so they stay bounded.
DRAIN_SLOTS = f"{PREFIX}:drain:slots"
#: hash: the ingest watermark and its checkpoint (worker/engine/ingest/watermark.py).
INGEST_WATERMARK = f"{PREFIX}:ingest:watermark"
#: zset (broker Redis): ingest consumer → when it last checked in (Redis's clock): the watermark
#: moves past a pop only once every live consumer has checked in after it (ingest/consumers.py).
INGEST_CONSUMERS = f"{PREFIX}:ingest:consumers"
#: kombu's Redis transport: delivered, unacknowledged messages (hash) and their times (zset).
KOMBU_UNACKED = "unacked"
KOMBU_UNACKED_INDEX = "unacked_index"


def drain_claim_key(token: str) -> str:
    """The list holding one drain batch while it is being ingested."""
    return f"{PREFIX}:drain:claim:{token}"
