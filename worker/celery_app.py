"""The Celery app; its configuration is read lazily from `worker.celeryconfig`."""

from celery import Celery

from worker import kombu_fix
from worker.control_pool import ControlPool, die_with_parent

kombu_fix.install()
die_with_parent()  # a no-op unless this process is a worker's control pool

app = Celery("battle_scorer")
# Lazy: the SCORER_* settings are validated when the worker, beat or a producer first needs
# the configuration, not when a CLI command merely imports this package.
app.config_from_object("worker.celeryconfig")
# Control tasks run in a thread-pool worker beside the ingest processes (see the module).
app.steps["worker"].add(ControlPool)

import worker.signals  # noqa: E402,F401  (logging hooks; the beat's tick-publish record)
import worker.unknown_tasks  # noqa: E402,F401  (dead-letters messages of unknown tasks)
