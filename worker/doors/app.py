"""The Celery app; its configuration is read lazily from `worker.doors.celeryconfig`."""

from celery import Celery

from worker.doors import kombu_fix
from worker.doors.control_pool import ControlPool, die_with_parent

kombu_fix.install()
die_with_parent()  # a no-op unless this process is a worker's control pool

app = Celery("battle_scorer")
# Lazy: the SCORER_* settings are validated when the worker, beat or a producer first needs
# the configuration, not when a CLI command merely imports this package.
app.config_from_object("worker.doors.celeryconfig")
# Control tasks run in a thread-pool worker beside the ingest processes (see the module).
app.steps["worker"].add(ControlPool)

import worker.doors.signals  # noqa: E402  (logging hooks; the beat's tick-publish record)
import worker.doors.unknown_tasks  # noqa: E402,F401  (dead-letters messages of unknown tasks)
