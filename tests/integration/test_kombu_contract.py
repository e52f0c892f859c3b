"""The kombu Redis layout the drain and the watermark read, checked against a real worker.

worker/engine/ingest/drain.py, worker/engine/ingest/watermark.py and their Lua
(worker/engine/state/scripts/drain.py, watermark.py) read kombu's Redis transport straight
from Redis, through structures kombu documents nowhere:

- the ingest queue is one Redis list named exactly by the queue (no global_keyprefix, no
  priority suffix for priority-0 messages): producers LPUSH, so index 0 is the newest and
  the right end the oldest; consumers BRPOP/RPOP the right end (DRAIN_CLAIM RPOPs it, the
  watermark's checkpoint is LINDEX 0, DRAIN_RECOVER and give_back_stuck RPUSH to be next);
- a message a consumer holds is in the `unacked` hash (delivery tag -> JSON
  [message, exchange, routing_key], the watermark's Lua reads element 3, give_back_stuck
  re-queues element 1) and in the `unacked_index` zset (delivery tag -> the consumer's
  time() at delivery, compared with Redis's TIME);
- an acknowledged message leaves both; a restored one leaves both and is back on the list
  (kombu 5.7: at the consuming end after its visibility sweep or a channel's restore at
  close, at the newest end after a rejection with requeue, e.g. a pool process lost).

A real `celery -A <app> worker` of the project's app and configuration (acks_late, prefetch
1) consumes real messages, with one task added that holds its message until the test lets it
go; the restore at close is a kombu consumer of the test process. Each check fails with the
structure it found changed: read docs/deployment.md (Raising a pin) before raising kombu,
celery or redis-py. About 10 s.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection, Consumer, Exchange, Queue

from scorer_local.procs import children_map
from scorer_local.stack import Processes, scorer_env
from tests.conftest import SDKAPPID, SECRET
from tests.helpers import wait_for
from worker.engine.ingest import drain, watermark
from worker.engine.state import keys

pytestmark = pytest.mark.timeout(60)

QUEUE = "celery"  # SCORER_QUEUE's default: the worker's ingest queue
STARTED = "contract:started"  # labels, in the order the worker started their tasks
RELEASE = "contract:release:"  # + label: the held task may finish
RELEASE_ALL = "contract:release-all"  # teardown: every held task may finish

#: The worker's app: the project's, plus a task that holds its message (acks_late: it stays
#: unacknowledged) until the test sets its release key.
APP = f'''"""The project's Celery app plus contract.hold (test_kombu_contract.py)."""
import os
import time

import redis

from worker.doors.app import app

_client = None


@app.task(name="contract.hold", ignore_result=True)
def hold(label, timeout=50.0):
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["SCORER_REDIS_URL"])
    _client.rpush({STARTED!r}, label)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _client.exists({RELEASE!r} + label, {RELEASE_ALL!r}):
            return
        time.sleep(0.01)
