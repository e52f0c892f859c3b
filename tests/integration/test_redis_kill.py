"""Issue 13 item 9: a worker outlives Redis crashes (SIGKILL, AOF everysec), and drops nothing
that reached the queue once Redis was back.

A real `celery -A worker worker` (its prefork ingest processes and its control pool) and a
beat run against a redis-server with `appendonly yes` (appendfsync everysec, Redis's default).
Twice: gifts are sent and ingested, more are sent, and Redis is SIGKILLed at once (no AOF
rewrite, no clean close), stays down ~2 s while a producer keeps trying to send, and comes
back on the same port and data directory. Then:
- the worker's main process and its control workers are still alive (none restarted);
- every gift ingested more than a second before a crash is still there (everysec fsynced it);
- every gift whose send succeeded after Redis came back, the retried ones included, is
  ingested (gifts sent just before a crash may be lost with the broker's copy: allowed);
- no log line says "Unrecoverable error", "reject requeue=False" or that a control worker
  exited.
"""

from __future__ import annotations

import itertools
import threading
import time

import pytest
import redis
from celery import Celery

from scorer_local.stack import Processes, RedisServer, alive, children_running, scorer_env
from tests.conftest import SDKAPPID, SECRET
from tests.helpers import gift_body, start_body, wait_for
from worker.doors.control_pool import PROCESSES
from worker.engine.state import keys

KILLS = 2
DOWN_SECONDS = 2.0
GIFTS = 10  # per batch
STREAM_RATE = 50  # gifts a second, all along
#: `scorer.webhooks` messages (of BIG gifts each, ~0.1 s of work) sent just before each crash:
#: ingest tasks are running when Redis dies, and finish (ack) after the worker's consumer
#: has closed its broker channel.
BIG_MESSAGES, BIG = 4, 2000
BAD_LINES = ("Unrecoverable error", "reject requeue=False", "control worker exited")





@pytest.mark.timeout(90)  # about 20-25 s on 2 cores
def test_worker_outlives_redis_sigkill_and_ingests_what_is_sent_after(sandbox, ctl, tmp_path):
    rs = RedisServer(appendonly=True).start()
    procs = Processes(scorer_env(SDKAPPID, SECRET, sandbox.url, rs.url, flush_interval=0.2,
                                 reconcile_interval=2), tmp_path)
    producer = Celery(broker=rs.url)
    producer.conf.task_serializer = "json"
    r = redis.Redis.from_url(rs.url, decode_responses=True, socket_timeout=2)
    log_path = tmp_path / "worker.log"

    def log_tail() -> str:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        return f"\n--- worker log (tail) {log_path} ---\n" + text[-6000:]

    rooms = {"rk_r1": "rk_o1", "rk_r2": "rk_o2"}
    start = time.time() - 1
    bid = ctl.create_battle(rooms, 600_000, start=start)["BattleId"]
    seen_key = keys.BattleKeys(bid).seen
    numbers = itertools.count(1)

    def send(body, eid=None, tries: int = 100) -> None:
        for _ in range(tries):  # a producer that retries while Redis is away
            try:
                producer.send_task("scorer.webhook", kwargs={"body": body, "event_id": eid})
                return
            except Exception:
                time.sleep(0.1)
        raise AssertionError("could not enqueue" + log_tail())

    def gifts(n: int = GIFTS) -> list[str]:
        sent = []
        for _ in range(n):
            k = next(numbers)
            room = list(rooms)[k % 2]
            eid = f"rk-{k}"
            send(gift_body(room, rooms[room], 1), eid)
            sent.append(eid)
        return sent

    def big_batches() -> None:
        for _ in range(BIG_MESSAGES):
            items = []
            for _ in range(BIG):
                k = next(numbers)
                room = list(rooms)[k % 2]
                items.append({"body": gift_body(room, rooms[room], 1), "event_id": f"rk-{k}"})
            producer.send_task("scorer.webhooks", kwargs={"items": items})

    def seen() -> set[str]:
        try:
            return r.smembers(seen_key)
        except redis.RedisError:
            return set()

    def check_log() -> None:
        lines = log_path.read_text(errors="replace").splitlines()
        for bad in BAD_LINES:
            at = next((i for i, line in enumerate(lines) if bad in line), None)
            assert at is None, f"{bad!r} in {log_path}:\n" + "\n".join(lines[at:at + 60])

    def ingested(eids: list[str], timeout: float, what: str) -> None:
        try:
            wait_for(lambda: set(eids) <= seen(), timeout, interval=0.1, what=what)
        except AssertionError as err:
            check_log()  # the likely reason first
            raise AssertionError(f"{err}: missing {sorted(set(eids) - seen())}"
                                 + log_tail()) from None

    stream: list[tuple[str, float]] = []  # (event id, when its send returned)
    stop = threading.Event()

    def flow() -> None:  # steady traffic, so that tasks are in flight at every crash
        while not stop.is_set():
            eid = gifts(1)[0]
            stream.append((eid, time.monotonic()))
            time.sleep(1 / STREAM_RATE)

    flower = threading.Thread(target=flow, daemon=True)
    try:
        worker = procs.worker("worker", concurrency=2)
        procs.beat()
        send(start_body(bid, start, 600_000, rooms))
        durable: list[str] = []  # ingested and fsynced before a crash: must survive it
        after: list[str] = []  # sent once Redis was back (or retried until it was)
        ingested(gifts(1), 30, "the worker's first ingest")
        wait_for(lambda: len(children_running(worker.pid, "-Q scorer.control")) == PROCESSES, 30,
                 what="control workers")
        controls = children_running(worker.pid, "-Q scorer.control")
        flower.start()
        back = 0.0
        for _ in range(KILLS):
            batch = gifts()
            ingested(batch, 20, "gifts before the crash")
            durable += batch
            time.sleep(1.2)  # appendfsync everysec: now on disk
            gifts()  # in flight at the crash: may be lost with the broker's copy
            big_batches()
            time.sleep(0.1)
            rs.kill()
            outage: list[str] = []
            sender = threading.Thread(target=lambda out=outage: out.extend(gifts(3)),
                                      daemon=True)
            sender.start()  # retries until Redis is back
            time.sleep(DOWN_SECONDS)
            rs.start()
            back = time.monotonic()
            sender.join(30)
            after += outage
            batch = gifts()
            after += batch
            ingested(batch, 30, "gifts after Redis came back")
        after += gifts()
        stop.set()
        flower.join(30)
        # Stream gifts whose send returned after the last restart were published to a Redis
        # that stays up; earlier ones may be lost with the last second of an AOF.
        after += [eid for eid, at in stream if at > back]
        ingested(after, 30, "every gift sent after Redis came back")
        check_log()
        assert alive(worker.pid), "the worker's main process died" + log_tail()
        assert children_running(worker.pid, "-Q scorer.control") == controls, (
            "a control worker died or was restarted" + log_tail())
        assert set(durable) <= seen(), (sorted(set(durable) - seen()), log_tail())
    finally:
        procs.stop(timeout=10)
        r.close()
        rs.cleanup()
