"""Every timer of the scorer in one typed object: durations, periods, TTLs, threads, batches.

`TIMERS` holds the defaults, a frozen dataclass per concern, each field saying why (with the
measurement where there was one). A module reads `TIMERS.flush.lock_wait` where it uses it (a test
patches the module's `TIMERS` with a `dataclasses.replace`), binding a name only where another
module or a test imports it. The number lives here only: change it after measuring; the tests
(tests/unit/test_timers.py) keep the measured values and the orderings the code relies on. Derived
values are properties. Seconds unless named `_ms`. Operators' settings: worker/engine/settings.py.
The bottom layer: it imports nothing from the project (the doors and tasks/ read it too).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StateTimers:
    """The battle lock (worker/engine/state/lock.py) and the rate limiter (tencent/limiter.py)."""

    lock_ttl_ms: int = 6_000
    """A lock's ttl: renewed every third of it, it expires only with its holder dead or frozen."""
    lease_margin: float = 1.0
    """A write leaves only while its lock's lease has this long left (lock.py, `fresh`)."""
    headroom: float = 0.9
    """Share of SCORER_API_RATE admitted (at 100 %, 100012 in 3,000 calls: tencent/limiter.py)."""
    window_ms: int = 1000
    """The limiter's sliding window: never more than the rate in ANY such window."""
    margin_ms: int = 0
    """The margin the window is widened by (none: the headroom absorbs the jitter)."""
    send_wait: float = 0.25
    """A request holding its slot waits at most this long for the send log (tencent/limiter.py)."""
    call_metrics_every: float = 0.5
    """A process writes its Tencent calls' metrics this often, added up (counters.CallTally)."""


@dataclass(frozen=True)
class TencentTimers:
    """The Tencent client's timeouts (worker/engine/tencent/client.py) and its UserSig."""

    connect: float = 2.0
    """Connecting is cheap to retry: a connection that failed never carried the request."""
    read: float = 5.0
    """A slow read is the ambiguous case (the request may land): judging a batch that got no
    answer waits past it (FlushTimers.landing_window, AuditTimers.after_ambiguity)."""
    write: float = 5.0
    """Sending the request."""
    pool: float = 5.0
    """Waiting for a pooled connection."""
    sig_lifetime: int = 24 * 3600
    """A UserSig's lifetime: cheap, yet a leaked one ages out within a day."""
    renew_fraction: float = 0.25
    """Renew once less than this fraction of the lifetime is left (well before expiry)."""


@dataclass(frozen=True)
class ClockTimers:
    """Tencent's clock as bounds on its offset from ours (worker/engine/tencent/clock.py)."""

    default_spread: float = 0.5
    """With no sample, the offset is assumed within this many seconds either way."""
    drift: float = 1e-4
    """Widening per second of age: clocks drift and NTP slews (100 ppm is generous)."""
    cache_seconds: float = 0.5
    """A process re-reads the shared bounds this often."""
    redis_refresh: float = 5.0
    """A process measures its offset to Redis's clock this often (state/redisclock.py)."""
    redis_step: float = 0.05
    """A host clock that moved this much against the monotonic clock has stepped: measure again."""
    redis_warn: float = 0.25
    """A host this far off Redis's clock is reported (log, gauge, check-config)."""
    redis_quick: float = 0.25
    """The timeout of a measure of Redis's clock (its client is a quick one)."""
    redis_max_rtt: float = 0.02
    """A measure slower than this is not kept while a quicker one is recent (redisclock.py)."""
    redis_keep_quick: float = 60.0
    """How long a quicker measure stays recent."""
    redis_warn_every: float = 600.0
    """A process warns of its host's offset at most this often."""
    redis_record_ttl: float = 3600.0
    """A host's recorded offset (bs:clock:hosts) is forgotten after this long."""


@dataclass(frozen=True)
class IngestTimers:
    """Storing webhooks (worker/engine/ingest/gifts.py) and the watermark (ingest/watermark.py)."""

    outage_retry: float = 60.0
    """An ingest retries a Redis outage this long (under the task time limit), then requeues."""
    stuck: float = 10.0
    """An ingest message unacknowledged this long has lost its consumer (given back by the tick)."""
    check_in: float = 0.25
    """An ingest consumer checks in this often (ingest/consumers.py)."""
    check_in_margin: float = 0.05
    """The watermark waits for every live consumer's check-in this long after a pop."""
    consumer_dead_after: float = 30.0
    """A consumer silent this long is dead (a frozen one is waited for until then)."""


