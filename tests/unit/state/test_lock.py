"""worker.engine.state.lock: ownership, fencing, early take-over of a dead holder, heartbeat."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from worker.engine.state import lock as lockmod
from worker.engine.state import scripts
from worker.engine.state.lock import DEFAULT_TTL_MS, RedisLock

KEY = "bs:{b:x}:lock"
#: Our identity in these tests: fixed, whatever /proc says on this host.
HOST = "unit-host/0123456789abcdef0123456789abcdef/pid:[4026531836]"
#: A pid no process can have (above Linux's largest pid_max, 2**22).
NO_SUCH_PID = 2**22 + 1


@pytest.fixture(autouse=True)
def _identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lockmod, "HOST", HOST)


class _Stop(Exception):
    """Ends one pass of a heartbeat loop driven by the test."""


class _BeatTime:
    """The lock module's `time`, for the test's thread: a monotonic clock the test moves and a
    sleep that ends the heartbeat's pass; other threads get the real ones."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self._owner = threading.get_ident()

    def monotonic(self) -> float:
        return self.mono if threading.get_ident() == self._owner else time.monotonic()

    def sleep(self, seconds: float) -> None:
        if threading.get_ident() == self._owner:
            raise _Stop
        time.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def beat(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[lockmod._Heartbeat, _BeatTime]]:
    """A heartbeat of our own that no thread runs (`_pass` runs one beat), on a fake clock."""
    hb = lockmod._Heartbeat()
    hb._pid = os.getpid()  # as if its thread were started: add() starts none
    clock = _BeatTime()
    monkeypatch.setattr(lockmod, "_HEARTBEAT", hb)
    monkeypatch.setattr(lockmod, "time", clock)
    yield hb, clock


def _pass(hb: lockmod._Heartbeat) -> None:
    """One beat of the heartbeat's loop."""
    with pytest.raises(_Stop):
        hb._run()


def test_the_first_taker_holds_and_the_second_does_not(fake_redis: fakeredis.FakeRedis) -> None:
    with RedisLock(fake_redis, KEY) as first:
        assert first.held and fake_redis.get(KEY) == first.token
        assert 0 < fake_redis.pttl(KEY) <= DEFAULT_TTL_MS
        with RedisLock(fake_redis, KEY) as second:
            assert not second.held
        assert fake_redis.get(KEY) == first.token  # the loser's exit releases nothing
    assert fake_redis.get(KEY) is None


def test_a_token_names_our_identity_our_pid_and_is_unique(fake_redis: fakeredis.FakeRedis) -> None:
    a, b = RedisLock(fake_redis, KEY), RedisLock(fake_redis, KEY)
    host, pid, nonce = a.token.split("|")
    assert (host, pid) == (HOST, str(os.getpid())) and len(nonce) == 32
    assert a.token != b.token


def test_exit_never_releases_a_lock_that_is_no_longer_ours(
        fake_redis: fakeredis.FakeRedis) -> None:
    with RedisLock(fake_redis, KEY, ttl_ms=100) as lock:
        fake_redis.set(KEY, "someone-else|1|x")  # ours expired and another took it
    assert fake_redis.get(KEY) == "someone-else|1|x"
    assert lock.held  # what it believed: the scripts' fencing is what protects the state


def test_renew_and_release_are_fenced_by_the_token(fake_redis: fakeredis.FakeRedis) -> None:
    renew, release = scripts.load(fake_redis, "LOCK_RENEW"), scripts.load(fake_redis,
                                                                          "LOCK_RELEASE")
    fake_redis.set(KEY, "mine", px=50)
    assert renew(keys=[KEY], args=["theirs", 60_000]) == 0
    assert fake_redis.pttl(KEY) <= 50
    assert renew(keys=[KEY], args=["mine", 60_000]) == 1
    assert fake_redis.pttl(KEY) > 50_000
    assert release(keys=[KEY], args=["theirs"]) == 0 and fake_redis.exists(KEY)
    assert release(keys=[KEY], args=["mine"]) == 1 and not fake_redis.exists(KEY)
    assert renew(keys=[KEY], args=["mine", 1000]) == 0  # nothing to renew: not re-created
    assert not fake_redis.exists(KEY)


