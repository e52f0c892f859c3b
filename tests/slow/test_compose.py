"""docker-compose.yml validates (Debian's docker-compose) and has what a deployment needs; the
images' inputs (Dockerfile, constraints.txt, pyproject.toml) agree with it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement

from tests.conftest import ROOT
from worker.engine.timers import TIMERS

COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(
    COMPOSE is None and not os.environ.get("CI"),
    reason="docker-compose is not installed (apt-get install docker-compose; .ci/run does)")

PROFILES = [(), ("monitoring",), ("sandbox",), ("monitoring", "sandbox")]
#: A value no other setting holds: where it shows up in the effective config, the key went.
SECRET = "sentinel-secret-7d1e9c"
FLOWER_PASSWORD = "sentinel-flower-3b8a"
LONG_RUNNING = {"redis", "worker", "beat", "metrics", "receiver", "flower", "sandbox",
                "prometheus", "grafana"}


def env_example() -> str:
    text = (ROOT / ".env.example").read_text()
    text = text.replace("SCORER_SECRET_KEY=change-me\n", f"SCORER_SECRET_KEY={SECRET}\n")
    return text.replace("FLOWER_PASSWORD=change-me-too\n", f"FLOWER_PASSWORD={FLOWER_PASSWORD}\n")


def project(tmp_path, env_text: str):
    """The files compose reads, in a temporary directory, with `env_text` as .env."""
    for name in ("docker-compose.yml", "Dockerfile"):
        shutil.copy(ROOT / name, tmp_path / name)
    if (ROOT / "monitoring").is_dir():
        shutil.copytree(ROOT / "monitoring", tmp_path / "monitoring")
    (tmp_path / ".env").write_text(env_text)
    return tmp_path


def compose(tmp_path, *args: str,
            profiles=("monitoring", "sandbox")) -> subprocess.CompletedProcess:
    # The shell's environment wins over .env in compose: keep ours out of it.
    names = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines()
             if "=" in line and not line.startswith("#")}
    env = {k: v for k, v in os.environ.items()
           if k not in names and not k.startswith(("SCORER_", "FLOWER_", "GF_"))}
    argv = [COMPOSE or "docker-compose"]
    for p in profiles:
        argv += ["--profile", p]
    return subprocess.run([*argv, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)


def as_json(yaml_text: str) -> dict:
    # docker-compose depends on PyYAML in the system Python; the project needs no YAML itself.
    out = subprocess.run(["/usr/bin/python3", "-c",
                          "import json,sys,yaml; print(json.dumps(yaml.safe_load(sys.stdin)))"],
                         input=yaml_text, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.fixture
def services(tmp_path) -> dict:
    """The effective services, every profile on, from the example .env."""
    proc = compose(project(tmp_path, env_example()), "config")
    assert proc.returncode == 0, proc.stderr
    return as_json(proc.stdout)["services"]


def seconds(duration) -> float:
    """A compose duration ("1m30s", "150s", 150) in seconds."""
    if isinstance(duration, (int, float)):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


def published(service: dict) -> list[tuple[str | None, str]]:
    """(host ip, container port) of each published port; v1 prints the short syntax."""
    out = []
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.append((p.get("host_ip"), str(p.get("target"))))
        else:
            parts = p.split("/")[0].split(":")
            out.append((parts[0] if len(parts) == 3 else None, parts[-1]))
    return out


def mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """container path -> (source, read-only) of each bind mount or volume."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out[v["target"]] = (str(v.get("source")), bool(v.get("read_only")))
        else:
            source, target, *mode = v.split(":")
            out[target] = (source, mode == ["ro"])
    return out


# --- compose -------------------------------------------------------------------------------

@needs_compose
@pytest.mark.parametrize("profiles", PROFILES, ids=lambda p: "+".join(p) or "default")
def test_compose_config_validates(tmp_path, profiles):
    proc = compose(project(tmp_path, (ROOT / ".env.example").read_text()), "config", "-q",
                   profiles=profiles)
    assert proc.returncode == 0, proc.stderr


