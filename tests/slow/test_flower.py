"""`celery -A worker flower` against a real worker lists the project's tasks (Flower's API)."""

from __future__ import annotations

import httpx

from scorer_local.stack import Processes, free_port
from tests.conftest import worker_env
from tests.helpers import wait_for

TASKS = {"scorer.webhook", "scorer.webhooks", "scorer.flush", "scorer.reconcile",
         "scorer.tick"}


def test_flower_lists_every_task(settings, tmp_path):
    port = free_port()
    procs = Processes(worker_env(settings), tmp_path)
    procs.worker("flowerw", concurrency=1)
    procs.start("flower", "flower", f"--port={port}", "--address=127.0.0.1",
                "--basic-auth=ops:pw", "--persistent=False")
    try:
        def registered():
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/workers", params={"refresh": 1},
                              auth=("ops", "pw"), timeout=10)
            except httpx.HTTPError:
                return None
            if r.status_code != 200:
                return None
            names = {t.split(" ")[0] for w in r.json().values()
                     for t in w.get("registered", [])}
            return names if names >= TASKS else None

        assert wait_for(registered, timeout=60, interval=1, what="flower sees the tasks")
        assert httpx.get(f"http://127.0.0.1:{port}/api/workers", timeout=10).status_code == 401
    finally:
        procs.stop()
