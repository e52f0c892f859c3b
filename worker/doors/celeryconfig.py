"""Celery configuration for a Redis broker, chosen for exactly-once scoring (read the why's)."""

from datetime import timedelta
from typing import Any

from kombu import Queue

from worker.engine.settings import is_sentinel_url, load_settings, sentinel_kwargs
from worker.engine.state import keys
from worker.engine.tick.schedule import tick_seconds
from worker.engine.timers import TIMERS

# Only what Celery needs (broker, queue, tick): Flower and the receiver load this configuration
# too, and their containers never hold the Tencent credentials. The worker and the beat still
# refuse to start without them: worker/doors/signals.py loads the full settings as logging is
# set up.
_settings = load_settings(require=())

broker_url = _settings.redis_url
# Keep retrying a lost broker forever, also at start-up: a worker must outlive a Redis restart.
broker_connection_retry_on_startup = True
broker_connection_max_retries = None
broker_transport_options: dict[str, Any] = {
    # kombu restores an unacknowledged message to its queue once it has been held this long,
    # whether or not its consumer is still working on it. So it must exceed the longest time a
    # consumer may legitimately hold one: a prefork task up to task_time_limit, and a warm
    # shutdown up to the compose stop_grace_period (150 s); a shorter timeout runs those tasks
    # twice. Nothing waits on it: ingest messages of a lost consumer go back to the queue after
    # 10 s through the beat's tick (watermark.give_back_stuck), control and drain messages
    # expire long before (30 s), and flushes resume from Redis. Ordering, checked by
    # tests/slow/test_compose.py: soft limit < hard limit < stop grace < visibility timeout.
    "visibility_timeout": TIMERS.celery.visibility_timeout,
    "health_check_interval": TIMERS.celery.health_check_interval,
    "socket_keepalive": True,
}
if is_sentinel_url(broker_url):
    # kombu's Sentinel transport asks the listed Sentinels where this master is, and follows
    # it through a failover. It gives the URL's user and password to the master only; the
    # Sentinels get `sentinel_kwargs` alone (kombu's SentinelChannel._sentinel_managed_pool),
    # so their own password, if any, goes there, and timeouts: without sentinel_kwargs
    # redis-py gives the Sentinels the master's socket options, which set none here, and a
    # black-holed Sentinel would stall every reconnection.
    broker_transport_options.update(
        master_name=_settings.sentinel_master,
        sentinel_kwargs=sentinel_kwargs(_settings.sentinel_secret))

# JSON only: producers in any language can send, and no pickle ever reaches a worker.
task_serializer = "json"
accept_content = ["json"]
result_serializer = "json"
task_protocol = 2

# No result backend: producers fire and forget; outcomes live in the worker's Redis state.
task_ignore_result = True
result_backend = None

# Acknowledge after the task ran, and put the message back if the child process died, so a
# SIGKILL mid-task re-runs it instead of losing it (every task is idempotent).
task_acks_late = True
task_reject_on_worker_lost = True
# One message at a time per process: nothing waits in a dead process's prefetch buffer.
worker_prefetch_multiplier = 1
worker_send_task_events = True
task_send_sent_event = True
worker_hijack_root_logger = False

# Three queues. Producers' events on SCORER_QUEUE (default `celery`); drains of that queue on
# `scorer.drain`; flush/reconcile/tick on `scorer.control`, so the control path never waits
# behind an ingest backlog. A worker with no -Q consumes all three: its prefork processes take
# ingest and drains (kombu rotates between the queues), and the control queue goes to a thread
# pool worker it starts beside them (worker/doors/control_pool.py), so nothing that waits on Tencent
# or the rate limiter holds a process that ingest needs.
task_default_queue = _settings.queue
task_queues = (Queue(_settings.queue), Queue(keys.DRAIN_QUEUE), Queue(keys.CONTROL_QUEUE))
task_routes = {
    "scorer.webhook": {"queue": _settings.queue},
    "scorer.webhooks": {"queue": _settings.queue},
    "scorer.drain": {"queue": keys.DRAIN_QUEUE},
    "scorer.flush": {"queue": keys.CONTROL_QUEUE},
    "scorer.reconcile": {"queue": keys.CONTROL_QUEUE},
    "scorer.audit": {"queue": keys.CONTROL_QUEUE},
    "scorer.tick": {"queue": keys.CONTROL_QUEUE},
}
# Time limits bind prefork tasks only (ingest and drains; Celery's thread pool, which runs
# the control tasks, ignores them). The longest legitimate one is an ingest waiting out a Redis
# outage: worker/engine/ingest/gifts.py retries for 60 s (TIMERS.ingest.outage_retry) before it
# gives the events back, plus its last attempt, bounded by redis-py's timeouts and retries (a
# refused connection fails in ~10 s); a drain adds its 5 s of batches. A limit below that would
# cut an ingest mid-retry and, with acks_late, acknowledge a message whose events were not
# stored.
# (worker/engine/timers.py, CeleryTimers; tests/unit/test_timers.py checks the ordering.)
task_soft_time_limit = TIMERS.celery.soft_time_limit
task_time_limit = TIMERS.celery.time_limit

include = ["tasks.ingest", "tasks.control"]

#: How often beat asks "which battles are due?" (flush and reconcile are due per battle).
TICK_SECONDS = tick_seconds(_settings.flush_interval)

beat_schedule = {
    "scorer-tick": {
        "task": "scorer.tick",
        "schedule": timedelta(seconds=TICK_SECONDS),
        "options": {"queue": keys.CONTROL_QUEUE, "expires": TIMERS.celery.tick_expires},
    },
}
beat_max_loop_interval = TIMERS.celery.beat_max_loop_interval
