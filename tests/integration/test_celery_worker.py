"""A real `celery -A worker worker` process: it answers ping, and control runs beside ingest."""

import json
import os
import signal
import subprocess

import redis

from scorer_local.stack import alive, children_running, cmdline
from tests.conftest import ROOT, celery_cmd
from tests.helpers import wait_for
from worker.doors.control_pool import app_spec
from worker.engine.state import keys


def test_worker_starts_and_answers_ping(settings):
    from tests.conftest import worker_env

    env = worker_env(settings)
    worker = subprocess.Popen(celery_cmd("worker", "--loglevel=WARNING", "--concurrency=1",
                                         "--pool=prefork", "-n", "pingtest@%h"),
                              cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        out = ""
        for _ in range(20):  # the worker needs a moment to connect; ping until it answers
            proc = subprocess.run(celery_cmd("inspect", "ping", "--timeout", "2"), cwd=ROOT,
                                  env=env, capture_output=True, text=True, timeout=60)
            out = proc.stdout
            if proc.returncode == 0 and "pong" in out:
                break
        assert "pong" in out, out
    finally:
        worker.terminate()
        log, _ = worker.communicate(timeout=30)
    assert settings.secret_key.get_secret_value() not in log


def test_worker_consumes_every_queue_without_q(settings):
    from worker.doors.app import app

    names = {q.name for q in app.conf.task_queues}
    assert names == {"celery", "scorer.drain", "scorer.control"}
    assert app.conf.task_default_queue == "celery"
    assert app.conf.accept_content == ["json"] and app.conf.task_serializer == "json"






def test_control_queue_is_served_by_a_thread_pool_beside_the_ingest_processes(settings,
                                                                              tmp_path):
    """No -Q: prefork takes ingest and drains; supervised thread-pool workers (one per core,
    at most two) take control, are started again if they die, and go when their parent is
    SIGKILLed."""
    from tests.conftest import worker_env

    env = worker_env(settings)
    logfile = tmp_path / "worker.log"  # the supervisor's lines, shown if a wait fails
    with logfile.open("w") as log:
        worker = subprocess.Popen(celery_cmd("worker", "--loglevel=INFO", "-n", "iso@%h"),
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        _supervised(worker, env, settings)
    except AssertionError as err:
        lines = [line for line in logfile.read_text(errors="replace").splitlines()
                 if "control_pool" in line or "control worker" in line or "endgame" in line
                 or "Traceback" in line or "Error" in line]
        raise AssertionError(f"{err}; the worker's log said:\n" + "\n".join(lines[-40:])) \
            from None
    finally:
        try:
            os.killpg(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        worker.wait(10)


def _supervised(worker: subprocess.Popen, env: dict[str, str], settings) -> None:
    """The checks of the test above, on a running worker."""
    from worker.doors.control_pool import PROCESSES

    firsts = wait_for(lambda: (c := children_running(worker.pid, "-Q scorer.control"))
                      and len(c) == PROCESSES and c, 30, what="control workers")
    first = min(firsts)
    assert "-P threads" in cmdline(first)

    def queues() -> dict[str, set[str]]:
        proc = subprocess.run(celery_cmd("inspect", "active_queues", "--json",
                                         "--timeout", "2"),
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        try:
            answer = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {}
        return {node.split("@")[0]: {q["name"] for q in qs} for node, qs in answer.items()}

    control = {f"iso-control{i or ''}": {"scorer.control"} for i in range(PROCESSES)}
    seen = wait_for(lambda: (q := queues()) and len(q) == 1 + PROCESSES and q, 60,
                    what="every node")
    assert seen == {"iso": {"celery", "scorer.drain"}, **control}
    # The end game runs in a process of its own, and says so in Redis.
    endgame = wait_for(lambda: children_running(worker.pid, "worker.doors.endgame_main"), 30,
                       what="end-game process")
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    wait_for(lambda: r.get(keys.ENDGAME_DEDICATED) == str(min(endgame)), 30,
             what="the dedicated end-game runner's beat")
    wait_for(lambda: r.get(keys.ENDGAME_LOCK), 30, what="the end-game lock taken")
    os.kill(first, signal.SIGKILL)
    now = wait_for(lambda: (c := children_running(worker.pid, "-Q scorer.control"))
                   and len(c) == PROCESSES and first not in c and c, 30,
                   what="control worker restarted")
    os.kill(min(endgame), signal.SIGKILL)
    again = wait_for(lambda: (c := children_running(worker.pid, "worker.doors.endgame_main"))
                     and c != endgame and c, 60, what="end-game process restarted")
    os.kill(worker.pid, signal.SIGKILL)
    wait_for(lambda: not any(alive(p) for p in now | again), 30,
             what="control workers gone with their parent")


def test_app_spec_is_read_from_the_worker_command_line():
    assert app_spec(["celery", "-A", "bench.celery_bench", "worker"]) == "bench.celery_bench"
    assert app_spec(["celery", "--app=worker", "worker"]) == "worker"
    assert app_spec(["celery", "worker"]) == "worker"
