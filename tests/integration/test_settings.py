"""Settings: defaults, region URLs, masking, and the one-line start-up error."""

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from tests.conftest import ROOT
from worker.engine.settings import REGION_DOMAINS, Settings, SettingsError, load_settings


def make(**kw):
    return Settings(_env_file=None, sdkappid=1400000001, secret_key="s3cr3t-value", **kw)


def test_defaults_match_the_contract(monkeypatch):
    for k in list(os.environ):
        if k.startswith("SCORER_"):
            monkeypatch.delenv(k)
    s = make()
    assert s.admin_id == "administrator"
    assert s.region.value == "china"
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.state_url == s.redis_url
    assert (s.flush_interval, s.reconcile_interval, s.api_rate) == (1.0, 15.0, 200)
    assert s.gift_value.value == "coins"
    assert s.api_base_url == "https://console.tim.qq.com"


@pytest.mark.parametrize("region", sorted(REGION_DOMAINS))
def test_every_region_resolves(region):
    assert make(region=region).api_base_url == f"https://{REGION_DOMAINS[region]}"


def test_api_url_wins_over_region():
    assert make(region="usa", api_url="http://127.0.0.1:9100/").api_base_url == \
        "http://127.0.0.1:9100"


def test_secret_never_in_repr_or_masked_output():
    s = make(redis_url="redis://:hunter2@localhost:6379/0")
    assert "s3cr3t-value" not in repr(s) and "s3cr3t-value" not in str(s.masked())
    assert s.masked()["SCORER_SECRET_KEY"] == "********"
    assert "hunter2" not in s.masked()["SCORER_REDIS_URL"]