@dataclass(frozen=True)
class DrainTimers:
    """Draining a backed-up ingest queue in claimed batches (worker/engine/ingest/drain.py)."""

    threshold: int = 8
    """Queue length at which an ingest task asks for a drain."""
    batch: int = 500
    """Messages per claim: big enough to amortize, small enough to settle in tens of ms."""
    min_batch: int = 16
    """A drain keeps going while claims bring at least this many messages (the flood goes on)."""
    pause: float = 0.02
    """Pause before the next claim after a partial one, so a steady flow comes in batches."""
    max_slots: int = 4
    """Drains requested or running at once (across the deployment)."""
    slot_lease: float = 30.0
    """A slot whose drain task never ran (lost, expired: the task expires then) is freed."""
    claim_lease: float = 10.0
    """A claim held longer than this is given back to the queue (its drain died or stalled)."""
    run_seconds: float = 5.0
    """One drain task runs this long at most, then hands over to a successor (Flower shows it)."""


@dataclass(frozen=True)
class BattleTimers:
    """Battles' lives (worker/engine/battles/registry.py, ending.py, unstarted.py)."""

    keep_after_end: int = 24 * 3600
    """A finished battle's keys live this long: past any battle, redelivery or replay of it."""
    hold_seconds: int = 60
    """A gift whose room is in no known battle waits this long for a late start webhook."""
    outside_dedup: int = 3600
    """Ids counted outside a battle are kept 1-2 of these (buckets expiring whole; a day of ids
    at 1 gift/s in 1,000 rooms is 8 GB, for an exact `outside` counter only)."""
    final_grace: float = 10.0
    """A battle is finalized this long after its end (late answers, the end webhook)."""
    resolve_min_delay: float = 5.0
    """A battle known only from its create webhook (a PK invitation), or without owners, is asked
    about this far apart at first (the old fixed retry), then half the time waited so far ..."""
    resolve_max_delay: float = 60.0
    """... at most this far apart (a start webhook registers it at once; this is the fallback)."""
    give_up_min_duration: float = 60.0
    """An invitation that never starts is given up its planned Duration (at least this: a create
    webhook may carry none) plus `give_up_grace` after it was first seen unresolved ..."""
    give_up_grace: float = 60.0
    """... by then even a battle started within it, its start webhook lost, has ended. With 60 s
    + 60 s a 5-minute PK is given up 6 minutes after its creation, after 14 get_battle_info."""


@dataclass(frozen=True)
class FlushTimers:
    """A flush (worker/engine/flush/flusher.py), its in-flight batch (inflight.py), its due list."""

    max_rounds: int = 2
    """Send → resolve rounds in one flush (a read-back finding it not applied sends it again)."""
    lock_wait: float = 0.3
    """A flush waits this long for a lock another flush holds (its batch is about to settle)."""
    slot_wait: float = 0.5
    """A freshness flush (LOW lane) waits this long for a call slot, holding no lock (a control
    thread, though: the tick dispatched no more than the lane carries, so waits are short)."""
    retry_soon: float = 0.2
    """A flush that could not run (busy, no slot, a retryable answer) is due again this soon."""
    refused_retry: float = 5.0
    """A write refused by our configuration or a proxy (401, 403, 70003) is retried this late."""
    start_skew: float = 5.0
    """A 100006 this close to the start may be our clock running ahead: retried, not final."""
    landing_window: float = 6.0
    """A request never answered may still land, and a read-back taken sooner could see "not
    applied" and a re-send count it twice. So a batch whose sender died is judged this long
    after it was sent (the client reads for up to 5 s: nothing ended the request sooner) ..."""
    after_error: float = 1.0
    """... and one whose sender saw the request end (a reset, a timeout) this long after that."""
    near_end_after: float = 0.3
    """Near its end (EndGameTimers.near_end) a request is judged this long after it ended."""
    read_back_retry: float = 5.0
    """After the end, a failed read-back is retried this late, or half the time since the end if
    longer: battles gone on Tencent's side (100002) must not head the flush queue every tick."""
    give_up_after_end: float = 600.0
    """... and a batch unsettled this long after the end is given up (`unsettled`): writes are
    refused after the end, so waiting buys only bookkeeping; 13 reads, 60x finalize's grace."""


