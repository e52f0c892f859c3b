"""The battle lock: heartbeat keeps it, a dead local holder is taken over at once, else wait."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import redis

from worker.lock import HOST, BattleLock


def test_heartbeat_keeps_the_lock_past_its_ttl(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    with BattleLock(r, "bs:test:lock", ttl_ms=600) as lock:
        assert lock.held
        time.sleep(1.5)  # more than two ttls: only the heartbeat keeps it
        with BattleLock(r, "bs:test:lock") as other:
            assert not other.held
        assert r.get("bs:test:lock") == lock.token and not lock.lost
    assert r.get("bs:test:lock") is None


def test_lock_of_a_dead_process_here_is_taken_over_at_once(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    r.set("bs:test:lock", f"{HOST}|{dead.pid}|x", px=60_000)
    with BattleLock(r, "bs:test:lock") as lock:
        assert lock.held


def test_lock_of_a_live_process_or_another_host_waits_for_its_ttl(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    r.set("bs:test:lock", f"{HOST}|{os.getppid()}|x", px=60_000)
    with BattleLock(r, "bs:test:lock") as lock:
        assert not lock.held
    r.set("bs:test:lock", "elsewhere|1|x", px=60_000)
    with BattleLock(r, "bs:test:lock") as lock:
        assert not lock.held