@needs_compose
def test_compose_has_the_services_a_team_needs(services):
    assert set(services) >= LONG_RUNNING
    redis = services["redis"]
    assert "ports" not in redis
    cmd = redis["command"]
    assert "--appendonly" in cmd and cmd[cmd.index("--appendfsync") + 1] == "everysec"
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert cmd[cmd.index("--maxmemory") + 1] == "1gb"  # from .env.example's REDIS_MAXMEMORY
    worker = services["worker"]
    assert "container_name" not in worker
    assert worker["command"][:4] == ["celery", "-A", "worker", "worker"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "worker", "beat"]
    assert "deploy" not in services["beat"]  # exactly one beat
    assert "SCORER_METRICS_PORT" not in services["beat"].get("environment", {})
    assert services["metrics"]["command"] == ["battle-scorer", "metrics", "--host", "0.0.0.0",
                                              "--port", "9808"]
    assert "ports" not in services["metrics"]
    assert services["receiver"]["command"] == ["battle-scorer", "receive", "--host", "0.0.0.0",
                                               "--port", "8080"]
    assert services["sandbox"]["profiles"] == ["sandbox"]
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["monitoring"]
    for name, s in services.items():
        for host_ip, target in published(s):
            assert host_ip == "127.0.0.1", name  # loopback only
            assert target != "6379", name


@needs_compose
def test_monitoring_mounts_are_read_only_at_fixed_paths(services):
    prom, graf = mounts(services["prometheus"]), mounts(services["grafana"])
    for m, target, source in (
            (prom, "/etc/prometheus/prometheus.yml", "monitoring/prometheus/prometheus.yml"),
            (prom, "/etc/prometheus/alerts.yml", "monitoring/prometheus/alerts.yml"),
            (graf, "/etc/grafana/provisioning", "monitoring/grafana/provisioning"),
            (graf, "/var/lib/grafana/dashboards", "monitoring/grafana/dashboards")):
        assert m[target][0].endswith(source) and m[target][1], target
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "change-me-three"


@needs_compose
def test_every_long_running_service_has_a_healthcheck(services):
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), name
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
    assert "inspect ping" in " ".join(services["worker"]["healthcheck"]["test"])
    assert services["beat"]["healthcheck"]["test"] == ["CMD", "battle-scorer", "health", "beat"]
    assert services["metrics"]["healthcheck"]["test"] == [
        "CMD", "battle-scorer", "health", "metrics", "--url", "http://localhost:9808/healthz"]
    assert "http://localhost:8080/healthz" in services["receiver"]["healthcheck"]["test"][-1]
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "localhost:9090/-/healthy" in " ".join(services["prometheus"]["healthcheck"]["test"])
    assert "localhost:3000/api/health" in " ".join(services["grafana"]["healthcheck"]["test"])


@needs_compose
def test_only_worker_and_beat_get_the_secret_key(services):
    # The sandbox plays Tencent, which verifies UserSigs with the same key; it runs only in
    # its own trial profile.
    allowed = {"worker", "beat", "sandbox"}
    for name, s in services.items():
        assert "env_file" not in s, name
        holds = SECRET in json.dumps(s)
        assert holds == (name in allowed), name
    assert set(services["metrics"]["environment"]) <= {
        "SCORER_REDIS_URL", "SCORER_STATE_REDIS_URL", "SCORER_QUEUE", "SCORER_LOG_FORMAT"}
    assert set(services["flower"]["environment"]) <= {
        "SCORER_REDIS_URL", "SCORER_QUEUE", "FLOWER_BASIC_AUTH"}
    receiver = services["receiver"]["environment"]
    assert {"SCORER_SDKAPPID", "SCORER_CALLBACK_TOKEN", "SCORER_REDIS_URL",
            "SCORER_QUEUE"} <= set(receiver)


@needs_compose
def test_every_service_follows_the_input_queue(services):
    for name in ("worker", "beat", "metrics", "receiver", "flower"):
        assert services[name]["environment"]["SCORER_QUEUE"] == "scorer", name


@needs_compose
def test_flower_credentials_are_never_on_its_command_line(services):
    flower = services["flower"]
    argv = " ".join(flower["command"])
    assert "basic-auth" not in argv and "basic_auth" not in argv
    assert FLOWER_PASSWORD not in argv and FLOWER_PASSWORD not in json.dumps(
        flower.get("healthcheck"))
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == f"admin:{FLOWER_PASSWORD}"
    # ... and that is where Flower reads them: an environment variable named after the option.
    command = pytest.importorskip("flower.command")
    assert command.is_flower_envvar("FLOWER_BASIC_AUTH")
    assert all(command.is_flower_envvar(k) for k in flower["environment"]
               if k.startswith("FLOWER_"))


@needs_compose
def test_flower_without_credentials_is_refused(tmp_path):
    text = "\n".join(line for line in (ROOT / ".env.example").read_text().splitlines()
                     if not line.startswith("FLOWER_USER"))
    proc = compose(project(tmp_path, text), "config", profiles=())
    assert proc.returncode != 0 and "FLOWER_USER" in proc.stderr


