"""A real `celery -A worker worker` process starts against a test Redis and answers ping."""

import subprocess

from tests.conftest import ROOT, celery_cmd


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


def test_worker_consumes_both_queues_without_q(settings):
    from worker import app

    names = {q.name for q in app.conf.task_queues}
    assert names == {"celery", "scorer.control"}
    assert app.conf.task_default_queue == "celery"
    assert app.conf.accept_content == ["json"] and app.conf.task_serializer == "json"