@dataclass(frozen=True)
class EndGameTimers:
    """A battle's last seconds (worker/engine/flush/near_end.py, endgame.py, rounds.py)."""

    end_margin: float = 0.05
    """A battle has surely ended (no call can land) this long after its end, by Tencent's clock."""
    near_end: float = 8.0
    """Within this of its end (the latest Tencent's clock may read), a call under a battle's lock
    waits `near_end_read` for its answer, not the client's 5 s: ..."""
    near_end_read: float = 1.5
    """... Tencent may hold a request past the end, and the lock kept the last flush out
    meanwhile (an overwrite that waited 5 s cost a battle its last 77 coins in bench.chaos)."""
    settle_lead: float = 0.6
    """A call under a battle's lock in its last seconds gives up its answer this long before its
    end (the latest Tencent's clock may read), so that a write left without an answer can
    still be read back (flush.near_end_after later) and overwritten before the end: a write
    1.4 s before the end that waited its whole near_end_read lost its battle's last 16 coins
    (bench.chaos)."""
    near_end_read_min: float = 0.5
    """... yet never less than this: a real answer is never cut short (a write judged ambiguous
    costs a read-back and an overwrite at the buzzer, where the budget is tightest)."""
    final_lead: float = 0.35
    """A battle whose ambiguous write may still land gets a last OpType 2 of the ledger this long
    before its end (one held past its client's timeout landed after the last flush: bench.chaos)."""
    final_window: float = 1.5
    """Seconds before its end (Tencent's clock) from which a battle's value is flushed at once."""
    poll: float = 0.02
    """The rounds' period between ticks."""
    plan_every: float = 0.25
    """The runner re-plans (promotes, renews the reserve), looks for a dedicated one, this often."""
    horizon: float = 1.0
    """Battles ending within this many seconds past the window count toward the reserve."""
    dedicated_ttl_ms: int = 2000
    """A dedicated end-game process (doors/endgame_main.py) renews its key with this ttl."""
    lock_ttl_ms: int = 800
    """bs:endgame:lock's ttl: a frozen runner holds every ending no longer (failover)."""
    coalesce: float = 0.03
    """Value waits this long for more of the same moment before an end-game flush."""
    decisive: float = 0.8
    """A battle's first write in its last this-many s (Tencent's latest clock) comes before any
    other end-game flush: it carries all delivered 1 s before the end (0.2 s to ingest them)."""
    threads: int = 16
    """Threads of the end-game flushes (each waits on one Tencent round trip at a time)."""
    round_max: int = 200
    """End-game battles looked at per round, soonest end first."""


@dataclass(frozen=True)
class ReconcileTimers:
    """The reconcile rule's timings (worker/engine/reconcile/judge.py)."""

    safety: float = 1.0
    """Added to each assumption of the settings (SCORER_RECONCILE_COUNT_SPREAD, _WEBHOOK_LATE):
    one broken by up to this much delays healing, never makes a correction that is not drift."""
    clock_margin: float = 0.5
    """A read's moment on Tencent's clock may lie this far outside the estimate's bounds (the
    estimate is shared by hosts; issue 27): the judge widens every read by it."""
    final_window: float = 12.0
    """In a battle's last `final_window` s plus one interval, reconcile runs every judge_delay."""
    yield_reserve: int = 10
    """No read while the end game keeps this many set_battle_score calls for writes to come (a
    crowded ending: 10 battles in about a second): a read costs the control plane's CPU what a
    write costs, and in the finale reads of the battles ending next ran at 100-150/s while the
    ones ending then needed their last writes."""
    last_read_lead: float = 0.5
    """No read whose judging (the webhooks' delay and a tick after it) would leave less than this
    before the battle's end: its correction could not be flushed in time, and the end's
    crowded seconds need the CPU (the finale read 2,668 times, 40 % more, without this)."""
    typical_lag: float = 0.6
    """How far the watermark trails the present when ingest keeps up (a tick or two)."""
    pair_gap: float = 1.0
    """A room's confirming read comes this long after the first: a drift confirmed in a cycle."""
    slot_wait: float = 0.5
    """A read waits this long for a slot (not the limiter's 5 s: a control thread flushes need)."""
    rebase_settle: float = 2.0
    """A narrower baseline's read is judged again this much watermark later: same K, taken."""

    judge_delay: float = 3.5
    """Reconcile's period in a battle's last stretch: a read is judged ~3 s after it is taken
    (the webhooks' delay and its margin, then a tick), so a pass sooner would find nothing."""
    read_lag: float = 5.0
    """No read while the watermark trails the present by more than this: it can't be judged."""
    lock_ttl_ms: int = 2_000
    """The lease of a battle's reconcile lock (`rlock`; renewed every third of it). A pass
    frozen with it holds the battle's reads for this long: at 6 s (the battle lock's), a
    worker frozen at a battle's start held its first reads from 1.8 s to 8 s in, and a lost
    webhook 6 s in went into the baseline (bench.chaos). Its writes (CORRECT, RECON_STORE)
    check the token."""