def test_a_dead_holder_of_our_pid_namespace_is_taken_over_at_once(
        fake_redis: fakeredis.FakeRedis) -> None:
    fake_redis.set(KEY, f"{HOST}|{NO_SUCH_PID}|x", px=60_000)
    with RedisLock(fake_redis, KEY) as lock:
        assert lock.held and fake_redis.get(KEY) == lock.token
        assert fake_redis.pttl(KEY) <= DEFAULT_TTL_MS  # our ttl, not the dead holder's


@pytest.mark.parametrize("holder", [
    f"{HOST}|{os.getpid()}|x",  # alive: ourselves
    f"{HOST}|1|x",  # init: alive, or not ours to signal (PermissionError)
    f"unit-host/0123456789abcdef0123456789abcdef/pid:[4026530001]|{NO_SUCH_PID}|x",  # a
    # container with our hostname and kernel: its pids are not ours to look up
    f"other-host/fedcba9876543210fedcba9876543210/pid:[1]|{NO_SUCH_PID}|x",
    f"unit-host/?|{NO_SUCH_PID}|x",  # a holder that could not name its namespace
    f"{HOST}|notapid|x",
    "an-older-format-token",
])
def test_any_other_holder_keeps_the_lock_until_its_ttl(fake_redis: fakeredis.FakeRedis,
                                                       holder: str) -> None:
    fake_redis.set(KEY, holder, px=60_000)
    with RedisLock(fake_redis, KEY) as lock:
        assert not lock.held
    assert fake_redis.get(KEY) == holder


def test_without_an_identity_no_lock_is_taken_over_early(
        fake_redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lockmod, "HOST", None)
    fake_redis.set(KEY, f"{HOST}|{NO_SUCH_PID}|x", px=60_000)
    with RedisLock(fake_redis, KEY) as lock:
        assert not lock.held
    fake_redis.delete(KEY)
    with RedisLock(fake_redis, KEY) as lock:
        assert lock.held
        assert lock.token.split("|")[0].endswith("/?")  # no one can take it over early


def _proc(tmp_path: Path, boot: str, ns: str) -> tuple[str, str]:
    """A boot id file and a PID-namespace link as /proc would hold them."""
    boot_file, ns_link = tmp_path / "boot_id", tmp_path / "ns_pid"
    boot_file.write_text(boot + "\n")
    ns_link.symlink_to(ns)  # dangling, like /proc/self/ns/pid: only its text is read
    return str(boot_file), str(ns_link)


