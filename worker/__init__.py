"""battle-scorer: the Celery app `worker.app` (so `celery -A worker worker` and `beat` work)."""

from worker.celery_app import app

__all__ = ["app"]
