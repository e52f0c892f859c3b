"""Settings: the SCORER_* environment variables (and an optional .env file), validated once."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from enum import Enum
from functools import lru_cache
from typing import Any

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

# The Redis URL rules live in redis_urls; these names stay importable from here (the doors,
# the tests and older callers import them from settings).
from worker.engine.redis_urls import _REFUSED as _REFUSED
from worker.engine.redis_urls import SENTINEL_PORT as SENTINEL_PORT
from worker.engine.redis_urls import SentinelURL as SentinelURL
from worker.engine.redis_urls import check_redis_url as check_redis_url
from worker.engine.redis_urls import is_sentinel_url as is_sentinel_url
from worker.engine.redis_urls import mask_url_password as _mask_url_password
from worker.engine.redis_urls import parse_sentinel_url as parse_sentinel_url
from worker.engine.redis_urls import sentinel_kwargs as sentinel_kwargs

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
    # What reconcile assumes of Tencent (docs/design.md, "Reconcile"); it adds a margin to each.
    # Tencent counts a gift within this many seconds of its GiftWater.Time's second.
    reconcile_count_spread: float = Field(default=0.0, ge=0, le=30)
    # A gift's webhook is ingested at most this many seconds after Tencent counted it.
    reconcile_webhook_late: float = Field(default=1.5, ge=0, le=60)

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
    def _optional_blank_is_unset(cls, v: object) -> object:
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

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        # repr() (a traceback, a debugger, a log of the object) shows the Redis URLs with their
        # passwords masked, as masked() does; SecretStr fields mask themselves.
        for name, value in super().__repr_args__():
            if name and name.endswith("redis_url") and isinstance(value, str):
                value = _mask_url_password(value)
            yield name, value

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


class PartialSettings(Settings):
    """Settings without the Tencent credentials required: for the processes that never sign a
    Tencent call (the receiver, the metrics exporter, Flower and whatever else only needs
    Celery's configuration), so that their containers never hold SCORER_SECRET_KEY."""

    sdkappid: int | None = Field(default=None, gt=0)  # type: ignore[assignment]
    secret_key: SecretStr | None = None  # type: ignore[assignment]

    @field_validator("sdkappid", "secret_key", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: object) -> object:
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


def load_settings(*, require: Iterable[str] = TENCENT_CREDENTIALS,
                  **overrides: Any) -> Settings:
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
