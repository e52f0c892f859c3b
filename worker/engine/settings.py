"""Settings: the SCORER_* environment variables (and an optional .env file), validated once."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

from kombu.utils.url import url_to_parts
from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Tencent REST domains by region (tencent-api.md §1).
REGION_DOMAINS: dict[str, str] = {
    "china": "console.tim.qq.com",
    "singapore": "adminapisgp.im.qcloud.com",
    "seoul": "adminapikr.im.qcloud.com",
    "tokyo": "adminapijpn.im.qcloud.com",
    "frankfurt": "adminapiger.im.qcloud.com",
    "mumbai": "adminapiind.im.qcloud.com",
    "usa": "adminapiusa.im.qcloud.com",
    "jakarta": "adminapiidn.im.qcloud.com",
}


class Region(str, Enum):
    """A Tencent IM data-centre region."""

    china = "china"
    singapore = "singapore"
    seoul = "seoul"
    tokyo = "tokyo"
    frankfurt = "frankfurt"
    mumbai = "mumbai"
    usa = "usa"
    jakarta = "jakarta"


class GiftValue(str, Enum):
    """How a GiftWater's value is computed: Coins alone, or Coins x Count."""

    coins = "coins"
    coins_x_count = "coins_x_count"


class Settings(BaseSettings):
    """Every setting of the worker; names are the public contract (SCORER_*)."""

    model_config = SettingsConfigDict(
        env_prefix="SCORER_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    sdkappid: int = Field(gt=0)
    secret_key: SecretStr
    admin_id: str = Field(default="administrator", min_length=1, max_length=128)
    region: Region = Region.china
    api_url: str | None = None
    redis_url: str = "redis://localhost:6379/0"
    state_redis_url: str | None = None
    # The master's name the Sentinels monitor (`sentinel monitor <name> ...`): required when a
    # Redis URL is sentinel://, ignored otherwise. Declared after the URLs: its check reads them.
    sentinel_master: str | None = Field(default=None, validate_default=True, max_length=128,
                                        pattern=r"^\S+$")
    # The Sentinels' own password (their `requirepass`), if any. The password in a sentinel://
    # URL is the master's: kombu gives it to the master only, never to the Sentinels.
    sentinel_password: SecretStr | None = None
    flush_interval: float = Field(default=1.0, gt=0, le=60)
    reconcile_interval: float = Field(default=15.0, gt=0, le=3600)
    api_rate: int = Field(default=200, gt=0, le=100_000)
    gift_value: GiftValue = GiftValue.coins
    # The queue producers send events to; kombu keeps it as a Redis list of that name.
    queue: str = Field(default="celery", min_length=1, max_length=128,
                       pattern=r"^[A-Za-z0-9_.:-]+$")
    # Extensions beyond the contract's table (optional):
    callback_token: SecretStr | None = None  # Tencent callback token: the receiver checks Sign
    metrics_port: int | None = Field(default=None, ge=1, le=65535)  # Prometheus exporter
    log_format: str = Field(default="text", pattern="^(text|json)$")

    @field_validator("secret_key")
    @classmethod
    def _key_not_blank(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("api_url")
    @classmethod
    def _url_scheme(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @field_validator("callback_token", "sentinel_master", "sentinel_password", mode="before")
    @classmethod
    def _optional_blank_is_unset(cls, v):
        # `SCORER_CALLBACK_TOKEN=` (compose passes unset variables through empty) means "no
        # token", not a token of zero characters that would sign every request the same way;
        # likewise no Sentinel master or password rather than an empty one.
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("redis_url")
    @classmethod
    def _broker_url(cls, v: str | None) -> str:
        # Blank (compose passes unset variables through empty) is the default, as if unset.
        return check_redis_url(v, broker=True) or cls.model_fields["redis_url"].default

    @field_validator("state_redis_url")
    @classmethod
    def _state_url(cls, v: str | None) -> str | None:
        return check_redis_url(v, broker=False)

    @field_validator("sentinel_master")
    @classmethod
    def _master_for_sentinel(cls, v: str | None, info: ValidationInfo) -> str | None:
        # A URL that failed its own check is absent from info.data: its error comes first.
        for name in ("redis_url", "state_redis_url"):
            if v is None and is_sentinel_url(info.data.get(name)):
                raise PydanticCustomError(
                    "missing", "Field required",
                    {"because": f"SCORER_{name.upper()} is a sentinel:// URL: give the name"
                                " of the master its Sentinels monitor"})
        return v

    @property
    def api_base_url(self) -> str:
        """The resolved Tencent base URL: SCORER_API_URL if set, else the region's domain."""
        return self.api_url or f"https://{REGION_DOMAINS[self.region.value]}"

    @property
    def state_url(self) -> str:
        """The Redis holding the worker's state (defaults to the broker's)."""
        return self.state_redis_url or self.redis_url

    @property
    def sentinel_secret(self) -> str | None:
        """SCORER_SENTINEL_PASSWORD in clear (None if unset), for the Sentinel clients."""
        return self.sentinel_password.get_secret_value() if self.sentinel_password else None

    def masked(self) -> dict[str, str]:
        """The effective settings as printable strings, the secret masked."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                shown = "********"
            elif value is None:
                shown = ""
            elif isinstance(value, Enum):
                shown = value.value
            elif name.endswith("redis_url") and value:
                shown = _mask_url_password(value)
            else:
                shown = "" if value is None else str(value)
            out[f"SCORER_{name.upper()}"] = shown
        return out


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


def check_redis_url(url: str | None, broker: bool) -> str | None:
    """A valid SCORER_REDIS_URL (`broker`) or SCORER_STATE_REDIS_URL, or ValueError saying why.

    The broker URL is opened by kombu (the Celery transport) and by the worker's own redis-py
    client (worker/engine/runtime.py `connect`: drains and the watermark read kombu's lists directly),
    so it must be a form both open: redis://, rediss://, or sentinel:// (kombu's Sentinel
    transport, one Sentinel or a ';' list of them, with SCORER_SENTINEL_MASTER). kombu would
    also take redis+socket://, but `connect` opens TCP only. The state URL is opened by
    `connect` only, which also opens a Redis Cluster (redis+cluster://, plain TCP).
    Never echoes the URL: it may hold a password.
    """
    if url in (None, ""):
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
    if scheme in ("redis", "rediss") or (scheme == "redis+cluster" and not broker):
        return url
    if scheme in _REFUSED:
        raise ValueError(_REFUSED[scheme])
    raise ValueError("must be a redis://, rediss:// or sentinel:// URL" if broker
                     else "must be a redis://, rediss://, sentinel:// or redis+cluster:// URL")


def is_sentinel_url(url: str | None) -> bool:
    """True for a sentinel:// URL (or a ';' list of them): kombu's Redis Sentinel transport."""
    return url is not None and url.partition("://")[0].lower() == "sentinel"


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
    (username, password, db), = auth
    return SentinelURL(tuple(nodes), username, password, db)


def sentinel_kwargs(password: str | None, timeout: float | None = None) -> dict:
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
    kwargs: dict = {"socket_timeout": timeout or 10, "socket_connect_timeout": timeout or 5,
                    "socket_keepalive": True, "retry": Retry(NoBackoff(), 0)}
    if password:
        kwargs["password"] = password
    return kwargs


def _mask_url_password(url: str) -> str:
    """Hide a password embedded in a Redis URL (in each URL of a ';' list of Sentinels)."""
    if ";" in url:
        return ";".join(_mask_url_password(part) for part in url.split(";"))
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:****@{host}"


class PartialSettings(Settings):
    """Settings without the Tencent credentials required: for the processes that never sign a
    Tencent call (the receiver, the metrics exporter, Flower and whatever else only needs
    Celery's configuration), so that their containers never hold SCORER_SECRET_KEY."""

    sdkappid: int | None = Field(default=None, gt=0)  # type: ignore[assignment]
    secret_key: SecretStr | None = None  # type: ignore[assignment]

    @field_validator("sdkappid", "secret_key", mode="before")
    @classmethod
    def _blank_is_unset(cls, v):
        return None if isinstance(v, str) and not v.strip() else v


#: What `load_settings` requires by default: every process that calls Tencent needs both.
TENCENT_CREDENTIALS = ("sdkappid", "secret_key")


class SettingsError(SystemExit):
    """Start-up stops: one line naming the bad variable (raised as SystemExit, no traceback)."""


def describe_error(err: ValidationError) -> str:
    """One line naming the first bad variable and why, never echoing its value."""
    first = err.errors()[0]
    loc = first.get("loc") or ("?",)
    var = f"SCORER_{str(loc[0]).upper()}"
    if first.get("type") == "missing":
        because = (first.get("ctx") or {}).get("because")
        return f"configuration error: {var} is required but not set" + (
            f": {because}" if because else "")
    msg = first.get("msg", "invalid value")
    return f"configuration error: {var} is invalid: {msg}"


def load_settings(*, require: Iterable[str] = TENCENT_CREDENTIALS, **overrides) -> Settings:
    """Build Settings from the environment; on error print one line to stderr and exit 2.

    `require`: which of the Tencent credentials this process needs (both by default). A
    process that needs fewer, e.g. `require=("sdkappid",)` for the receiver or `require=()`
    for the metrics exporter, starts without SCORER_SECRET_KEY.
    """
    need = tuple(require)
    cls = Settings if set(TENCENT_CREDENTIALS) <= set(need) else PartialSettings
    try:
        settings = cls(**overrides)
    except ValidationError as err:
        print(describe_error(err), file=sys.stderr)
        raise SettingsError(2) from None
    for name in need:
        if getattr(settings, name) is None:
            print(f"configuration error: SCORER_{name.upper()} is required but not set",
                  file=sys.stderr)
            raise SettingsError(2)
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded on first use."""
    return load_settings()
