"""Hosts whose clocks disagree: every time another host compares is taken on Redis's clock.

A worker host whose wall clock runs 1.2 s ahead (an NTP failure) once fed the shared estimate of
Tencent's clock samples that contradicted the other hosts': the estimate then excluded the true
offset, a host decided "surely ended" while the battle ran and recorded its last value as
unapplied (the acceptance `skew` scenario: 2/4 battles fair, 7,279 coins under). Host clocks are
shifted here as the referee shifts them: `time.time` offset in every process of one host.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import redis

from scorer_local.sandbox_control import SandboxControl
from scorer_local.stack import Processes, skewed_env
from tests.conftest import worker_env
from tests.helpers import end_body, gift_body, start_body, wait_for
from tests.integration.test_metrics import run_cli
from worker.engine.runtime import build_runtime
from worker.engine.state import keys, redisclock
from worker.engine.state.redisclock import RedisClock

ROOT = Path(__file__).resolve().parents[2]
AHEAD = 1.2  # seconds the skewed host's clock runs ahead


def _skewed() -> float:
    return time.time() + AHEAD


def test_two_hosts_apart_keep_a_true_estimate_of_tencents_clock(settings):
    """Both hosts answer on the same shared estimate, and each one's bounds hold Tencent's
    clock (the sandbox's, this machine's) after many answers from both."""
    straight = build_runtime(settings)
    ahead = build_runtime(settings)
    ahead.clock = RedisClock(ahead.broker, local=_skewed)  # as build_runtime does, host ahead
    ahead.client.clock = ahead.clock
    try:
        for i in range(40):
            for rt in (straight, ahead):
                rt.client.get_gift_count(f"room-{i}", "owner")
                before = time.time()
                lo, hi = rt.tclock.earliest(), rt.tclock.latest()
                after = time.time()
                assert lo <= after and before <= hi, (i, lo - before, hi - after)
            time.sleep(0.013 * (i % 7))  # answers at many fractions of a second
        lo, hi = straight.tclock.bounds()
        assert hi - lo < 0.5  # the two hosts' samples agree: the estimate narrowed
        assert abs(ahead.clock() - straight.clock()) < 0.05
    finally:
        straight.client.close()
        ahead.client.close()


def test_a_clock_off_redis_is_measured_recorded_and_followed_when_it_steps(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    skew = [AHEAD]
    clock = RedisClock(r, local=lambda: time.time() + skew[0])

    def redis_now() -> float:
        return redisclock.redis_now(r)

    assert abs(clock() - redis_now()) < 0.05  # the first read measures
    assert abs(redisclock.offsets(r, redis_now())[redisclock.host_name()] - AHEAD) < 0.05
    skew[0] = -3.0  # the host's clock steps back 4.2 s: the next read wakes a measure
    wait_for(lambda: abs(clock() - redis_now()) < 0.05, timeout=2, what="the re-measure")
    r.hset(keys.CLOCK_HOSTS, "old-host", f"9.0,{redis_now() - 2 * redisclock.RECORD_TTL}")
    assert "old-host" not in redisclock.offsets(r, redis_now())  # forgotten


def test_a_measure_that_fails_keeps_the_last_offset(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    clock = RedisClock(r, local=_skewed)
    clock()
    offset = clock.offset
    assert abs(offset + AHEAD) < 0.05
    clock.client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    assert not clock.measure_once()  # Redis gone: no exception, and the last offset kept
    started = time.monotonic()
    assert abs(clock() - (_skewed() + offset)) < 0.05
    assert time.monotonic() - started < 0.01  # a read never waits on Redis


def test_check_config_reports_a_host_off_redis(settings, tmp_path):
    env = worker_env(settings)
    ok = run_cli(env, "check-config")
    assert ok.returncode == 0 and "host clock" in ok.stdout, ok.stderr
    off = run_cli(skewed_env(env, AHEAD, tmp_path / "skew"), "check-config")
    assert off.returncode == 1 and "+1.2" in off.stderr and "NTP" in off.stderr, off.stderr


def test_two_workers_whose_clocks_differ_by_1_2_s_score_every_gift(settings, sandbox, tmp_path):
    """Two worker hosts, the second's clock 1.2 s ahead in all its processes and ingesting
    only, the first running the rest, and beat; gifts until the end of three battles: each
    room ends with every gift sent 1 s or more before its end, and no more than Tencent
    counted."""
    env = worker_env(settings)
    skewed = skewed_env(env, AHEAD, tmp_path / "skew")
    first, second = Processes(env, tmp_path), Processes(skewed, tmp_path)
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    ctl = SandboxControl(sandbox.url)
    rng = random.Random(27)
    try:
        # The first host runs everything (ingest, control pool, end game) and beat; the host
        # ahead only ingests: its stamps (the end game's due times) meet the first's clock.
        first.worker("w1", concurrency=2)
        second.start("w2", "worker", "--loglevel=INFO", "--concurrency=2", "-n", "w2@%h",
                     "-Q", settings.queue)
        first.beat()
        wait_for(lambda: float(r.hget(keys.INGEST_WATERMARK, "w") or 0) > 0, timeout=60,
                 what="the control worker's first ticks")
        wait_for(lambda: len(redisclock.offsets(r, time.time())) >= 1, timeout=30,
                 what="the hosts' clock records")
        from celery import Celery

        producer = Celery(broker=settings.redis_url)
        producer.conf.task_serializer = "json"
        duration = 12
        start = time.time() + 1
        battles = []
        for n in range(3):
            rooms = {f"skew{n}_a": f"own{n}_a", f"skew{n}_b": f"own{n}_b"}
            bid = ctl.create_battle(rooms, duration * 1000, start=start + n)["BattleId"]
            battles.append((bid, rooms, start + n))
        for bid, rooms, s in battles:
            producer.send_task("scorer.webhook", kwargs={
                "body": start_body(bid, s, duration * 1000, rooms), "event_id": f"s-{bid}"})
        # Gifts until each end, each webhook sent as Tencent counts it.
        events = []
        for _, rooms, s in battles:
            for room, owner in rooms.items():
                c = s + 0.2
                while c < s + duration - 0.05:
                    events.append((c, room, owner, rng.choice((1, 5, 10, 100, 500)), s + duration))
                    c += rng.expovariate(4.0)
        events.sort()
        truth: dict[str, int] = {}  # what Tencent counted
        floor: dict[str, int] = {}  # what was sent 1 s or more before its battle's end
        for n, (c, room, owner, coins, end) in enumerate(events):
            time.sleep(max(0.0, c - time.time()))
            ctl.count_gifts([{"RoomId": room, "To_Account": [owner], "From_Account": "v",
                              "Coins": coins, "Count": 1}])
            truth[room] = truth.get(room, 0) + coins
            if time.time() <= end - 1.0:
                floor[room] = floor.get(room, 0) + coins
            producer.send_task("scorer.webhook", kwargs={
                "body": gift_body(room, owner, coins, t=c), "event_id": f"g-{n}"})
        time.sleep(max(0.0, start + 1 + duration + 3 - time.time()))
        for bid, rooms, s in battles:
            producer.send_task("scorer.webhook", kwargs={
                "body": end_body(bid, s, s + duration, ctl.scores(bid), rooms),
                "event_id": f"e-{bid}"})
        got = {room: score for bid, _, _ in battles for room, score in ctl.scores(bid).items()}
        fair = {room: floor[room] <= got[room] <= truth[room] for room in truth}
        assert all(fair.values()), (got, floor, truth, r.hgetall(keys.CLOCK_HOSTS))
    finally:
        r.close()
        first.stop(30)
        second.stop(30)


#: A consumer on the host ahead: takes one message and holds it; prints its unacked stamp
#: minus Redis's TIME.
CONSUMER = """
import sys
import worker.doors.app  # the worker's app: kombu_fix installed, as in a worker process
from kombu import Connection
from worker.engine.runtime import get_runtime
from worker.engine.state import keys
broker = get_runtime().broker
with Connection(sys.argv[1]) as conn:
    q = conn.SimpleQueue("clock-test")
    q.put({"n": 1})
    held = q.get(timeout=5)
    (tag, stamp), = broker.zrange(keys.KOMBU_UNACKED_INDEX, 0, -1, withscores=True)
    secs, usecs = broker.time()
    print(stamp - (secs + usecs / 1e6))
    held.ack()
"""


def test_kombu_stamps_a_message_it_holds_on_redis_clock(settings, tmp_path):
    """The ingest watermark judges kombu's unacked stamps against Redis's TIME: a consumer
    1.2 s ahead stamped a message it still held 1.2 s late, hiding it from the watermark
    (fails without kombu_fix's item 3: the stamp is 1.2 s off)."""
    env = skewed_env(worker_env(settings), AHEAD, tmp_path / "skew")
    out = subprocess.run([sys.executable, "-c", CONSUMER, settings.redis_url], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert abs(float(out.stdout.split()[-1])) < 0.1, out.stdout