def test_identity_names_hostname_boot_and_pid_namespace(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    boot, ns = _proc(tmp_path, "0123456789ABCDEF0123456789ABCDEF", "pid:[4026531836]")
    monkeypatch.setattr(lockmod, "_BOOT_ID", boot)
    monkeypatch.setattr(lockmod, "_PID_NS", ns)
    monkeypatch.setattr(socket, "gethostname", lambda: "we|ird/host name")
    assert lockmod._identity() == \
        "we_ird_host_name/0123456789abcdef0123456789abcdef/pid:[4026531836]"


@pytest.mark.parametrize("boot,ns", [("not-a-boot-id", "pid:[1]"),
                                     ("0123456789abcdef0123456789abcdef", "mnt:[1]"),
                                     ("0123456789abcdef0123456789abcdef", "pid:[x]")])
def test_an_identity_that_cannot_be_read_is_none(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path, boot: str, ns: str) -> None:
    boot_file, ns_link = _proc(tmp_path, boot, ns)
    monkeypatch.setattr(lockmod, "_BOOT_ID", boot_file)
    monkeypatch.setattr(lockmod, "_PID_NS", ns_link)
    assert lockmod._identity() is None
    monkeypatch.setattr(lockmod, "_BOOT_ID", str(tmp_path / "missing"))
    assert lockmod._identity() is None


@pytest.mark.parametrize("part,clean", [("a|b", "a_b"), ("a/b", "a_b"), ("", "_"),
                                        ("host-1.example:[x]", "host-1.example:[x]")])
def test_clean_keeps_no_separator_in_an_identity_part(part: str, clean: str) -> None:
    assert lockmod._clean(part) == clean


def test_the_heartbeat_renews_once_a_third_of_the_ttl_has_passed(
        fake_redis: fakeredis.FakeRedis,
        beat: tuple[lockmod._Heartbeat, _BeatTime]) -> None:
    hb, clock = beat
    with RedisLock(fake_redis, KEY, ttl_ms=3000) as lock:
        assert hb._locks == {id(lock): lock}
        fake_redis.pexpire(KEY, 100)
        clock.mono += 0.9  # under ttl/3: not yet
        _pass(hb)
        assert fake_redis.pttl(KEY) <= 100 and lock.renewed == 1000.0
        clock.mono += 0.2
        _pass(hb)
        assert fake_redis.pttl(KEY) > 2000 and lock.renewed == clock.mono and not lock.lost
    assert hb._locks == {}  # exit stops the renewals


def test_the_heartbeat_notices_a_lost_lock_and_stops_renewing_it(
        fake_redis: fakeredis.FakeRedis,
        beat: tuple[lockmod._Heartbeat, _BeatTime]) -> None:
    hb, clock = beat
    with RedisLock(fake_redis, KEY, ttl_ms=3000) as lock:
        fake_redis.set(KEY, "taker|1|x")
        clock.mono += 2
        _pass(hb)
        assert lock.lost and hb._locks == {}
        assert fake_redis.get(KEY) == "taker|1|x"


def test_the_heartbeat_outlives_a_redis_blip(fake_redis: fakeredis.FakeRedis,
                                             beat: tuple[lockmod._Heartbeat, _BeatTime]) -> None:
    hb, clock = beat
    with RedisLock(fake_redis, KEY, ttl_ms=3000) as lock:
        good = lock._renew

        def down(**kwargs: Any) -> int:
            raise ConnectionError("redis went away")

        lock._renew = down  # type: ignore[assignment]
        clock.mono += 2
        _pass(hb)
        assert not lock.lost and id(lock) in hb._locks  # tried again next beat
        lock._renew = good
        _pass(hb)
        assert lock.renewed == clock.mono


def test_a_lock_not_taken_is_never_renewed(fake_redis: fakeredis.FakeRedis,
                                           beat: tuple[lockmod._Heartbeat, _BeatTime]) -> None:
    hb, _ = beat
    fake_redis.set(KEY, "other|1|x", px=60_000)
    with RedisLock(fake_redis, KEY):
        assert hb._locks == {}


def test_the_lease_is_fresh_until_ttl_less_the_margin_since_the_renewal_was_asked(
        fake_redis: fakeredis.FakeRedis,
        beat: tuple[lockmod._Heartbeat, _BeatTime]) -> None:
    hb, clock = beat
    with RedisLock(fake_redis, KEY, ttl_ms=3000) as lock:
        assert lock.fresh(margin=1.0)
        clock.mono += 1.9  # a freeze: no renewal, 1.9 s of the 3 s lease gone
        assert lock.fresh(margin=1.0)
        clock.mono += 0.2  # under 1 s left: a write must not leave
        assert not lock.fresh(margin=1.0)
        _pass(hb)  # the heartbeat renews it (still ours)
        assert lock.fresh(margin=1.0)
        lock.lost = True
        assert not lock.fresh(margin=0.0)
    assert not RedisLock(fake_redis, KEY).fresh()  # never taken
