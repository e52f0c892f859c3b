"""`python -m bench.acceptance`: the acceptance referee's scenarios on several seeds, one table.

Runs ../shared/acceptance/referee.py (the independent judge: it plays Tencent and the webhook
pipeline and runs the worker and beat as the README starts them, default concurrency) once per
scenario, delivery mode and seed, one at a time, and prints one row each: the fair battles (the
verdict), exact battles, coins over and under, p99 delivery-to-score, `set_battle_score` calls
per second at the slowest of the seconds in which battles end (counted from the run's
sim-dump.json; it speaks of the finale, where 100 battles end each second), 100006 answers,
rate-limit violations, the backlog at the end, unplanned exits, whether the referee kept its
own schedule (a run where it fell behind says more about the host than the worker), and the CPU
a Tencent call costs the control plane: the CPU seconds of the control workers and the end-game
process (polled from /proc) over all Tencent calls. Not part of CI: a full table takes 20-30
minutes.

    python -m bench.acceptance                                   # load, finale, smoke; 7, 11, 1
    python -m bench.acceptance --scenarios finale --modes bulk50 --seeds 7 --edge 1.0

A run's logs are kept (its run_dir is printed) when it is not all fair; `--keep` keeps them all.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REFEREE = ROOT.parent / "shared" / "acceptance" / "referee.py"
#: A delivery mode: the referee's --bulk-ms (0: one message per gift).
MODES = {"gift": 0, "bulk50": 50}
SCENARIOS = Path(__file__).resolve().parent / "scenarios"


#: A second counts as one in which battles end when at least this many end at its close.
CROWDED = 10


def ending_rates(dump: dict[str, Any]) -> list[int]:
    """`set_battle_score` calls in each whole second (Tencent's wall clock) at whose close at
    least CROWDED battles end, first to last. EndTime is a whole second, and a battle ending at
    E runs until just before E: its last writes fall in [E - 1, E), not in the second from E
    (which counted a second after the last end, empty by then, and none of the first)."""
    ends = collections.Counter(int(b["EndTime"]) for b in dump["battles"].values()
                               if b.get("EndTime"))
    crowded = sorted(e for e, n in ends.items() if n >= CROWDED)
    if not crowded:
        return []
    per: collections.Counter[int] = collections.Counter(
        int(c[1]) for c in dump["calls"] if c[2] == "set_battle_score")
    return [per.get(e - 1, 0) for e in range(crowded[0], crowded[-1] + 1)]


#: The processes whose CPU a Tencent call costs (they plan and send calls), by a part of their
#: command line: the control workers (ticks, flushes, reconcile, audits) and the end game.
CONTROL_PLANE = {"control": "-Q scorer.control", "endgame": "worker.doors.endgame_main"}


class CpuSampler(threading.Thread):
    """Polls /proc for the control plane's processes and keeps each one's last CPU seconds
    (utime + stime), so their CPU is known after the referee has stopped them."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: dict[int, tuple[str, float]] = {}
        self.stop = threading.Event()
        self.tick = os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        while not self.stop.wait(0.2):
            for pid_dir in Path("/proc").glob("[0-9]*"):
                try:
                    cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    kind = next((k for k, m in CONTROL_PLANE.items() if m in cmd), None)
                    if kind is None:
                        continue
                    stat = (pid_dir / "stat").read_text().rsplit(")", 1)[1].split()
                    self.seen[int(pid_dir.name)] = (kind, (int(stat[11]) + int(stat[12]))
                                                    / self.tick)
                except (OSError, ValueError, IndexError):
                    continue

    def totals(self) -> dict[str, float]:
        """CPU seconds per kind of process, as last seen."""
        out: dict[str, float] = collections.defaultdict(float)
        for kind, cpu in self.seen.values():
            out[kind] += cpu
        return dict(out)


def run_one(python: str, scenario: str, mode: str, seed: int, edge: float | None,
            keep: bool) -> dict[str, Any]:
    """One referee run; its row's figures."""
    env = dict(os.environ)
    if edge is not None:
        env["REFEREE_EDGE_S"] = str(edge)
    # This project's extra scenarios (bench/scenarios/hidden_scenarios.py), beside the kit's.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(SCENARIOS), env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="acceptance-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [python, str(REFEREE), "--cwd", str(ROOT),
               "--worker-cmd", f"{python_bin(python, 'celery')} -A worker worker",
               "--beat-cmd", f"{python_bin(python, 'celery')} -A worker beat -s {tmp}/beat",
               "--scenario", scenario, "--seed", str(seed), "--json", str(out), "--quiet",
               "--bulk-ms", str(MODES[mode])]
        sampler = CpuSampler()
        sampler.start()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        sampler.stop.set()
        if not out.exists():
            return {"error": (proc.stderr or proc.stdout).strip()[-300:]}
        res = json.loads(out.read_text())
    if "error" in res:
        return {"error": res["error"], "run_dir": res.get("run_dir")}
    acc, api, lat, procs = res["accuracy"], res["api"], res["latency"], res["processes"]
    run_dir = res["run_dir"]
    rates = ending_rates(json.loads((Path(run_dir) / "sim-dump.json").read_text()))
    fair = acc["fair_battles"] == acc["battles"]
    cpu = sampler.totals()
    calls = api.get("total_calls") or 1
    row = {
        "fair": f"{acc['fair_battles']}/{acc['battles']}",
        "exact": acc["exact_battles"], "over": acc["over_count"], "under": acc["under_count"],
        "p99_s": lat["p99_s"], "end_min_cps": min(rates, default="-"), "end_cps": rates,
        "100006": api["per_api"].get("set_battle_score", {}).get("outcomes", {})
        .get("not_running", 0),
        "violations": api["rate_limit_violations"], "backlog": procs["broker_backlog_at_end"],
        "exits": len(procs["unplanned_exits"]), "referee_ok": res["referee_health"]["ok"],
        "cpu_s": cpu, "cpu_ms_per_call": 1000 * sum(cpu.values()) / calls,
        "all_fair": fair, "run_dir": run_dir,
    }
    # The referee's verdict per battle and room, beside the run's logs.
    (Path(run_dir) / "result.json").write_text(json.dumps(res))
    if fair and not keep:
        shutil.rmtree(run_dir, ignore_errors=True)
        row["run_dir"] = "-"
    return row


