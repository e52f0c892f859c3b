"""Packaging: importing the engine builds no app, `celery -A worker` still finds it, the wheel
without extras carries no local world."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import zipfile

import worker.engine
from scorer_local.stack import ROOT

#: Every module of the engine (importing worker.engine itself starts nothing, see the test).
ENGINE = sorted(m.name for m in pkgutil.walk_packages(worker.engine.__path__, "worker.engine."))


def test_importing_every_engine_module_builds_no_app_patch_or_signal():
    code = (
        "import importlib, sys\n"
        f"for name in {ENGINE!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules"
        " if m.split('.')[0] in ('celery', 'tasks', 'scorer_local')"
        " or m.startswith('worker.doors'))\n"
        "assert not bad, bad\n"
        "import kombu.transport.redis as t\n"
        "import worker\n"
        "assert 'app' not in vars(worker), 'worker.app was built'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_worker_app_still_resolves_for_celery_a_worker():
    code = ("from celery.app.utils import find_app\n"
            "app = find_app('worker')\n"
            "assert app.main == 'battle_scorer', app\n"
            "app.loader.import_default_modules()  # what a worker does at start\n"
            "assert 'scorer.webhook' in app.tasks and 'scorer.tick' in app.tasks\n")
    env = {"PATH": "/usr/bin:/bin", "SCORER_SDKAPPID": "1", "SCORER_SECRET_KEY": "k"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_wheel_without_extras_holds_no_local_world(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                           str(tmp_path), str(ROOT)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("battle_scorer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("worker/engine/") for n in names)
    assert not [n for n in names if "scorer_local" in n or "sandbox" in n or "demo" in n]
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [line for line in zipfile.ZipFile(wheel).read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert requires and not [r for r in requires if "rich" in r or "flower" in r]