'''


def broken(structure: str, detail: str) -> AssertionError:
    """The failure of a check: which of kombu's structures changed, and what was seen."""
    return AssertionError(
        f"kombu contract broken: {structure}: {detail}. The drain and the watermark read it "
        "(worker/engine/ingest/drain.py, watermark.py, worker/engine/state/scripts/); see "
        "docs/deployment.md, Raising a pin.")


def expect(ok: Any, structure: str, detail: str) -> None:
    if not ok:
        raise broken(structure, detail)


def task_id(raw: str | bytes) -> str | None:
    """The Celery task id of a raw message on the list (None when not a Celery envelope)."""
    try:
        return json.loads(raw)["headers"]["id"]
    except (ValueError, KeyError, TypeError):
        return None


class Stack:
    """The redis-server of the session, a worker of the contract app, a producer."""

    def __init__(self, url: str, logdir: Path) -> None:
        self.url = url
        self.logdir = logdir
        (logdir / "contract_app.py").write_text(APP)
        env = scorer_env(SDKAPPID, SECRET, "http://127.0.0.1:9", url)
        env["PYTHONPATH"] = f"{logdir}{os.pathsep}{env['PYTHONPATH']}"
        self.procs = Processes(env, logdir, app="contract_app")
        self.r = redis.Redis.from_url(url, decode_responses=True)
        self.producer = Celery(broker=url)
        self.producer.conf.task_serializer = "json"
        self.ids: dict[str, str] = {}  # label -> task id
        self.labels = (f"m{i}" for i in itertools.count())
        self.starts = 0
        self.worker: Any = None

    # -- processes ----------------------------------------------------------------------------
    def start_worker(self, probe: bool = True) -> None:
        """Start a worker; with `probe`, wait until it has consumed a message (the queue must
        be free of held messages then: it is taken after them)."""
        self.starts += 1
        # -Q: the ingest queue alone (no control pool), one prefork process, prefetch 1.
        self.worker = self.procs.start(
            f"worker{self.starts}", "worker", "--loglevel=INFO", "--concurrency=1",
            "--pool=prefork", "-Q", QUEUE, "-n", f"contract{self.starts}@%h",
            "--without-mingle", "--without-gossip")
        if not probe:
            return
        label = self.send()
        self.release(label)
        try:
            self.wait(lambda: label in self.started(), 40, "the worker started and consumed")
        except AssertionError as err:
            if self.worker.poll() is None and self.queued() == [label]:
                raise broken("the queue list's name", f"a live worker of queue {QUEUE!r} "
                             f"leaves the message on the list {QUEUE!r} ({err})") from None
            raise

    def pool_children(self) -> list[int]:
        return children_map().get(self.worker.pid, [])

    def kill_worker(self) -> None:
        """SIGKILL the worker and its pool: no warm shutdown, no restore at close."""
        try:
            os.killpg(self.worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.worker.wait(10)

    def log_tail(self) -> str:
        path = self.logdir / f"worker{self.starts}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"\n--- {path} (tail) ---\n{text[-4000:]}"

    # -- messages -----------------------------------------------------------------------------
    def send(self) -> str:
        label = next(self.labels)
        result = self.producer.send_task("contract.hold", kwargs={"label": label}, queue=QUEUE)
        self.ids[label] = result.id
        return label

    def release(self, *labels: str) -> None:
        for label in labels:
            self.r.set(RELEASE + label, 1)

    def started(self) -> list[str]:
        return self.r.lrange(STARTED, 0, -1)

    def queued(self) -> list[str]:
        """The labels on the queue list, index 0 (the newest) first."""
        by_id = {v: k for k, v in self.ids.items()}
        return [by_id.get(task_id(raw) or "", "?") for raw in self.r.lrange(QUEUE, 0, -1)]

    def unacked(self) -> dict[str, Any]:
        """kombu's `unacked` hash, each record parsed (or left raw when it is not JSON)."""
        out: dict[str, Any] = {}
        for tag, raw in self.r.hgetall(keys.KOMBU_UNACKED).items():
            try:
                out[tag] = json.loads(raw)
            except ValueError:
                out[tag] = raw
        return out

    def unacked_tag(self, label: str) -> str | None:
        """The delivery tag under which `label`'s message is in `unacked`."""
        for tag, record in self.unacked().items():
            try:
                if record[0]["headers"]["id"] == self.ids[label]:
                    return tag
            except (KeyError, IndexError, TypeError):
                continue
        return None

    def index(self) -> dict[str, float]:
        return dict(self.r.zrange(keys.KOMBU_UNACKED_INDEX, 0, -1, withscores=True))

    def reserved(self, label: str, timeout: float = 20) -> str:
        """Wait until the worker runs `label`'s task; its delivery tag in `unacked`."""
        self.wait(lambda: label in self.started(), timeout, f"the worker to start {label}")
        tag = self.unacked_tag(label)
        expect(tag, "the `unacked` hash",
               f"no record whose message has the id of {label}, a message the worker holds "
               f"(acks_late); the hash holds {str(self.unacked())[:1500]}")
        assert tag is not None
        return tag

    def idle(self) -> bool:
        return not self.r.llen(QUEUE) and not self.r.hlen(keys.KOMBU_UNACKED)

    def wait(self, pred: Callable[[], Any], timeout: float, what: str) -> Any:
        return wait_for(pred, timeout, 0.02, what, detail=lambda: (
            f"queue (newest first) {self.queued()}, unacked {sorted(self.unacked())}, "
            f"started {self.started()}{self.log_tail()}"))


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory) -> Iterator[Stack]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    s = Stack(redis_server.url, tmp_path_factory.mktemp("kombu-contract"))
    try:
        s.start_worker()
        yield s
    finally:
        s.r.set(RELEASE_ALL, 1)
        s.procs.stop(timeout=10)
        s.r.delete(*[k for k in s.r.scan_iter("contract:*")] or ["contract:none"])
        s.r.close()
        s.producer.close()


@pytest.fixture
def rt(stack, monkeypatch):
    """The project's runtime on the same Redis: its drain and watermark code, for real (no
    sandbox: nothing here calls Tencent)."""
    from worker.engine.runtime import build_runtime
    from worker.engine.settings import Settings

    for name in list(os.environ):
        if name.startswith("SCORER_") and name not in ("SCORER_SDKAPPID", "SCORER_SECRET_KEY"):
            monkeypatch.delenv(name)

    runtime = build_runtime(Settings(_env_file=None, sdkappid=SDKAPPID, secret_key=SECRET,
                                     redis_url=stack.url, queue=QUEUE))
    yield runtime
    runtime.client.close()
    runtime.redis.close()


@pytest.fixture(autouse=True)
def leaves_the_worker_idle(stack):
    """Each test starts and ends with nothing queued or held, and a live worker."""
    if stack.worker.poll() is not None:
        stack.start_worker()
    stack.wait(stack.idle, 20, "an idle worker before the test")
    yield
    stack.release(*stack.ids)
    if stack.worker.poll() is not None:
        stack.start_worker()
    stack.wait(stack.idle, 20, "the worker to finish the test's messages")


def test_the_ingest_queue_is_one_list_named_by_the_queue_newest_first(stack, rt):
    """drain.py (DRAIN_CLAIM: RPOP the oldest; ingest_messages: LPUSH back), watermark.py
    (checkpoint: LINDEX 0 is the newest), metrics and DRAIN_REQUEST (LLEN of the queue)."""
    held = stack.send()
    stack.reserved(held)  # prefetch 1: the worker takes nothing more until it acks
    first, second = stack.send(), stack.send()

    holders = {}
    for key in stack.r.scan_iter():
        if stack.r.type(key) == "list":
            ids = {task_id(raw) for raw in stack.r.lrange(key, 0, -1)}
            if stack.ids[first] in ids or stack.ids[second] in ids:
                holders[key] = ids
    expect(list(holders) == [QUEUE], "the queue list's name",
           f"priority-0 messages sent to queue {QUEUE!r} are in the lists {list(holders)!r}, "
           f"not in one list named {QUEUE!r} (a key prefix or a priority suffix?)")
    expect(stack.r.llen(QUEUE) == 2, "the queue list", f"LLEN {QUEUE} is "
           f"{stack.r.llen(QUEUE)} with two messages queued")
    expect(stack.queued() == [second, first], "the queue list's ends",
           f"producers no longer LPUSH: LRANGE 0 -1 gives {stack.queued()!r}, expected the "
           f"newest ({second}) at index 0 and the oldest ({first}) at the right end")

    # The drain claims from the right end: the oldest message.
    claim = keys.drain_claim_key("contract")
    raws = rt.script("DRAIN_CLAIM", broker=True)(keys=[QUEUE, keys.DRAIN_CLAIMS, claim], args=[1])
    expect([task_id(r) for r in raws] == [stack.ids[first]], "the queue list's ends",
           f"RPOP took {[task_id(r) for r in raws]!r}, not the oldest message ({first})")
    msg = drain.decode(raws[0])
    expect(msg.task == "contract.hold" and msg.kwargs == {"label": first} and msg.eta is None,
           "the message envelope on the list", f"drain.decode read {msg!r}")
    # A task that is not a webhook goes back to the list for Celery (LPUSH, as raw JSON).
    counts = drain.ingest_messages(rt, raws, lambda task: True)
    expect(counts["returned"] == 1, "the message envelope on the list",
           f"the drain did not give a task of the app back: {dict(counts)!r}")
    stack.r.delete(claim)
    stack.r.zrem(keys.DRAIN_CLAIMS, claim)
    expect(stack.queued() == [first, second], "the queue list's ends",
           f"after the drain's LPUSH the list is {stack.queued()!r}")

    # The worker consumes the right end: `second` now, then the message the drain gave back.
    stack.release(held)
    stack.reserved(second)
    expect(stack.queued() == [first], "the queue list's ends",
           f"the worker took from the wrong end: started {stack.started()[-2:]!r}, the list "
           f"holds {stack.queued()!r}")
    stack.release(second)
    stack.reserved(first)  # a raw message the drain LPUSHed is one the worker runs
    stack.release(first)


def test_a_reserved_message_is_in_unacked_and_unacked_index_until_acknowledged(stack, rt):
    """watermark.py (WATERMARK: unacked_index scores, record element 3), give_back_stuck."""
    for _ in range(3):  # the watermark follows the present while nothing is held
        time.sleep(0.06)
        watermark.advance(rt)
    sent_at = time.time()
    held = stack.send()
    tag = stack.reserved(held)
    seen_at = time.time()

    expect(stack.r.type(keys.KOMBU_UNACKED) == "hash", "the `unacked` hash",
           f"key {keys.KOMBU_UNACKED!r} is a {stack.r.type(keys.KOMBU_UNACKED)}")
    expect(stack.r.type(keys.KOMBU_UNACKED_INDEX) == "zset", "the `unacked_index` zset",
           f"key {keys.KOMBU_UNACKED_INDEX!r} is a {stack.r.type(keys.KOMBU_UNACKED_INDEX)}")
    index = stack.index()
    expect(set(index) == set(stack.unacked()) == {tag}, "the `unacked_index` zset",
           f"its members {sorted(index)!r} are not the delivery tags of `unacked` "
           f"{sorted(stack.unacked())!r}")
    record = stack.unacked()[tag]
    expect(isinstance(record, list) and len(record) == 3 and isinstance(record[0], dict),
           "the `unacked` record", f"not JSON [message, exchange, routing_key]: {record!r}")
    message, exchange, routing_key = record
    expect(routing_key == QUEUE, "the `unacked` record",
           f"element 3 is {routing_key!r}, not the routing key {QUEUE!r} the watermark and "
           "give_back_stuck compare with the ingest queue")
    expect(isinstance(exchange, str), "the `unacked` record", f"element 2 is {exchange!r}")
    expect(message.get("properties", {}).get("delivery_tag") == tag, "the `unacked` record",
           f"the hash field {tag!r} is not the message's delivery_tag "
           f"{message.get('properties', {}).get('delivery_tag')!r}")
    decoded = drain.decode(json.dumps(message))
    expect(decoded.task == "contract.hold" and decoded.kwargs == {"label": held},
           "the `unacked` record", f"element 1 is not the message as queued: {decoded!r}")
    lua = rt.broker.eval("local v = cjson.decode(redis.call('HGET', KEYS[1], ARGV[1]))"
                         " return v[3]", 1, keys.KOMBU_UNACKED, tag)
    expect(lua == QUEUE, "the `unacked` record",
           f"the watermark's Lua (cjson.decode, v[3]) reads {lua!r}")
    delivered = index[tag]
    secs, usecs = stack.r.time()
    expect(sent_at - 1 <= delivered <= seen_at + 1, "the `unacked_index` scores",
           f"score {delivered} is not the consumer's time() at delivery "
           f"(sent at {sent_at:.3f}, seen held at {seen_at:.3f})")
    expect(abs(secs + usecs / 1e6 - delivered) < 10, "the `unacked_index` scores",
           f"score {delivered} is not comparable with Redis's TIME {secs}.{usecs:06d}")

    # The watermark holds back while the message is held (its real record), then passes it.
    for _ in range(4):
        time.sleep(0.06)
        mark = watermark.advance(rt)
    expect(mark.w < sent_at, "the `unacked` record",
           f"the watermark moved to {mark.w:.3f} past a message queued at {sent_at:.3f} and "
           "still held: it no longer sees kombu's unacked ingest messages")

    stack.release(held)
    stack.wait(lambda: tag not in stack.index() and tag not in stack.unacked(), 10,
               f"the acknowledged message {held} to leave `unacked` and `unacked_index`")
    for _ in range(40):  # (a few check-ins of the consumer: worker/engine/ingest/consumers.py)
        time.sleep(0.06)
        mark = watermark.advance(rt)
        if mark.w > sent_at:
            break
    expect(mark.w > sent_at, "the `unacked` record",
           f"the watermark stays at {mark.w:.3f} after the message of {sent_at:.3f} was "
           "acknowledged")


def test_a_message_the_tick_gives_back_is_taken_next(stack, rt, monkeypatch):
    """watermark.give_back_stuck: element 1 of the record, RPUSHed as JSON, is run next."""
    held = stack.send()
    tag = stack.reserved(held)
    later = stack.send()
    monkeypatch.setattr(watermark, "STUCK_SECONDS", 0.0)
    time.sleep(0.01)  # its delivery time is now in the past of Redis's clock
    moved = watermark.give_back_stuck(rt)
    expect(moved == 1, "the `unacked` record",
           f"give_back_stuck moved {moved} messages, not the one held")
    expect(tag not in stack.unacked() and tag not in stack.index(),
           "the `unacked` hash and `unacked_index` zset", "the given-back message stayed")
    expect(stack.queued() == [later, held], "the queue list's ends",
           f"after RPUSH the list is {stack.queued()!r}: {held} should be at the consuming "
           f"end, ahead of {later}")
    stack.release(held)  # the worker acks the original (gone already: a no-op), then...
    runs = stack.wait(lambda: (s := stack.started()).count(held) == 2 and later in s and s,
                      20, f"the worker to run the given-back {held} and {later}")
    expect(runs[-3:] == [held, held, later], "the queue list's ends",
           f"the worker ran {runs[-3:]!r}: the given-back {held} should run before {later}")


def test_a_task_whose_process_died_is_restored_to_the_newest_end(stack):
    """task_reject_on_worker_lost: Celery rejects with requeue, kombu's QoS.reject LPUSHes it
    back (the watermark's Limits) and removes it from `unacked` and `unacked_index`."""
    held = stack.send()
    tag = stack.reserved(held)
    later = stack.send()
    children = stack.pool_children()
    expect(len(children) == 1, "the worker's pool", f"pool processes {children!r}")
    os.kill(children[0], signal.SIGKILL)
    # `later` was at the consuming end, the restored message goes to the newest end: the
    # worker takes `later` first and the restored message waits on the list.
    stack.reserved(later, timeout=30)
    expect(tag not in stack.index() and stack.unacked_tag(held) is None,
           "the `unacked` hash and `unacked_index` zset",
           f"the restored message {held} is still recorded as held")
    expect(stack.queued() == [held], "a restored message on the queue list",
           f"the list is {stack.queued()!r}, expected the restored {held} alone")
    raw = stack.r.lindex(QUEUE, 0)
    expect(drain.decode(raw).kwargs == {"label": held}, "a restored message on the queue list",
           f"the drain cannot read it: {raw[:300]!r}")
    stack.release(later)
    runs = stack.wait(lambda: (s := stack.started()).count(held) == 2 and s, 20,
                      f"the restored {held} run")
    expect(runs[-3:] == [held, later, held], "a restored message on the queue list",
           f"the worker ran {runs[-3:]!r}")


def test_a_channel_closed_with_a_message_delivered_restores_it(stack):
    """kombu's restore at close (QoS.restore_unacked, which worker/doors/kombu_fix.py wraps):
    the message leaves `unacked` and `unacked_index` and is back at the consuming end."""
    from worker.doors import kombu_fix

    kombu_fix.install()  # as in every worker process
    held = stack.send()
    stack.reserved(held)  # the worker is busy: the consumer below gets the next message
    first, second = stack.send(), stack.send()
    got: list[Any] = []
    with Connection(stack.url) as conn:
        channel = conn.channel()
        channel.basic_qos(0, 1, False)
        queue = Queue(QUEUE, Exchange(QUEUE), routing_key=QUEUE)
        with Consumer(channel, [queue], callbacks=[lambda body, m: got.append(m)],
                      accept=["json"]):
            deadline = time.monotonic() + 10
            while not got and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=1)
                except TimeoutError:
                    pass
            expect(got, "the queue list", "a kombu consumer of the queue received nothing")
            tag = got[0].delivery_tag
            took = got[0].headers.get("id")
            expect(took == stack.ids[first], "the queue list's ends",
                   f"a consumer took {took!r}, not the oldest message ({first})")
            expect(tag in stack.unacked() and tag in stack.index(),
                   "the `unacked` hash and `unacked_index` zset",
                   "a message a kombu consumer holds is not recorded in both")
            channel.close()  # no ack: restore_unacked
    expect(tag not in stack.unacked() and tag not in stack.index(),
           "the `unacked` hash and `unacked_index` zset",
           "the message restored at close is still recorded as held")
    expect(stack.queued() == [second, first], "a restored message on the queue list",
           f"after the restore at close the list is {stack.queued()!r}: expected the "
           f"restored {first} back at the consuming end, ahead of {second}")


def test_a_dead_workers_message_stays_unacked_until_kombus_sweep_restores_it(stack):
    """A SIGKILLed worker restores nothing: the record stays (give_back_stuck's premise), and
    kombu's visibility-timeout sweep puts it back at the consuming end."""
    held = stack.send()
    tag = stack.reserved(held)
    stack.kill_worker()
    later = stack.send()
    expect(tag in stack.unacked() and tag in stack.index(),
           "the `unacked` hash and `unacked_index` zset",
           "a message of a SIGKILLed worker left them: who restored it?")
    with Connection(stack.url, transport_options={"visibility_timeout": 0}) as conn:
        conn.default_channel.qos.restore_visible(start=0, num=100, interval=1)
    expect(tag not in stack.unacked() and tag not in stack.index(),
           "the `unacked` hash and `unacked_index` zset",
           "kombu's visibility sweep left the restored message recorded as held")
    expect(stack.queued() == [later, held], "a restored message on the queue list",
           f"after kombu's sweep the list is {stack.queued()!r}: expected the restored "
           f"{held} at the consuming end, ahead of {later}")
    stack.start_worker(probe=False)
    stack.release(held)
    runs = stack.wait(lambda: (s := stack.started()).count(held) == 2 and later in s and s,
                      40, f"a new worker to run the restored {held} and {later}")
    expect(runs[-3:] == [held, held, later], "the queue list's ends",
           f"the new worker ran {runs[-3:]!r}: the restored {held} should run before {later}")
