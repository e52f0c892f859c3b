"""The worker's Celery app plus the bench-only tasks (a no-op, and the naive baseline)."""

import bench.naive  # noqa: F401  (registers the naive and no-op tasks on the same app)
from worker.doors.app import app

__all__ = ["app"]
