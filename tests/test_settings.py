"""Settings: defaults, region URLs, masking, and the one-line start-up error."""

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from worker.settings import REGION_DOMAINS, Settings, load_settings


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
    proc = subprocess.run([sys.executable, "-m", "worker.cli", "check-config"],
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
    proc = subprocess.run([sys.executable, "-m", "worker.cli", "check-config"], env=env,
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
