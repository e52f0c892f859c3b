"""Celery signal hooks: log format and redaction, the metrics exporter in beat."""

from __future__ import annotations

import logging

from celery.signals import after_setup_logger, after_setup_task_logger, beat_init


def _settings():
    from worker.settings import get_settings

    return get_settings()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _setup_logging(logger: logging.Logger, *args, **kwargs) -> None:
    from worker import logs

    s = _settings()
    secrets = [s.secret_key.get_secret_value()]
    if s.callback_token:
        secrets.append(s.callback_token.get_secret_value())
    logs.configure(logger.handlers, s.log_format, secrets)
    # Quiet at INFO on the hot path: Celery logs every task received and succeeded at INFO,
    # which at thousands of events per second costs more than the events themselves.
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)


@beat_init.connect
def _start_metrics(*args, **kwargs) -> None:
    # Metrics are cluster-wide (read from Redis), so exactly one process serves them: the beat.
    s = _settings()
    if s.metrics_port:
        from worker import metrics

        metrics.serve(s.metrics_port)
