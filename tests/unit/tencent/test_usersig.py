"""worker.engine.tencent.usersig: the admin UserSig, cached, renewed early, never shown."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import zlib
from typing import Any

import pytest

from worker.engine.tencent.usersig import RENEW_FRACTION, SIG_LIFETIME, UserSigCache

APP, KEY, ADMIN = 1400000001, "unit-secret-key", "administrator"


class Clock:
    """A wall clock the test moves."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _decode(sig: str) -> dict[str, Any]:
    """The document inside a TLSSigAPIv2 UserSig (url-safe base64 of zlib JSON)."""
    raw = sig.replace("*", "+").replace("-", "/").replace("_", "=")
    return json.loads(zlib.decompress(base64.b64decode(raw)))


def _signed_by(doc: dict[str, Any], key: str) -> bool:
    content = "".join(f"TLS.{f}:{doc['TLS.' + f]}\n"
                      for f in ("identifier", "sdkappid", "time", "expire"))
    mac = base64.b64encode(hmac.new(key.encode(), content.encode(), hashlib.sha256).digest())
    return hmac.compare_digest(mac.decode(), doc["TLS.sig"])


def test_a_sig_names_the_admin_and_lives_its_lifetime() -> None:
    sig = UserSigCache(APP, KEY, ADMIN, lifetime=3600).get()
    doc = _decode(sig)
    assert doc["TLS.identifier"] == ADMIN and int(doc["TLS.sdkappid"]) == APP
    assert int(doc["TLS.expire"]) == 3600 and _signed_by(doc, KEY)
    assert SIG_LIFETIME == 24 * 3600 and RENEW_FRACTION == 0.25


def test_the_sig_is_cached_until_a_quarter_of_its_life_is_left() -> None:
    clock = Clock(1000.0)
    cache = UserSigCache(APP, KEY, ADMIN, lifetime=100, clock=clock)
    first = cache.get()
    clock.t = 1074.9  # 25.1 s of 100 left
    assert cache.get() == first and cache.generated == 1
    clock.t = 1075.0  # exactly a quarter left: renewed
    cache.get()
    assert cache.generated == 2
    clock.t = 1149.9  # the new one runs from 1075
    cache.get()
    assert cache.generated == 2


def test_invalidate_forces_a_fresh_sig() -> None:
    clock = Clock(1000.0)
    cache = UserSigCache(APP, KEY, ADMIN, lifetime=100, clock=clock)
    cache.get()
    cache.invalidate()
    cache.get()
    assert cache.generated == 2
    cache.get()
    assert cache.generated == 2


def test_neither_the_key_nor_the_sig_shows_in_its_repr() -> None:
    cache = UserSigCache(APP, KEY, ADMIN, lifetime=100, clock=Clock(1000.0))
    sig = cache.get()
    shown = repr(cache)
    assert KEY not in shown and sig not in shown
    assert shown == "UserSigCache(identifier='administrator', expires_at=1100)"


def test_threads_asking_at_once_share_one_sig(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = UserSigCache(APP, KEY, ADMIN)
    gen_sig = cache._api.gen_sig

    def slow_gen_sig(*args: object) -> str:
        # Keep the first renewal open long enough that, without the cache's lock, the other
        # seven threads (released together) would all renew too: the overlap is certain.
        time.sleep(0.05)
        return gen_sig(*args)

    monkeypatch.setattr(cache._api, "gen_sig", slow_gen_sig)
    start = threading.Barrier(8)
    sigs: list[str] = []

    def ask() -> None:
        start.wait()
        sigs.append(cache.get())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.generated == 1 and len(set(sigs)) == 1


def test_a_sig_made_with_another_key_does_not_verify() -> None:
    doc = _decode(UserSigCache(APP, "another-key", ADMIN).get())
    assert not _signed_by(doc, KEY)
