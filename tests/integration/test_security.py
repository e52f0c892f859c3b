"""The secret key never shows: not in worker logs, not in Flower's task arguments, not in errors."""

from __future__ import annotations

import threading

from celery import Celery

from scorer_local.stack import Processes
from tests.conftest import SECRET, worker_env
from tests.helpers import gift_body, wait_for


def test_task_events_show_summaries_and_logs_hold_no_secret(settings, tmp_path, redis_url):
    procs = Processes(worker_env(settings), tmp_path)
    procs.worker("sec", concurrency=1)
    app = Celery(broker=redis_url)
    seen: list[dict] = []
    live = threading.Event()

    def on_event(event: dict) -> None:
        live.set()  # any event (a heartbeat) proves the subscription is live
        if event.get("type") == "task-received":
            seen.append(event)

    # One capture for the whole test: a capture that ends (on its timeout) unsubscribes, and
    # events sent before the next one subscribes are gone (fanout is Redis PUBLISH).
    with app.connection() as conn:
        recv = app.events.Receiver(conn, handlers={"*": on_event})
        listener = threading.Thread(target=recv.capture, kwargs={"wakeup": True}, daemon=True)
        listener.start()
        try:
            wait_for(lambda: app.control.ping(timeout=0.5), timeout=30, what="worker up")
            wait_for(live.is_set, timeout=30, what="the event subscription")
            body = gift_body("sec-room", "sec-owner", 5)
            body["Secret"] = "body-only-text"
            app.send_task("scorer.webhook", kwargs={"body": body, "event_id": "sec-1"})
            app.send_task("scorer.webhooks", kwargs={"items": [{"body": body, "event_id": "s2"}]})
            app.send_task("scorer.webhook", kwargs={"body": {"CallbackCommand": 7}})  # invalid
            wait_for(lambda: len(seen) >= 3, timeout=30, what="task events")
        finally:
            recv.should_stop = True  # the capture sees it within its 1 s drain
            procs.stop()
            listener.join(timeout=5)
    by_name = {e["name"]: e for e in reversed(seen)}  # the first of each name
    assert "sec-1" in by_name["scorer.webhook"]["kwargs"]
    assert "sec-room" in by_name["scorer.webhook"]["kwargs"]
    assert by_name["scorer.webhooks"]["kwargs"] == '{"items": 1}'
    for e in seen:
        assert "body-only-text" not in e["kwargs"] + e["args"]
        assert SECRET not in str(e)
    log = (tmp_path / "sec.log").read_text()
    assert SECRET not in log and "body-only-text" not in log
    assert "usersig=" not in log  # httpx's request lines would carry the UserSig


def test_redis_passwords_are_redacted_from_log_lines_as_written_and_decoded():
    """Defence in depth: no code path logs a Redis URL, but a library error might echo one."""
    import logging

    from worker.doors import logs

    found = logs.url_passwords("redis://:p%40ss-word@h:6379/0",
                               "sentinel://:s3ntinel-pw@a:26379;sentinel://:s3ntinel-pw@b", None)
    assert {"p%40ss-word", "p@ss-word", "s3ntinel-pw"} <= set(found)
    handler = logging.StreamHandler()
    logs.configure([handler], "text", found)
    record = logging.LogRecord("scorer", logging.WARNING, __file__, 1,
                               "cannot reach redis://:p@ss-word@h and :s3ntinel-pw@a", None, None)
    for f in handler.filters:
        f.filter(record)
    text = record.getMessage()
    assert "p@ss-word" not in text and "s3ntinel-pw" not in text
