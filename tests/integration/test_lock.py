"""The battle lock: heartbeat keeps it, a dead local holder is taken over at once, else wait."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import redis

from scorer_local.stack import ROOT
from worker.engine.state.lock import HOST, RedisLock


def test_heartbeat_keeps_the_lock_past_its_ttl(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    with RedisLock(r, "bs:test:lock", ttl_ms=600) as lock:
        assert lock.held
        time.sleep(1.5)  # more than two ttls: only the heartbeat keeps it
        with RedisLock(r, "bs:test:lock") as other:
            assert not other.held
        assert r.get("bs:test:lock") == lock.token and not lock.lost
    assert r.get("bs:test:lock") is None


def test_lock_of_a_dead_process_here_is_taken_over_at_once(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    r.set("bs:test:lock", f"{HOST}|{dead.pid}|x", px=60_000)
    with RedisLock(r, "bs:test:lock") as lock:
        assert lock.held


def test_lock_of_a_live_process_or_another_host_waits_for_its_ttl(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    r.set("bs:test:lock", f"{HOST}|{os.getppid()}|x", px=60_000)
    with RedisLock(r, "bs:test:lock") as lock:
        assert not lock.held
    r.set("bs:test:lock", "elsewhere|1|x", px=60_000)
    with RedisLock(r, "bs:test:lock") as lock:
        assert not lock.held


def _other_pid_namespace_here() -> str:
    """Our lock identity as another container with our hostname (and kernel) would have it: only
    the PID namespace differs."""
    from worker.engine.state import lock as lockmod

    ns = os.readlink("/proc/self/ns/pid")  # e.g. 'pid:[4026531836]'
    return lockmod.HOST.replace(ns, "pid:[4026530001]")


def test_lock_of_another_pid_namespace_with_our_hostname_waits_for_its_ttl(redis_url):
    # Host networking or a fixed compose `hostname:`: a live holder in another container has
    # our hostname, and its pid does not exist in our PID namespace. It must not look dead.
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that does not exist here
    r.set("bs:test:lock", f"{_other_pid_namespace_here()}|{gone.pid}|x", px=60_000)
    with RedisLock(r, "bs:test:lock") as lock:
        assert not lock.held
    assert r.get("bs:test:lock") == f"{_other_pid_namespace_here()}|{gone.pid}|x"


_NS_HOLDER = """
import os, subprocess, sys
url, pid, holder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open("/proc/sys/kernel/ns_last_pid", "w") as f:  # the holder gets `pid` in this namespace
    f.write(str(pid - 1))
sys.exit(subprocess.call([sys.executable, "-c", holder, url]))
"""
_HOLDER = """
import sys, redis
from worker.engine.state.lock import RedisLock
r = redis.Redis.from_url(sys.argv[1], decode_responses=True)
with RedisLock(r, "bs:test:lock", ttl_ms=60_000) as lock:
    assert lock.held
    print(lock.token, flush=True)
    sys.stdin.read()  # hold it until the test closes stdin
"""


def test_live_holder_in_another_pid_namespace_with_our_hostname_is_not_taken_over(redis_url):
    # The real thing: a process in a new PID namespace (same hostname, same kernel) takes the
    # lock under a pid that does not exist in ours, and stays alive.
    unshare = ["unshare", "--user", "--map-root-user", "--pid", "--fork"]
    try:
        ok = subprocess.run([*unshare, "true"], check=False, capture_output=True,
                            timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        pytest.skip("cannot create a PID namespace here (unshare)")
    with open("/proc/sys/kernel/pid_max") as f:
        top = min(30_000, int(f.read()) - 1)
    pid = next(p for p in range(top, 300, -1) if not os.path.exists(f"/proc/{p}"))
    holder = subprocess.Popen([*unshare, sys.executable, "-c", _NS_HOLDER, redis_url, str(pid),
                               _HOLDER], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        token = holder.stdout.readline().strip()
        assert token.rpartition("|")[0].partition("|")[2] == str(pid), token
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            pass
        else:
            pytest.skip(f"pid {pid} was taken here meanwhile")
        r = redis.Redis.from_url(redis_url, decode_responses=True)
        with RedisLock(r, "bs:test:lock") as lock:
            assert not lock.held
        assert r.get("bs:test:lock") == token
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


def test_identity_names_hostname_boot_and_pid_namespace_without_a_bar(monkeypatch):
    from worker.engine.state import lock as lockmod

    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read().strip()
    host = HOST.split("/")
    assert host[1:] == [boot, os.readlink("/proc/self/ns/pid")] and "|" not in HOST
    monkeypatch.setattr(lockmod.socket, "gethostname", lambda: "we|ird/host name")
    weird = lockmod._identity()
    assert weird.split("/")[0] == "we_ird_host_name" and "|" not in weird
    monkeypatch.setattr(lockmod, "HOST", weird)
    token = RedisLock(redis.Redis(), "bs:test:lock").token  # no connection is made
    assert token.rpartition("|")[0].partition("|") == (weird, "|", str(os.getpid()))


def test_unknown_identity_never_takes_over_early(redis_url, monkeypatch, tmp_path):
    from worker.engine.state import lock as lockmod

    monkeypatch.setattr(lockmod, "_BOOT_ID", str(tmp_path / "missing"))
    assert lockmod._identity() is None
    monkeypatch.undo()
    monkeypatch.setattr(lockmod, "_PID_NS", str(tmp_path / "missing"))
    assert lockmod._identity() is None
    monkeypatch.setattr(lockmod, "HOST", None)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    r.set("bs:test:lock", f"{HOST}|{dead.pid}|x", px=60_000)
    with RedisLock(r, "bs:test:lock") as lock:
        assert not lock.held  # a dead holder of our namespace, but we cannot be sure: the ttl
    r.delete("bs:test:lock")
    with RedisLock(r, "bs:test:lock") as lock:  # our own token names no namespace
        assert lock.held and lock.token.startswith(f"{HOST.split('/')[0]}/?|{os.getpid()}|")
