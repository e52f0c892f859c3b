"""worker.engine.state.scripts: the Lua scripts by name, and `load`, their one registry."""

from __future__ import annotations

import re

import fakeredis
import lupa.lua51
import pytest
import redis

from worker.engine.state import scripts


def test_every_name_of_the_registry_is_importable_and_exported() -> None:
    assert scripts.SOURCES  # every script is reachable through the registry
    for name, source in scripts.SOURCES.items():
        assert name.isupper() and getattr(scripts, name) is source
    assert set(scripts.__all__) == {*scripts.SOURCES, "SOURCES", "load"}


@pytest.mark.parametrize("name", sorted(scripts.SOURCES))
def test_every_script_compiles_as_the_lua_5_1_redis_runs(name: str) -> None:
    lua = lupa.lua51.LuaRuntime()
    lua.execute(f"local f, err = loadstring({_lua_string(scripts.SOURCES[name])}); "
                "assert(f, err)")


def _lua_string(source: str) -> str:
    """`source` as a Lua long string literal."""
    level = "=" * (max((len(m) for m in re.findall(r"\](=*)\]", source)), default=0) + 1)
    return f"[{level}[{source}]{level}]"


def test_each_script_names_its_keys_and_no_other() -> None:
    # A key named in the text (not via KEYS) would escape its caller's Cluster slot; the drain's
    # recovery takes claim keys from a zset, on the broker, which is never a Cluster.
    for name, source in scripts.SOURCES.items():
        literal_keys = re.findall(r"redis\.call\('\w+', '([^']*)'", source)
        assert literal_keys == [], (name, literal_keys)
        assert "KEYS[" in source, name


def test_a_script_is_registered_once_per_client(fake_redis: fakeredis.FakeRedis) -> None:
    other = fakeredis.FakeRedis(decode_responses=True)
    rate = scripts.load(fake_redis, "RATE")
    assert scripts.load(fake_redis, "RATE") is rate
    assert rate.registered_client is fake_redis
    theirs = scripts.load(other, "RATE")
    assert theirs is not rate and theirs.sha == rate.sha
    assert scripts.load(fake_redis, "LOCK_RENEW").sha != rate.sha


def test_an_unknown_name_is_refused(fake_redis: fakeredis.FakeRedis) -> None:
    with pytest.raises(KeyError):
        scripts.load(fake_redis, "NO_SUCH_SCRIPT")


def test_a_client_without_a_dict_registers_each_time() -> None:
    class Bare:  # a stand-in that takes no attributes
        __slots__ = ("made",)

        def __init__(self) -> None:
            self.made = 0

        def register_script(self, source: str) -> str:
            self.made += 1
            return source

    bare = Bare()
    assert scripts.load(bare, "MARK") == scripts.MARK  # type: ignore[arg-type]
    scripts.load(bare, "MARK")  # type: ignore[arg-type]
    assert bare.made == 2


def test_a_loaded_script_runs_again_after_a_script_flush(fake_redis: fakeredis.FakeRedis) -> None:
    release = scripts.load(fake_redis, "LOCK_RELEASE")
    fake_redis.set("k", "me")
    assert release(keys=["k"], args=["other"]) == 0
    fake_redis.script_flush()  # NOSCRIPT on the next EVALSHA: the Script loads itself again
    assert release(keys=["k"], args=["me"]) == 1
    assert fake_redis.get("k") is None


def test_the_cache_lives_on_the_client_not_in_a_global() -> None:
    client = redis.Redis()  # no connection is made
    script = scripts.load(client, "CLAIM")
    assert vars(client)["_scorer_scripts"] == {"CLAIM": script}
