"""The control pool: control tasks run in a supervised thread-pool worker beside ingest's processes.

Control tasks (tick, flush, reconcile, read-backs) wait: on the shared rate limiter, and on
Tencent for a round trip, sometimes for seconds. In the prefork processes that ingest needs,
every second of that waiting is a second of ingest lost, and a backlog then feeds itself. So
when a worker would consume both the ingest queue and the control queue, this bootstep takes
the control queue away from its prefork pool and starts, beside it, Celery workers with a
thread pool that consume only the control queue: `<name>-control@<host>` in Flower, and
`<name>-control1@<host>` on a machine with two cores or more (PROCESSES), and the end game's
own process (worker/doors/endgame_main.py, ENDGAME_PROCESS). Threads are the
right pool for that work (it waits on I/O) and cost ingest no process; a second process
because a control worker is bound by its GIL near 100 flushes a second.

Each control worker is the parent's child: it is stopped with it (SIGTERM, warm shutdown), is
sent SIGTERM by the kernel if the parent dies (PR_SET_PDEATHSIG), and is started again if it
exits on its own. `celery -A worker worker` stays the one command a deployment needs; a worker
started with `-Q scorer.control` (and any pool) is a dedicated control worker and starts none.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from celery import bootsteps

from worker.engine.state import keys
from worker.engine.timers import TIMERS

log = logging.getLogger("scorer.control_pool")

# Its timers are TIMERS.control (worker/engine/timers.py, ControlTimers): the threads of each
# control worker, the restart delay of one that exits, the grace it gets on shutdown.

#: Control workers a worker starts: one per core, at most two. A flush costs the control
#: worker about 5 ms of CPU under the GIL (a dozen Redis round trips and one HTTPS call):
#: one process saturated near 100 flushes/s at 2,000 battles (84 % of a core, the budget
#: allows 180), with the machine's other core half idle.
PROCESSES = max(1, min(2, os.cpu_count() or 1))
#: Start the end game as a process of its own (worker/doors/endgame_main.py) beside the control
#: workers: in a control worker its runner waited for the GIL behind the flush threads.
ENDGAME_PROCESS = True
#: Set in the control worker's environment (it must not start one of its own), with the pid
#: of the worker that started it.
CHILD_ENV = "SCORER_CONTROL_POOL_CHILD"
PARENT_ENV = "SCORER_CONTROL_POOL_PARENT"


def app_spec(argv: list[str]) -> str:
    """The `-A/--app` the worker was started with (the control worker loads the same app)."""
    for i, arg in enumerate(argv):
        if arg in ("-A", "--app") and i + 1 < len(argv):
            return argv[i + 1]
        for flag in ("-A", "--app="):
            if arg.startswith(flag) and len(arg) > len(flag):
                return arg[len(flag):].lstrip("=")
    return "worker"


def _level_name(level: int | str | None) -> str:
    """The worker's log level as `celery worker -l` takes it (a name, not a number)."""
    if isinstance(level, int):
        return logging.getLevelName(level)
    return str(level or "INFO").upper()


def die_with_parent() -> None:
    """In a control worker: be sent SIGTERM when the worker that started it dies, and leave at
    once if it is already gone. (Done here, at import, rather than in a preexec_fn: forking a
    threaded process and running Python before exec can deadlock.)"""
    parent = os.environ.get(PARENT_ENV)
    if os.environ.get(CHILD_ENV) != "1" or not parent or not parent.isdigit():
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):
        raise SystemExit(0)


class ControlPool(bootsteps.StartStopStep):
    """Worker bootstep: serve the control queue from a supervised thread-pool worker."""

    label = "scorer control pool"
    #: Started after the prefork pool has forked its processes. A child forked (never exec'd)
    #: while one of our threads is inside Popen inherits that Popen's exec-status pipe and holds
    #: it open for its whole life, so the Popen never returns: its supervisor hung and never
    #: started that child again (CI, twice: a control worker or the end game not restarted).
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.procs: dict[int, subprocess.Popen] = {}
        self._stopping = threading.Event()
        queues = worker.app.amqp.queues
        consuming = set(queues.consume_from)
        ingest = worker.app.conf.task_default_queue
        self.enabled = (keys.CONTROL_QUEUE in consuming and ingest in consuming
                        and os.environ.get(CHILD_ENV) != "1")
        if self.enabled:
            queues.deselect([keys.CONTROL_QUEUE])
            name, _, host = worker.hostname.partition("@")
            self.cmds = []
            for i in range(PROCESSES):  # the first keeps the name it always had
                node = f"{name}-control{i or ''}@{host}"
                cmd = [sys.executable, "-m", "celery", "-A", app_spec(sys.argv), "worker",
                       "-P", "threads", "-c", str(TIMERS.control.threads), "-Q", keys.CONTROL_QUEUE,
                       "-n", node, "--without-mingle", "--without-gossip",
                       "-l", _level_name(getattr(worker, "loglevel", None))]
                if getattr(worker, "logfile", None):
                    cmd += ["-f", worker.logfile]
                self.cmds.append(cmd)
            if ENDGAME_PROCESS:  # the end game in a process of its own (its own GIL)
                self.cmds.append([sys.executable, "-m", "worker.doors.endgame_main"])

    def start(self, worker: Any) -> None:
        if self.enabled:
            for i in range(len(self.cmds)):
                threading.Thread(target=self._supervise, args=(i,), daemon=True,
                                 name=f"control-pool-{i}").start()

    def _supervise(self, i: int) -> None:
        # Started from this long-lived thread: PR_SET_PDEATHSIG fires when the thread that
        # forked the child ends, so it must live as long as the worker.
        first_delay, max_delay = TIMERS.control.restart_delay  # doubling up to the cap
        delay = first_delay
        env = {**os.environ, CHILD_ENV: "1", PARENT_ENV: str(os.getpid())}
        while not self._stopping.is_set():
            try:
                started = time.monotonic()
                proc = self.procs[i] = subprocess.Popen(self.cmds[i], env=env)
            except OSError as err:
                log.error("could not start the control worker (%s); trying again in %.0fs",
                          err, delay)
                if self._stopping.wait(delay):
                    return
                delay = min(max_delay, delay * 2)
                continue
            log.info("control worker started (pid %d)", proc.pid)
            while proc.poll() is None and not self._stopping.wait(0.5):
                pass
            if self._stopping.is_set():
                return
            if time.monotonic() - started >= max_delay:
                # It ran well before it died: a fresh failure, not a crash loop. (Never reset,
                # a worker up for weeks restarted each lost child only after the cap.)
                delay = first_delay
            log.warning("control worker exited with %s; starting it again in %.0fs",
                        proc.returncode, delay)
            if self._stopping.wait(delay):
                return
            delay = min(max_delay, delay * 2)

    def stop(self, worker: Any) -> None:
        self._stopping.set()
        running = [p for p in self.procs.values() if p.poll() is None]
        for proc in running:  # all at once: they finish their tasks side by side
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + TIMERS.control.stop_grace
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def shutdown(self, worker: Any) -> None:
        self.stop(worker)

    def terminate(self, worker: Any) -> None:
        self.stop(worker)
