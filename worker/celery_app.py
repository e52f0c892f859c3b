"""The Celery app; its configuration is read lazily from `worker.celeryconfig`."""

from celery import Celery

from worker import kombu_fix

kombu_fix.install()

app = Celery("battle_scorer")
# Lazy: the SCORER_* settings are validated when the worker, beat or a producer first needs
# the configuration, not when a CLI command merely imports this package.
app.config_from_object("worker.celeryconfig")

import worker.signals  # noqa: E402,F401  (connects logging and metrics hooks)
