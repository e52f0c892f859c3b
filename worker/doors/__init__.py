"""The doors: the Celery app and the processes around the engine (CLI, receiver, metrics)."""
