"""`battle-scorer sandbox` and `demo` where the local world is not installed (production images)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scorer_local.stack import ROOT

HIDE_LOCAL = (
    "import sys\n"
    "class Hide:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] == 'scorer_local':\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "sys.meta_path.insert(0, Hide())\n"
    "from worker.doors.cli import main\n"
    "sys.exit(main([sys.argv[1]]))\n")


@pytest.mark.parametrize("command", ["sandbox", "demo"])
def test_a_local_world_command_without_it_says_how_to_get_it(command: str) -> None:
    proc = subprocess.run([sys.executable, "-c", HIDE_LOCAL, command], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "local world is not installed" in lines[0], proc.stderr
    assert "pip install -e ./local" in lines[0]
