"""An unrelated app's Celery (its own tasks, the default queue) sharing the scorer's Redis."""

from __future__ import annotations

import os

import redis
from celery import Celery

app = Celery("shop", broker=os.environ["OTHERAPP_BROKER"])
app.conf.task_serializer = "json"
app.conf.accept_content = ["json"]


@app.task(name="shop.record")
def record(n: int) -> None:
    """The app's own work: remember that order `n` ran."""
    r = redis.Redis.from_url(os.environ["OTHERAPP_BROKER"])
    r.sadd("shop:done", n)
    r.close()
