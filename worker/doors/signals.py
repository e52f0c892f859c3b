"""Celery signal hooks: log format and redaction, the beat's record of its tick publishes, and
the workers' tick standby."""

from __future__ import annotations

import logging
import time

from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    after_task_publish,
    beat_init,
    worker_ready,
    worker_shutdown,
)

log = logging.getLogger("scorer.beat")

#: After a failed write, the beat skips its publish records this long: a Redis that does not
#: answer must not cost every tick (4 a second) a connect timeout.
RECORD_BACKOFF = 5.0
_client = None
_skip_until = 0.0
_last_warning = float("-inf")


def _settings():
    from worker.engine.settings import get_settings

    return get_settings()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _setup_logging(logger: logging.Logger, *args, **kwargs) -> None:
    from worker.doors import logs

    s = _settings()
    logs.configure(logger.handlers, s.log_format, logs.secrets_of(s))
    # Quiet at INFO on the hot path: Celery logs every task received and succeeded at INFO,
    # which at thousands of events per second costs more than the events themselves.
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)


@worker_ready.connect
def _stand_by_for_beat(sender=None, **kwargs) -> None:
    # Every process consuming the control queue keeps a tick alive when beat's is late
    # (worker/doors/standby.py); a worker whose control pool serves that queue leaves it to
    # the pool's workers.
    from worker.doors import standby
    from worker.engine.state import keys

    app = getattr(sender, "app", None)
    if app is not None and keys.CONTROL_QUEUE in app.amqp.queues.consume_from:
        standby.start(app)


@worker_ready.connect
def _check_in_as_consumer(sender=None, **kwargs) -> None:
    # A process that consumes the ingest queue checks in, so that the watermark never passes a
    # message it popped and has not recorded yet (worker/engine/ingest/consumers.py).
    from worker.engine.ingest import consumers
    from worker.engine.runtime import get_runtime

    app = getattr(sender, "app", None)
    if app is not None and app.conf.task_default_queue in app.amqp.queues.consume_from:
        consumers.start(get_runtime)


@worker_shutdown.connect
def _leave_as_consumer(**kwargs) -> None:
    from worker.engine.ingest import consumers
    from worker.engine.runtime import get_runtime

    if consumers._member is not None:  # (only a process that checked in)
        consumers.leave(get_runtime())


@beat_init.connect
def _watch_tick_publishes(*args, **kwargs) -> None:
    # Connected in the beat only: workers and producers never pay for the hook, and a tick
    # published by anything else (a test, an operator) cannot pass for a live beat.
    after_task_publish.connect(record_tick_publish, weak=False,
                               dispatch_uid="scorer.record_tick_publish")


def record_tick_publish(sender=None, headers=None, **kwargs) -> None:
    """After-publish hook of the beat: record in Redis when `scorer.tick` was published (read by
    `battle-scorer health beat` and the metric scorer_beat_last_publish_age_seconds). Never
    raises: a failure is logged (at most once a minute) and the beat goes on."""
    global _client, _skip_until
    try:
        from worker.doors import metrics

        name = sender if isinstance(sender, str) else (headers or {}).get("task")
        now = time.time()
        if name != metrics.TICK_TASK or now < _skip_until:
            return
        if _client is None:
            from worker.engine.runtime import connect

            s = _settings()  # quick: this runs inside beat's scheduling loop
            _client = connect(s.state_url, s.sentinel_master, s.sentinel_secret, quick=1.0)
        metrics.record_beat_publish(_client)  # on Redis's clock, as every cross-host stamp
    except Exception as err:
        # Anything at all: a hook that raises would break the beat's publish loop.
        _skip_until = time.time() + RECORD_BACKOFF
        _warn(err)


def _warn(err: Exception) -> None:
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= 60.0:
        _last_warning = now
        # the type only: a connection error's text may carry the Redis URL and its password
        log.warning("tick publish not recorded (health check will see beat as stale): %s",
                    type(err).__name__)
