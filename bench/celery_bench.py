"""The worker's Celery app plus the bench-only tasks (a no-op, and the naive baseline)."""

from worker.doors.app import app
import bench.naive  # noqa: F401,E402  (registers the naive and no-op tasks on the same app)

__all__ = ["app"]
