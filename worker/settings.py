"""Settings: the SCORER_* environment variables (and an optional .env file), validated once."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from enum import Enum
from functools import lru_cache

from pydantic import Field, SecretStr, ValidationError, field_validator
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

    @field_validator("callback_token", mode="before")
    @classmethod
    def _token_blank_is_unset(cls, v):
        # `SCORER_CALLBACK_TOKEN=` (compose passes it through empty) means "no token", not
        # a token of zero characters that would sign every request the same way.
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

    @property
    def api_base_url(self) -> str:
        """The resolved Tencent base URL: SCORER_API_URL if set, else the region's domain."""
        return self.api_url or f"https://{REGION_DOMAINS[self.region.value]}"

    @property
    def state_url(self) -> str:
        """The Redis holding the worker's state (defaults to the broker's)."""
        return self.state_redis_url or self.redis_url

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
    "sentinel": "sentinel:// is not supported: the worker's own Redis client (drains,"
                " watermark, state) cannot follow a Sentinel; give the master's redis:// URL",
    "unix": "a Unix socket is not supported: the worker's own Redis client connects over TCP"
            " only; give a redis:// or rediss:// URL",
}
_REFUSED["redis+socket"] = _REFUSED["unix"]


def check_redis_url(url: str | None, broker: bool) -> str | None:
    """A valid SCORER_REDIS_URL (`broker`) or SCORER_STATE_REDIS_URL, or ValueError saying why.

    The broker URL is opened by kombu (the Celery transport) and by the worker's own redis-py
    client (worker/runtime.py `connect`: drains and the watermark read kombu's lists directly),
    so it must be a form both open: redis:// or rediss://. kombu would also take
    redis+socket:// and sentinel://, but `connect` opens neither. The state URL is opened by
    `connect` only, which also opens a Redis Cluster (redis+cluster://, plain TCP).
    Never echoes the URL: it may hold a password.
    """
    if url in (None, ""):
        return None
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError("must be a URL such as redis://host:6379/0")
    if ";" in url:
        raise ValueError("holds several URLs (';'): give one Redis; failover and Sentinel"
                         " lists are not supported")
    if scheme in ("redis", "rediss") or (scheme == "redis+cluster" and not broker):
        return url
    if scheme in _REFUSED:
        raise ValueError(_REFUSED[scheme])
    raise ValueError("must be a redis:// or rediss:// URL" if broker
                     else "must be a redis://, rediss:// or redis+cluster:// URL")


def _mask_url_password(url: str) -> str:
    """Hide a password embedded in a Redis URL."""
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
        return f"configuration error: {var} is required but not set"
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
