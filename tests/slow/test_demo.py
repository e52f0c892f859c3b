"""The demo (the README's run command) scores live, ends matching, and leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT


def demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    return {**env, "COLUMNS": "200", "PYTHONPATH": str(ROOT)}


def processes_using(marker: str) -> list[int]:
    """PIDs whose command line or environment mentions `marker`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            blob = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in blob:
            found.append(int(proc.name))
    return found


def markers(output: str) -> list[str]:
    m = re.search(r"redis redis://127\.0\.0\.1:(\d+)/0 · sandbox (http://127\.0\.0\.1:\d+)",
                  output)
    assert m, output
    return [f"127.0.0.1:{m.group(1)}", m.group(2)]


def test_demo_short_run_matches_and_cleans_up():
    proc = subprocess.run([sys.executable, "-m", "worker.doors.cli", "demo", "--short"], cwd=ROOT,
                          env=demo_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every battle matches" in proc.stdout
    assert proc.stdout.count(": MATCH") == 2
    for marker in markers(proc.stdout):
        assert processes_using(marker) == [], marker


def test_demo_ctrl_c_stops_everything():
    proc = subprocess.Popen([sys.executable, "-m", "worker.doors.cli", "demo", "--short"], cwd=ROOT,
                            env=demo_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    first = ""
    deadline = time.time() + 60
    while "sandbox http" not in first and time.time() < deadline:
        first += proc.stdout.readline()
    time.sleep(3)  # worker and beat are up and battles are running
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, first + rest
    for marker in markers(first):
        assert processes_using(marker) == [], marker
