"""battle-scorer: `worker.app` is the Celery app, built on first access (`celery -A worker ...`).

Importing `worker` or any of its modules builds nothing: the engine (`worker.engine`) starts no
app, installs no patch and connects no signal. Only the doors (`worker.doors.app`) do, when a
process asks for the app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

    app: Celery

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    # PEP 562: Celery's `-A worker` and `from worker import app` resolve the app here, lazily.
    if name == "app":
        from worker.doors.app import app

        return app
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