@dataclass(frozen=True)
class AuditTimers:
    """Score audits (worker/engine/flush/audit.py; scheduled by worker/engine/tick/)."""

    interval: float = 30.0
    """Each running battle's score is audited this often (a quarter of get_battle_info's budget)."""
    after_ambiguity: float = 10.0
    """A settled ambiguity is audited this long after it settled: a write that outlived its
    client's 5 s timeout has landed or expired by then ..."""
    end_lead: float = 3.0
    """... but no later than this before the end: a double count is healed before the buzzer,
    and the audit (a read and a write, 1.5 s each there) done before the end game's lock."""
    retry: float = 0.5
    """An audit that could not run (no slot, lock busy, batch in flight) is due again this soon."""
    slot_wait: float = 0.5
    """How long an audit waits for a get_battle_info slot (holding no lock)."""


@dataclass(frozen=True)
class TickTimers:
    """The beat's tick (worker/engine/tick/dispatch.py, schedule.py)."""

    max_dispatch: int = 2000
    """Battles dispatched per tick and per kind: bounds one tick's work under a flood."""
    safety_sweep: float = 5.0
    """The tick re-checks active battles this often for value an interrupted ingest left not due."""
    batch: int = 20
    """Battles per control message (one message per battle would cost more than its flush)."""
    threads: int = 8
    """Threads per process working through control messages' battles."""
    max_span: float = 1.0
    """A tick's budget covers at most this much time since the previous tick."""
    plan_from: float = 2.0
    """Turns are planned back from end games (battles/turns.py) from rounds this many intervals."""
    round_ttl_ms: int = 5000
    """The round the tick publishes for ingest expires this long after it (ticks stopped)."""
    round_read: float = 1.0
    """Ingest reads the published round this often per process (it changes slowly)."""
    standby_after: float = 2.0
    """No tick for this long (beat dead or frozen): a worker ticks instead (doors/standby.py)."""
    standby_poll: float = 0.1
    """A worker's tick standby looks this often."""


@dataclass(frozen=True)
class ControlTimers:
    """Control tasks (tasks/control.py) and their thread-pool workers (doors/control_pool.py)."""

    task_expires: int = 30
    """A dispatched control task older than this is dropped; the next tick sends a fresh one."""
    threads: int = 8
    """Threads of each control worker: control tasks carry batches of battles and run them on
    their own small pool (TickTimers.threads), so a few concurrent tasks keep the budget busy."""
    restart_delay: tuple[float, float] = (1.0, 30.0)
    """A control worker that exits is started again after the first, doubling up to the second."""
    stop_grace: float = 20.0
    """On shutdown, the control worker gets this long to finish its tasks before SIGKILL."""


@dataclass(frozen=True)
class CeleryTimers:
    """Celery's timers (worker/doors/celeryconfig.py says more of why)."""

    visibility_timeout: int = 180
    """kombu restores an unacknowledged message held this long: above the longest legitimate hold
    (a task's `time_limit`, a warm shutdown's stop_grace_period, 150 s), or those run twice."""
    health_check_interval: int = 10
    """The broker connection is checked this often."""
    soft_time_limit: int = 100
    """Prefork tasks: an ingest's outage retry and last attempt (~10 s) and a drain's run fit; a
    lower limit cuts an ingest mid-retry and (acks_late) acknowledges events never stored."""
    time_limit: int = 120
    """The hard limit, above the soft one."""
    tick_expires: int = 5
    """A `scorer.tick` that beat published and no worker took within this long is dropped."""
    beat_max_loop_interval: int = 1
    """Beat wakes at least this often."""


@dataclass(frozen=True)
class Timers:
    """Every timer, by concern (each documented in its class); `TIMERS` holds the defaults."""

    state: StateTimers = field(default_factory=StateTimers)
    tencent: TencentTimers = field(default_factory=TencentTimers)
    clock: ClockTimers = field(default_factory=ClockTimers)
    ingest: IngestTimers = field(default_factory=IngestTimers)
    drain: DrainTimers = field(default_factory=DrainTimers)
    battles: BattleTimers = field(default_factory=BattleTimers)
    flush: FlushTimers = field(default_factory=FlushTimers)
    endgame: EndGameTimers = field(default_factory=EndGameTimers)
    reconcile: ReconcileTimers = field(default_factory=ReconcileTimers)
    audit: AuditTimers = field(default_factory=AuditTimers)
    tick: TickTimers = field(default_factory=TickTimers)
    control: ControlTimers = field(default_factory=ControlTimers)
    celery: CeleryTimers = field(default_factory=CeleryTimers)


#: The defaults: modules read TIMERS.<concern>.<field> where they use it.
TIMERS = Timers()
