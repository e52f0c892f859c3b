"""worker.engine.redis_urls: the one parser of Redis URLs (settings, connect, celeryconfig)."""

from __future__ import annotations

import pytest

from worker.engine import redis_urls, settings
from worker.engine.redis_urls import (
    SENTINEL_PORT,
    check_redis_url,
    cluster_node_url,
    is_cluster_url,
    is_sentinel_url,
    mask_url_password,
    parse_sentinel_url,
    sentinel_kwargs,
)


def test_settings_re_exports_the_same_objects():
    # worker/doors, the tests and older callers import these from settings
    for name in ("check_redis_url", "is_sentinel_url", "SentinelURL", "parse_sentinel_url",
                 "sentinel_kwargs", "SENTINEL_PORT", "_REFUSED"):
        assert getattr(settings, name) is getattr(redis_urls, name), name
    assert settings._mask_url_password is mask_url_password


@pytest.mark.parametrize("url,broker,ok", [
    (None, True, True), ("", False, True),
    ("redis://h:6379/0", True, True), ("rediss://:pw@h:6380/1", False, True),
    ("REDIS://h:6379/0", True, True),
    ("redis+cluster://h:7000", False, True), ("redis+cluster://h:7000", True, False),
    ("sentinel://s1:26379;sentinel://s2:26379", True, True),
    ("redis://a;redis://b", False, False), ("unix:///r.sock", False, False),
    ("redis+socket:///r.sock", True, False), ("h:6379", True, False),
])
def test_check_redis_url(url, broker, ok):
    if ok:
        assert check_redis_url(url, broker=broker) == (url or None)
    else:
        with pytest.raises(ValueError) as err:
            check_redis_url(url, broker=broker)
        assert "pw" not in str(err.value) and "h:" not in str(err.value)


def test_schemes_are_told_apart_case_blind():
    assert is_sentinel_url("sentinel://s1") and is_sentinel_url("SENTINEL://s1")
    assert not is_sentinel_url(None) and not is_sentinel_url("redis://h")
    assert is_cluster_url("redis+cluster://h:7000") and is_cluster_url("Redis+Cluster://h:7000")
    assert not is_cluster_url(None) and not is_cluster_url("redis://h")
    assert cluster_node_url("redis+cluster://:pw@h:7000/0") == "redis://:pw@h:7000/0"


@pytest.mark.parametrize("url,why", [
    ("sentinel://s1 ;sentinel://s2", "spaces"),
    ("sentinel://s1;;sentinel://s2", "empty"),
    ("sentinel://s1?x=1", "options"),
    ("sentinel://:26379", "no host"),
    ("sentinel://s1:0", "invalid port"),
    ("sentinel://s1:x", "host or port"),
    ("sentinel://s1/x", "database"),
    ("sentinel://:a@s1;sentinel://:b@s2", "different"),
])
def test_bad_sentinel_urls_say_why(url, why):
    with pytest.raises(ValueError, match=why):
        parse_sentinel_url(url)


def test_a_sentinel_list_parses_to_nodes_and_one_auth():
    parsed = parse_sentinel_url("sentinel://u:pw@s1/2;sentinel://u:pw@s2:26380/2")
    assert parsed.nodes == (("s1", SENTINEL_PORT), ("s2", 26380))
    assert (parsed.username, parsed.password, parsed.db) == ("u", "pw", 2)


def test_sentinel_kwargs_one_attempt_and_the_sentinels_password():
    quick = sentinel_kwargs("spw", timeout=0.5)
    assert quick["socket_timeout"] == 0.5 and quick["socket_connect_timeout"] == 0.5
    assert quick["password"] == "spw" and quick["retry"].get_retries() == 0
    plain = sentinel_kwargs(None)
    assert (plain["socket_timeout"], plain["socket_connect_timeout"]) == (10, 5)
    assert "password" not in plain


def test_passwords_are_masked_in_every_url_of_a_list():
    assert mask_url_password("redis://u:pw@h:6379/0") == "redis://u:****@h:6379/0"
    assert mask_url_password("redis://h:6379/0") == "redis://h:6379/0"
    assert mask_url_password("sentinel://:a@s1;sentinel://:a@s2") == \
        "sentinel://:****@s1;sentinel://:****@s2"
