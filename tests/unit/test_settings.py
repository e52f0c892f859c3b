"""worker.engine.settings: SCORER_* read and checked once, errors in one line, secrets masked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from worker.engine import settings as settings_module
from worker.engine.settings import (
    REGION_DOMAINS,
    GiftValue,
    PartialSettings,
    Region,
    Settings,
    SettingsError,
    describe_error,
    get_settings,
    load_settings,
)

KEY = "s3cr3t-unit-key"


@pytest.fixture(autouse=True)
def _no_scorer_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SCORER_* variable, and a working directory without a .env file."""
    for name in list(os.environ):
        if name.startswith("SCORER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _make(**kw: object) -> Settings:
    return Settings(_env_file=None, **{"sdkappid": 1400000001, "secret_key": KEY, **kw})


def test_the_environment_and_a_dotenv_file_are_read(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SCORER_SDKAPPID=7\nSCORER_SECRET_KEY=from-file\n"
                                   "SCORER_API_RATE=50\n")
    monkeypatch.setenv("SCORER_API_RATE", "120")  # the environment wins over the file
    monkeypatch.setenv("scorer_gift_value", "coins_x_count")  # names are case-blind
    s = Settings()
    assert (s.sdkappid, s.secret_key.get_secret_value(), s.api_rate) == (7, "from-file", 120)
    assert s.gift_value is GiftValue.coins_x_count


def test_every_region_has_a_domain_and_api_url_wins() -> None:
    assert {r.value for r in Region} == set(REGION_DOMAINS)
    assert _make(region="seoul").api_base_url == "https://adminapikr.im.qcloud.com"
    assert _make(region="seoul", api_url="http://127.0.0.1:9100///").api_base_url == \
        "http://127.0.0.1:9100"


@pytest.mark.parametrize("field,value", [
    ("sdkappid", 0), ("secret_key", "   "), ("api_url", "ftp://tencent"),
    ("api_url", "tencent.example"), ("flush_interval", 0), ("flush_interval", 60.5),
    ("reconcile_interval", 3601), ("api_rate", 0), ("api_rate", 100_001),
    ("queue", "has space"), ("queue", ""), ("queue", "q" * 129), ("log_format", "xml"),
    ("metrics_port", 0), ("metrics_port", 65536), ("admin_id", ""), ("region", "mars"),
    ("gift_value", "count"), ("sentinel_master", "two words"),
])
def test_values_out_of_bounds_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as err:
        _make(**{field: value})
    assert err.value.errors()[0]["loc"][0] == field


def test_blank_optional_values_mean_unset() -> None:
    s = _make(callback_token=" ", sentinel_master="", sentinel_password="", api_url="",
              redis_url="", state_redis_url="")
    assert s.callback_token is None and s.sentinel_master is None
    assert s.sentinel_password is None and s.sentinel_secret is None and s.api_url is None
    assert s.redis_url == "redis://localhost:6379/0" and s.state_url == s.redis_url


def test_the_state_redis_defaults_to_the_broker() -> None:
    assert _make(redis_url="redis://b:6379/1").state_url == "redis://b:6379/1"
    s = _make(redis_url="redis://b:6379/1", state_redis_url="redis+cluster://c:7000")
    assert s.state_url == "redis+cluster://c:7000"


def test_a_sentinel_url_needs_the_masters_name_and_says_why() -> None:
    with pytest.raises(ValidationError) as err:
        _make(state_redis_url="sentinel://s1:26379")
    line = describe_error(err.value)
    assert line.startswith("configuration error: SCORER_SENTINEL_MASTER is required")
    assert "SCORER_STATE_REDIS_URL is a sentinel:// URL" in line
    s = _make(redis_url="sentinel://:pw@s1:26379", sentinel_master="mymaster",
              sentinel_password="spw")
    assert s.sentinel_master == "mymaster" and s.sentinel_secret == "spw"


def test_masked_shows_every_setting_and_no_secret() -> None:
    s = _make(redis_url="redis://:hunter2@r:6379/0", callback_token="tok3n", metrics_port=9100,
              sentinel_password="spw")
    shown = s.masked()
    assert set(shown) == {f"SCORER_{n.upper()}" for n in Settings.model_fields}
    assert shown["SCORER_SECRET_KEY"] == shown["SCORER_CALLBACK_TOKEN"] == "********"
    assert shown["SCORER_REDIS_URL"] == "redis://:****@r:6379/0"
    assert shown["SCORER_REGION"] == "china" and shown["SCORER_METRICS_PORT"] == "9100"
    assert shown["SCORER_API_URL"] == "" and shown["SCORER_STATE_REDIS_URL"] == ""
    for secret in (KEY, "hunter2", "tok3n", "spw"):
        assert secret not in str(shown)
    for secret in (KEY, "tok3n", "spw"):
        assert secret not in repr(s) and secret not in str(s)


def test_the_redis_password_never_shows_in_the_settings_repr() -> None:
    s = _make(redis_url="redis://:hunter2@r:6379/0", state_redis_url="redis://:hunter3@s:6379/0")
    assert "hunter2" not in repr(s) and "hunter3" not in repr(s)


def test_a_bad_value_stops_with_one_line_naming_it_never_its_value(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SCORER_SDKAPPID", "1")
    monkeypatch.setenv("SCORER_SECRET_KEY", KEY)
    monkeypatch.setenv("SCORER_FLUSH_INTERVAL", "-12345")
    with pytest.raises(SettingsError) as stop:
        load_settings()
    assert stop.value.code == 2 and isinstance(stop.value, SystemExit)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "configuration error: SCORER_FLUSH_INTERVAL is invalid:")
    assert "-12345" not in lines[0]


def test_what_a_process_requires_decides_which_credentials_it_needs(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SCORER_SDKAPPID", "1400000002")
    with pytest.raises(SettingsError):
        load_settings()  # both credentials by default
    assert capsys.readouterr().err == \
        "configuration error: SCORER_SECRET_KEY is required but not set\n"
    s = load_settings(require=("sdkappid",))
    assert isinstance(s, PartialSettings) and s.secret_key is None and s.sdkappid == 1400000002
    monkeypatch.setenv("SCORER_SDKAPPID", " ")  # blank: unset
    assert load_settings(require=()).sdkappid is None
    with pytest.raises(SettingsError):
        load_settings(require=("sdkappid",))


def test_overrides_win_and_the_process_settings_are_loaded_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(sdkappid=5, secret_key="k", api_rate=7).api_rate == 7
    monkeypatch.setenv("SCORER_SDKAPPID", "9")
    monkeypatch.setenv("SCORER_SECRET_KEY", "k")
    get_settings.cache_clear()
    try:
        first = get_settings()
        monkeypatch.setenv("SCORER_SDKAPPID", "10")
        assert get_settings() is first and first.sdkappid == 9
    finally:
        get_settings.cache_clear()
    assert settings_module.get_settings is get_settings