def python_bin(python: str, name: str) -> str:
    """The console script `name` beside the interpreter (the project's venv)."""
    return str(Path(python).with_name(name))


def main(argv: list[str] | None = None) -> int:
    """Run the table; exit 0 when every run was fair."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", default="load,finale,smoke")
    ap.add_argument("--modes", default="gift,bulk50", help=f"of {sorted(MODES)}")
    ap.add_argument("--seeds", default="7,11,1")
    ap.add_argument("--edge", type=float, default=None,
                    help="REFEREE_EDGE_S (the fair band's edge; the referee's default is 2 s)")
    ap.add_argument("--keep", action="store_true", help="keep every run's logs")
    ap.add_argument("--json", default="", help="also write the rows here")
    args = ap.parse_args(argv)
    if not REFEREE.exists():
        print(f"no referee at {REFEREE}", file=sys.stderr)
        return 2
    python = str(ROOT / ".venv" / "bin" / "python")
    # The project's bytecode first, as an image has it (Dockerfile): with PYTHONDONTWRITEBYTECODE
    # set, every process the referee starts compiled each module changed since its last .pyc
    # from source, CPU the control plane's ms/call counted (0.1 ms a call in the finale).
    subprocess.run([python, "-m", "compileall", "-q", "worker", "tasks"], cwd=ROOT, check=True)
    rows = []
    head = (f"{'scenario':8} {'mode':6} {'seed':>4} {'edge':>4} {'fair':>8} {'exact':>5} "
            f"{'over':>7} {'under':>8} {'p99 s':>6} {'end min/s':>9} {'100006':>6} "
            f"{'viol':>4} {'backlog':>7} {'exits':>5} {'ref ok':>6} {'ms/call':>7}  run_dir")
    print(head, flush=True)
    for scenario in args.scenarios.split(","):
        # smoke (10 gifts a second) runs in one mode, one message per gift: one run a seed.
        modes = ["gift"] if scenario == "smoke" else args.modes.split(",")
        for mode in modes:
            for seed in (int(s) for s in args.seeds.split(",")):
                row = run_one(python, scenario, mode, seed, args.edge, args.keep)
                row.update(scenario=scenario, mode=mode, seed=seed, edge=args.edge or 2.0)
                rows.append(row)
                if "error" in row:
                    print(f"{scenario:8} {mode:6} {seed:>4} error: {row['error']}", flush=True)
                    continue
                print(f"{scenario:8} {mode:6} {seed:>4} {row['edge']:>4} {row['fair']:>8} "
                      f"{row['exact']:>5} {row['over']:>7} {row['under']:>8} "
                      f"{row['p99_s']:>6.2f} {row['end_min_cps']:>9} {row['100006']:>6} "
                      f"{row['violations']:>4} {row['backlog']:>7} {row['exits']:>5} "
                      f"{'yes' if row['referee_ok'] else 'NO':>6} "
                      f"{row['cpu_ms_per_call']:>7.2f}  {row['run_dir']}",
                      flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r.get("all_fair") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