@needs_compose
def test_every_image_is_pinned(services):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name, s in services.items():
        image = s["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: {image}"
        if "build" in s:  # our own images carry the project's version
            assert tag == version, f"{name}: {image}"
    built = {s["image"]: (s["build"].get("args", {}).get("EXTRAS", ""), s["build"].get("target"))
             for s in services.values() if "build" in s}
    assert built == {f"battle-scorer:{version}": ("", None),
                     f"battle-scorer-flower:{version}": ("flower", None),
                     f"battle-scorer-receiver:{version}": ("receiver", None),
                     f"battle-scorer-local:{version}": ("", "local")}


@needs_compose
def test_every_service_rotates_its_logs(services):
    for name, s in services.items():
        logging = s.get("logging") or {}
        assert logging.get("driver") == "json-file", name
        assert {"max-size", "max-file"} <= set(logging.get("options", {})), name


@needs_compose
def test_timers_are_ordered(services):
    """soft time limit < hard time limit < stop grace < visibility timeout, and the soft limit
    leaves an ingest its whole Redis-outage retry (worker/engine/timers.py: CeleryTimers)."""
    soft, hard = TIMERS.celery.soft_time_limit, TIMERS.celery.time_limit
    visibility = TIMERS.celery.visibility_timeout
    grace = seconds(services["worker"]["stop_grace_period"])
    outage = TIMERS.ingest.outage_retry
    assert outage < soft < hard < grace < visibility, (outage, soft, hard, grace, visibility)


@needs_compose
def test_the_receiver_can_finish_its_requests_before_it_is_killed(services):
    from worker.doors.receiver.app import Limits

    assert Limits().shutdown_timeout < seconds(services["receiver"]["stop_grace_period"])


def test_env_example_holds_no_real_secret():
    text = (ROOT / ".env.example").read_text()
    assert "SCORER_SECRET_KEY=change-me\n" in text


def test_env_example_sets_every_variable_compose_requires():
    required = set(re.findall(r"\$\{(\w+):\?", (ROOT / "docker-compose.yml").read_text()))
    names = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines()
             if "=" in line and not line.startswith("#")}
    assert required and required <= names, required - names


# --- images --------------------------------------------------------------------------------

def test_dockerfile_pins_its_base_and_installs_with_constraints():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11\.\d+-slim-\w+ AS scorer$", text, re.MULTILINE), \
        "unpinned base"
    assert re.search(r'^ARG EXTRAS=""$', text, re.MULTILINE)
    # The production image is the default (last) stage and never copies the local world.
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    assert stages[-1].split()[0] == "scorer" and len(stages[-1].split("\n")) <= 3
    production = stages[0]
    assert "COPY local" not in production and "COPY worker ./worker" in production
    assert "-c constraints.txt" in text and "COPY pyproject.toml README.md constraints.txt" in text
    assert re.search(r"^USER scorer$", text, re.MULTILINE)
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", ".venv", ".git", "tests"} <= ignored


def test_constraints_pin_every_package_within_pyproject():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"not pinned: {line}"
            pins[name.lower().replace("_", "-")] = version
    assert "battle-scorer" not in pins
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    for extra in ("flower", "receiver"):
        wanted += [Requirement(r) for r in project["optional-dependencies"][extra]]
    local = tomllib.loads((ROOT / "local" / "pyproject.toml").read_text())["project"]
    wanted += [Requirement(r) for r in local["dependencies"] if not r.startswith("battle-scorer")]
    for req in wanted:
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not in constraints.txt"
        assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} breaks {req}"


def test_worker_image_needs_no_flower_or_rich(tmp_path):
    base = [Requirement(r).name for r in
            tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    assert not {"flower", "rich", "uvicorn"} & set(base)
    # ... and the worker, the beat and the metrics exporter start without them, as in the worker
    # image: a finder that hides them (httpx, say, falls back when rich is missing).
    code = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('flower', 'rich', 'uvicorn'):\n"
        "            raise ImportError(f'{name} is not in the worker image')\n"
        "sys.meta_path.insert(0, Hide())\n"
        "import worker, tasks.ingest, tasks.control, worker.doors.endgame_main, worker.doors.cli\n"
        "import worker.doors.metrics, worker.doors.metrics_http, worker.engine.runtime\n"
        "assert worker.app.conf.broker_url\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60,
                          env={**clean, "PYTHONPATH": str(ROOT), "SCORER_SDKAPPID": "1",
                               "SCORER_SECRET_KEY": "k"})
    assert proc.returncode == 0, proc.stderr
