"""worker.engine.state.scripts: every Lua script by name, and the one registry that loads them."""

from __future__ import annotations

import redis

from worker.engine.state import scripts


def test_every_script_is_importable_by_its_name():
    # Every module-level Lua source of the package is in the registry, and nothing else.
    sources = {n for n in dir(scripts) if n.isupper() and not n.startswith("_") and n != "SOURCES"
               and isinstance(getattr(scripts, n), str)}
    assert set(scripts.SOURCES) == sources and "DEAD_LETTER" in sources
    for name, source in scripts.SOURCES.items():
        assert getattr(scripts, name) is source and source.strip()
    assert set(scripts.__all__) == {*scripts.SOURCES, "SOURCES", "load"}


def test_a_script_is_registered_once_per_client():
    a, b = redis.Redis(), redis.Redis()  # no connection is made
    rate = scripts.load(a, "RATE")
    assert scripts.load(a, "RATE") is rate and rate.registered_client is a
    other = scripts.load(b, "RATE")
    assert other is not rate and other.registered_client is b and other.sha == rate.sha
    assert scripts.load(a, "LOCK_RENEW") is not rate


def test_a_client_without_attributes_still_gets_its_script():
    class NoDict:  # a stand-in that takes no attributes
        __slots__ = ()

        def register_script(self, source: str) -> str:
            return source

    assert scripts.load(NoDict(), "MARK") == scripts.MARK  # type: ignore[arg-type]


def test_a_cached_script_survives_a_script_flush(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    release = scripts.load(r, "LOCK_RELEASE")
    r.set("bs:test:lock", "me")
    r.script_flush()
    assert scripts.load(r, "LOCK_RELEASE")(keys=["bs:test:lock"], args=["me"]) == 1  # NOSCRIPT
    assert release(keys=["bs:test:lock"], args=["me"]) == 0
    r.close()