@pytest.mark.parametrize("env,var", [
    ({}, "SCORER_SDKAPPID"),
    ({"SCORER_SDKAPPID": "abc"}, "SCORER_SDKAPPID"),
    ({"SCORER_SDKAPPID": "1", "SCORER_SECRET_KEY": "k", "SCORER_REGION": "mars"},
     "SCORER_REGION"),
    ({"SCORER_SDKAPPID": "1", "SCORER_SECRET_KEY": "k", "SCORER_FLUSH_INTERVAL": "-1"},
     "SCORER_FLUSH_INTERVAL"),
    ({"SCORER_SDKAPPID": "1"}, "SCORER_SECRET_KEY"),
])
def test_bad_setting_stops_with_one_line(env, var, tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    proc = subprocess.run([sys.executable, "-m", "worker.doors.cli", "check-config"],
                          env={**clean, **env, "PYTHONPATH": str(ROOT)}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and var in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_config_prints_settings_masked(tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    env = {**clean, "SCORER_SDKAPPID": "1400000001", "SCORER_SECRET_KEY": "very-secret-key",
           "SCORER_REGION": "singapore", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "worker.doors.cli", "check-config"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "very-secret-key" not in proc.stdout + proc.stderr
    assert "https://adminapisgp.im.qcloud.com" in proc.stdout
    assert "SCORER_SDKAPPID" in proc.stdout and "1400000001" in proc.stdout


def test_dotenv_file_is_read(tmp_path, monkeypatch):
    for k in list(os.environ):
        if k.startswith("SCORER_"):
            monkeypatch.delenv(k)
    (tmp_path / ".env").write_text("SCORER_SDKAPPID=1400000009\nSCORER_SECRET_KEY=x\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings().sdkappid == 1400000009


# --- Redis URLs: what kombu (the broker) and the worker's own redis-py client both open -----
# (sentinel:// in detail, with a real Sentinel: tests/integration/test_sentinel.py)

@pytest.mark.parametrize("url", ["redis://localhost:6379/0", "rediss://:pw@redis.example:6380/1",
                                 "sentinel://s1:26379/0",
                                 "sentinel://:pw@s1:26379;sentinel://:pw@s2:26379"])
def test_broker_url_accepts_what_kombu_and_the_worker_both_open(url):
    s = make(redis_url=url, sentinel_master="mymaster")
    assert s.redis_url == url and s.state_url == url


@pytest.mark.parametrize("url,why", [
    ("redis+cluster://redis-a:7000", "Redis Cluster"),
    ("redis://a:6379;redis://b:6379", "several URLs"),
    ("sentinel://s1:26379;redis://b:6379", "sentinel:// URL"),
    ("redis+socket:///run/redis.sock", "Unix socket"),
    ("unix:///run/redis.sock", "Unix socket"),
    ("http://redis:6379", "must be"),
    ("localhost:6379", "must be"),
])
def test_broker_url_refuses_what_either_cannot_open(url, why):
    with pytest.raises(ValidationError) as err:
        make(redis_url=url, sentinel_master="mymaster")
    assert why in str(err.value)


def test_state_url_takes_a_cluster_or_a_sentinel():
    s = make(state_redis_url="redis+cluster://redis-a:7000")
    assert s.state_url == "redis+cluster://redis-a:7000" and s.redis_url != s.state_url
    s = make(state_redis_url="sentinel://s1:26379/1", sentinel_master="mymaster")
    assert s.state_url == "sentinel://s1:26379/1" and s.redis_url != s.state_url
    for url in ("sentinel://s1:26379", "rediss+cluster://redis-a:7000", "unix:///run/r.sock",
                "redis+cluster://a:7000;redis+cluster://b:7000"):
        with pytest.raises(ValidationError):
            make(state_redis_url=url)  # the Sentinel: no SCORER_SENTINEL_MASTER


def test_sentinel_passwords_are_masked():
    s = make(redis_url="sentinel://:hunter2@s1:26379;sentinel://:hunter2@s2:26379",
             sentinel_master="mymaster", sentinel_password="sentinel-pw")
    shown = s.masked()
    assert "hunter2" not in shown["SCORER_REDIS_URL"] and "s1:26379" in shown["SCORER_REDIS_URL"]
    assert shown["SCORER_SENTINEL_PASSWORD"] == "********" and "sentinel-pw" not in repr(s)
    assert shown["SCORER_SENTINEL_MASTER"] == "mymaster"


def test_blank_urls_and_token_mean_unset():
    # compose passes an unset variable through as an empty string
    s = make(redis_url="", state_redis_url="", callback_token="", api_url="")
    assert s.redis_url == "redis://localhost:6379/0" and s.state_url == s.redis_url
    assert s.callback_token is None and s.api_url is None


@pytest.mark.parametrize("env,var", [
    ({"SCORER_REDIS_URL": "redis+cluster://:hunter2@redis-a:7000"}, "SCORER_REDIS_URL"),
    ({"SCORER_REDIS_URL": "sentinel://:hunter2@s1:26379"}, "SCORER_SENTINEL_MASTER"),
    ({"SCORER_STATE_REDIS_URL": "sentinel://:hunter2@s1:26379"}, "SCORER_SENTINEL_MASTER"),
    ({"SCORER_REDIS_URL": "sentinel://:hunter2@s1:26379;sentinel://:other@s2:26379",
      "SCORER_SENTINEL_MASTER": "mymaster"}, "SCORER_REDIS_URL"),
    ({"SCORER_STATE_REDIS_URL": "sentinel://:hunter2@s1:99999",
      "SCORER_SENTINEL_MASTER": "mymaster"}, "SCORER_STATE_REDIS_URL"),
])
def test_bad_redis_url_stops_with_one_line_without_its_password(env, var, tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    proc = subprocess.run([sys.executable, "-m", "worker.doors.cli", "check-config"],
                          env={**clean, "SCORER_SDKAPPID": "1", "SCORER_SECRET_KEY": "k", **env,
                               "PYTHONPATH": str(ROOT)},
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and var in lines[0], proc.stderr
    assert "hunter2" not in proc.stderr
    if "cluster" in env.get("SCORER_REDIS_URL", ""):
        assert "SCORER_STATE_REDIS_URL" in lines[0]  # where a cluster belongs


# --- which process needs which credential ----------------------------------------------------

def test_partial_settings_need_no_tencent_credentials(monkeypatch):
    for k in list(os.environ):
        if k.startswith("SCORER_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("SCORER_SECRET_KEY", "")  # blank: as compose passes an unset one
    s = load_settings(require=(), _env_file=None)
    assert s.sdkappid is None and s.secret_key is None
    assert s.masked()["SCORER_SECRET_KEY"] == ""
    monkeypatch.setenv("SCORER_SDKAPPID", "1400000002")
    assert load_settings(require=("sdkappid",), _env_file=None).sdkappid == 1400000002


def test_a_required_credential_missing_stops_with_one_line(monkeypatch, capsys):
    for k in list(os.environ):
        if k.startswith("SCORER_"):
            monkeypatch.delenv(k)
    with pytest.raises(SettingsError):
        load_settings(require=("sdkappid",), _env_file=None)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["configuration error: SCORER_SDKAPPID is required but not set"]


def test_celery_config_needs_no_credentials(tmp_path):
    """Flower and the receiver load the Celery configuration without the Tencent credentials."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    code = "import worker; print(worker.app.conf.broker_url, worker.app.conf.task_default_queue)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60,
                          env={**clean, "PYTHONPATH": str(ROOT), "SCORER_QUEUE": "scorer",
                               "SCORER_REDIS_URL": "redis://redis:6379/0"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["redis://redis:6379/0", "scorer"]


def test_worker_without_the_secret_key_stops_at_start_up(tmp_path):
    """celeryconfig no longer requires the credentials: the worker's own start-up still does."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    proc = subprocess.run([sys.executable, "-m", "celery", "-A", "worker", "worker", "-P", "solo"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**clean, "PYTHONPATH": str(ROOT), "SCORER_SDKAPPID": "1",
                               "SCORER_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert proc.returncode != 0
    assert "configuration error: SCORER_SECRET_KEY is required but not set" in proc.stderr
    assert "Traceback" not in proc.stderr
