"""docker-compose.yml validates (Debian's docker-compose) and has what a deployment needs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

COMPOSE = shutil.which("docker-compose")
pytestmark = pytest.mark.skipif(COMPOSE is None and not os.environ.get("CI"),
                                reason="docker-compose is not installed")


def config(tmp_path, env_text: str) -> subprocess.CompletedProcess:
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    (tmp_path / ".env").write_text(env_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCORER_", "FLOWER_"))}
    return subprocess.run([COMPOSE or "docker-compose", "--profile", "sandbox", "config"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def as_json(yaml_text: str) -> dict:
    # docker-compose depends on PyYAML in the system Python; the project needs no YAML itself.
    out = subprocess.run(["/usr/bin/python3", "-c",
                          "import json,sys,yaml; print(json.dumps(yaml.safe_load(sys.stdin)))"],
                         input=yaml_text, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_compose_config_has_the_services_a_team_needs(tmp_path):
    proc = config(tmp_path, (ROOT / ".env.example").read_text())
    assert proc.returncode == 0, proc.stderr
    svc = as_json(proc.stdout)["services"]
    assert {"redis", "worker", "beat", "flower", "sandbox"} <= set(svc)
    redis = svc["redis"]
    assert "ports" not in redis and "healthcheck" in redis
    assert "--appendonly" in redis["command"] and "noeviction" in redis["command"]
    worker = svc["worker"]
    assert "container_name" not in worker and "healthcheck" in worker
    assert "inspect" in " ".join(worker["healthcheck"]["test"])
    assert worker["stop_grace_period"] in ("1m30s", "90s")
    assert worker["command"][:4] == ["celery", "-A", "worker", "worker"]
    assert svc["beat"]["command"][:4] == ["celery", "-A", "worker", "beat"]
    assert "deploy" not in svc["beat"]
    flower = svc["flower"]
    assert any(a.startswith("--basic-auth=admin:") for a in flower["command"])
    # v1 prints short syntax ("127.0.0.1:5555:5555"), v2 long syntax (host_ip): accept both.
    assert all((p.get("host_ip") if isinstance(p, dict) else p.split(":")[0]) == "127.0.0.1"
               for p in flower["ports"])
    assert "healthcheck" in flower
    assert svc["sandbox"]["profiles"] == ["sandbox"]
    for name, s in svc.items():
        for p in s.get("ports", []):
            target = p.get("target") if isinstance(p, dict) else p.rsplit(":", 1)[-1]
            assert str(target) != "6379", name


def test_flower_without_credentials_is_refused(tmp_path):
    text = "\n".join(l for l in (ROOT / ".env.example").read_text().splitlines()
                     if not l.startswith("FLOWER_USER"))
    proc = config(tmp_path, text)
    assert proc.returncode != 0 and "FLOWER_USER" in proc.stderr


def test_env_example_holds_no_real_secret():
    text = (ROOT / ".env.example").read_text()
    assert "SCORER_SECRET_KEY=change-me" in text
