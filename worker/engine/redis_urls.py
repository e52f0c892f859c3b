"""Redis URLs, parsed in one place: which forms the worker accepts, Sentinel lists, masking."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kombu.utils.url import url_to_parts

#: Why a Redis URL scheme is refused (a cluster only as the broker: the state may be one).
_REFUSED = {
    "redis+cluster": "kombu cannot use a Redis Cluster as the Celery broker: give a single"
                     " Redis here and the cluster in SCORER_STATE_REDIS_URL",
    "unix": "a Unix socket is not supported: the worker's own Redis client connects over TCP"
            " only; give a redis:// or rediss:// URL",
}
_REFUSED["redis+socket"] = _REFUSED["unix"]

#: The port of a Sentinel whose URL names none (kombu's SentinelTransport.default_port).
SENTINEL_PORT = 26379

#: The scheme of a Redis Cluster URL (ours: kombu has none), and the one redis-py opens it by.
CLUSTER_SCHEME = "redis+cluster"


def scheme_of(url: str | None) -> str:
    """The URL's scheme in lower case ('' when `url` is None or holds no '://')."""
    if url is None:
        return ""
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else ""


def check_redis_url(url: str | None, broker: bool) -> str | None:
    """A valid SCORER_REDIS_URL (`broker`) or SCORER_STATE_REDIS_URL, or ValueError saying why.

    The broker URL is opened by kombu (the Celery transport) and by the worker's own redis-py
    client (worker/engine/runtime.py `connect`: drains and the watermark read kombu's lists
    directly), so it must be a form both open: redis://, rediss://, or sentinel:// (kombu's Sentinel
    transport, one Sentinel or a ';' list of them, with SCORER_SENTINEL_MASTER). kombu would
    also take redis+socket://, but `connect` opens TCP only. The state URL is opened by
    `connect` only, which also opens a Redis Cluster (redis+cluster://, plain TCP).
    Never echoes the URL: it may hold a password.
    """
    if not url:  # None or ""
        return None
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError("must be a URL such as redis://host:6379/0")
    if scheme == "sentinel":
        parse_sentinel_url(url)
        return url
    if ";" in url:
        raise ValueError("holds several URLs (';'): give one Redis; only Sentinels may be"
                         " listed (sentinel://h1:26379;sentinel://h2:26379)")
    if scheme in ("redis", "rediss") or (scheme == CLUSTER_SCHEME and not broker):
        return url
    if scheme in _REFUSED:
        raise ValueError(_REFUSED[scheme])
    raise ValueError("must be a redis://, rediss:// or sentinel:// URL" if broker
                     else "must be a redis://, rediss://, sentinel:// or redis+cluster:// URL")


def is_sentinel_url(url: str | None) -> bool:
    """True for a sentinel:// URL (or a ';' list of them): kombu's Redis Sentinel transport."""
    return url is not None and url.partition("://")[0].lower() == "sentinel"


def is_cluster_url(url: str | None) -> bool:
    """True for a redis+cluster:// URL: a Redis Cluster (the state Redis only)."""
    return scheme_of(url) == CLUSTER_SCHEME


def cluster_node_url(url: str) -> str:
    """A redis+cluster:// URL as the redis:// URL of the node redis-py's RedisCluster starts
    from (it discovers the others)."""
    return "redis://" + url.partition("://")[2]


@dataclass(frozen=True)
class SentinelURL:
    """What a sentinel:// URL says: the Sentinels to ask, and how to talk to the master."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    db: int


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse `sentinel://[user:password@]host[:port][/db]`, or kombu's ';' list of such URLs,
    exactly as kombu does (kombu.utils.url.url_to_parts; port 26379 if none; db 0 if none);
    ValueError saying why, never echoing the URL.

    kombu asks every Sentinel of the list for the master, but takes the user, password and
    database from the one URL it is connected through, which changes on failover (kombu's
    Connection.maybe_switch_next): so every URL of a list must carry the same three.
    """
    if any(c.isspace() for c in url):
        # kombu splits on ';' alone: " sentinel://h2" would be parsed with a wrong host.
        raise ValueError("must not hold spaces (';' alone separates the Sentinels)")
    nodes: list[tuple[str, int]] = []
    auth: set[tuple[str | None, str | None, int]] = set()
    for part in url.split(";"):
        scheme, sep, _ = part.partition("://")
        if not part:
            raise ValueError("holds an empty URL between ';'")
        if not sep or scheme.lower() != "sentinel":
            raise ValueError("mixes sentinel:// with other URLs: every URL of a ';' list must"
                             " be a sentinel:// URL")
        if "?" in part or "#" in part:
            raise ValueError("sentinel:// URLs take no options ('?') or fragment ('#')")
        try:
            parts = url_to_parts(part)
        except ValueError:  # urllib's: a port that is no number, a broken [IPv6] host
            raise ValueError("holds an invalid host or port") from None
        if not parts.hostname:
            raise ValueError("names no host: sentinel://host:26379/0")
        if parts.port == 0:
            raise ValueError("holds an invalid port (a number from 1 to 65535)")
        db = parts.path or "0"
        if not (db.isascii() and db.isdigit()):
            raise ValueError("holds an invalid database: a number after the port, such as"
                             " sentinel://host:26379/0")
        nodes.append((parts.hostname, parts.port or SENTINEL_PORT))
        auth.add((parts.username, parts.password, int(db)))
    if len(auth) > 1:
        raise ValueError("lists Sentinels with different users, passwords or databases: kombu"
                         " takes them from whichever URL it is connected through, so give every"
                         " URL the same")
    (username, password, number), = auth
    return SentinelURL(tuple(nodes), username, password, number)


def sentinel_kwargs(password: str | None, timeout: float | None = None) -> dict[str, Any]:
    """Connection options for the Sentinels themselves (redis-py's and kombu's
    `sentinel_kwargs`): timeouts and a single attempt, so that a dead Sentinel costs at most
    seconds before the next one is asked, and SCORER_SENTINEL_PASSWORD if they want one."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # One attempt per Sentinel: the list is the retry. redis-py's default (3 retries with
    # back-off) spends ~4 s on a Sentinel that refuses connections before asking the next,
    # and every fresh client pays it again (kombu builds one per connection pool). A master
    # not found at all is retried by the master's own connection retries.
    # `timeout`: a quick client's (runtime.connect(quick=...)), which must say "down" within
    # its caller's deadline even when a Sentinel hangs rather than refuses.
    kwargs: dict[str, Any] = {"socket_timeout": timeout or 10,
                              "socket_connect_timeout": timeout or 5,
                              "socket_keepalive": True, "retry": Retry(NoBackoff(), 0)}
    if password:
        kwargs["password"] = password
    return kwargs


def mask_url_password(url: str) -> str:
    """Hide a password embedded in a Redis URL (in each URL of a ';' list of Sentinels)."""
    if ";" in url:
        return ";".join(mask_url_password(part) for part in url.split(";"))
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:****@{host}"
