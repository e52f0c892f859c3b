"""Run a whole local stack (redis-server, worker and beat processes) for the demo, bench, tests."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from scorer_local.procs import (
    alive,
    children_map,
    children_running,
    cmdline,
    process_tree_cpu,
    process_tree_rss,
)

__all__ = ["ROOT", "Processes", "RedisCluster", "RedisServer", "SandboxProcess", "alive",
           "celery_cmd", "children_map", "children_running", "cmdline", "free_port",
           "process_tree_cpu", "process_tree_rss", "redis_server_bin", "scorer_env",
           "skewed_env", "stop_all", "wait_for_redis"]

ROOT = Path(__file__).resolve().parents[2]  # the checkout (local/scorer_local/stack.py)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def redis_server_bin() -> str | None:
    """The system redis-server, if installed."""
    path = shutil.which("redis-server")
    if path:
        return path
    return "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None


def _require_redis_server() -> str:
    """The system redis-server; a clear error when it is not installed."""
    binary = redis_server_bin()
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    return binary


def _redis_cmd(binary: str, port: int, data_dir: str, appendonly: bool,
               *extra: str) -> list[str]:
    """A loopback redis-server command line: no snapshots, quiet, data in `data_dir`."""
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes" if appendonly else "no", "--dir", data_dir,
            "--loglevel", "warning", *extra]


def wait_for_redis(port: int, deadline: float, proc: subprocess.Popen | None = None) -> None:
    """Block until the redis-server on `port` answers PING (or fail at `deadline`)."""
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        while True:
            try:
                client.ping()
                return
            except (redis.ConnectionError, redis.BusyLoadingError):
                if time.time() > deadline or (proc is not None and proc.poll() is not None):
                    raise RuntimeError(f"redis-server did not start on port {port}") from None
                time.sleep(0.05)
    finally:
        client.close()


def stop_all(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    """SIGTERM every process at once, then give each `grace` s before SIGKILL."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
    for p in procs:  # reap: a SIGKILLed process ends at once
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass


class RedisServer:
    """A redis-server process we own, on a loopback port, in a temporary directory."""

    def __init__(self, port: int | None = None, appendonly: bool = False) -> None:
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="bs-redis-")
        self.appendonly = appendonly
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> RedisServer:
        binary = _require_redis_server()
        self.proc = subprocess.Popen(
            _redis_cmd(binary, self.port, self.dir, self.appendonly,
                       "--daemonize", "no", "--maxmemory-policy", "noeviction"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for_redis(self.port, time.time() + timeout, self.proc)
        return self

    def stop(self) -> None:
        if self.proc:
            stop_all([self.proc])

    def kill(self) -> None:
        """SIGKILL the server (a crash, not a shutdown): with appendonly its AOF keeps what
        was fsynced (appendfsync everysec: all but about the last second). `start()` brings
        it back on the same port and data directory."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def celery_cmd(*args: str) -> list[str]:
    """`celery -A worker ...` with this interpreter (tests)."""
    return [sys.executable, "-m", "celery", "-A", "worker", *args]


def scorer_env(sdkappid: int, secret_key: str, api_url: str, redis_url: str,
               **extra) -> dict[str, str]:
    """Environment for worker and beat processes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    env.update({"SCORER_SDKAPPID": str(sdkappid), "SCORER_SECRET_KEY": secret_key,
                "SCORER_API_URL": api_url, "SCORER_REDIS_URL": redis_url,
                "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")})
    env.update({f"SCORER_{k.upper()}": str(v) for k, v in extra.items()})
    return env


#: A sitecustomize that moves `time.time()` (and `time_ns`) of every process started with it by
#: SCORER_TEST_CLOCK_SKEW_S seconds: a host whose wall clock is off. (libfaketime would also
#: move the clocks Python's timed waits use, and break them; the referee shifts the same way.)
_SKEW_SHIM = """import os, time
_skew = float(os.environ.get("SCORER_TEST_CLOCK_SKEW_S") or 0)
if _skew:
    _time, _time_ns = time.time, time.time_ns
    time.time = lambda: _time() + _skew
    time.time_ns = lambda: _time_ns() + int(_skew * 1e9)
"""


def skewed_env(env: dict[str, str], seconds: float, shim_dir: str | Path) -> dict[str, str]:
    """A copy of `env` whose processes' wall clock runs `seconds` ahead (behind if negative):
    writes the shim as `shim_dir`/sitecustomize.py and puts that directory first on
    PYTHONPATH."""
    shim = Path(shim_dir)
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "sitecustomize.py").write_text(_SKEW_SHIM)
    path = os.pathsep.join(p for p in (str(shim), env.get("PYTHONPATH")) if p)
    return dict(env, SCORER_TEST_CLOCK_SKEW_S=str(seconds), PYTHONPATH=path)


class Processes:
    """Worker and beat processes started in their own sessions, stopped together."""

    def __init__(self, env: dict[str, str], logdir: str | Path, app: str = "worker") -> None:
        self.env = env
        self.logdir = Path(logdir)
        self.app = app
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *celery_args: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "celery", "-A", self.app, *celery_args]
        with open(self.logdir / f"{name}.log", "ab") as log:  # the child keeps its own copy
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def worker(self, name: str = "worker", concurrency: int = 2) -> subprocess.Popen:
        return self.start(name, "worker", "--loglevel=INFO", f"--concurrency={concurrency}",
                          "-n", f"{name}@%h", "-E")

    def beat(self, name: str = "beat") -> subprocess.Popen:
        return self.start(name, "beat", "--loglevel=INFO", "-s",
                          str(self.logdir / f"{name}-schedule"))

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM every process group (warm shutdown), SIGKILL what is left after `timeout`."""
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)


class RedisCluster:
    """A 3-master Redis Cluster on loopback ports (redis-server in cluster mode)."""

    def __init__(self, masters: int = 3) -> None:
        # A cluster node also listens on port + 10000 (the cluster bus): pick ports that
        # leave room for it and are free on both.
        ports: list[int] = []
        rng = random.Random()
        while len(ports) < masters:
            p = rng.randint(20000, 30000)
            if p not in ports and _is_free(p) and _is_free(p + 10000):
                ports.append(p)
        self.nodes = [RedisServer(port=p) for p in ports]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def start(self, timeout: float = 30) -> RedisCluster:
        binary = _require_redis_server()
        for node in self.nodes:
            node.proc = subprocess.Popen(
                _redis_cmd(binary, node.port, node.dir, False, "--cluster-enabled", "yes",
                           "--cluster-config-file", "nodes.conf",
                           "--cluster-node-timeout", "5000"),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + timeout
        for node in self.nodes:
            wait_for_redis(node.port, deadline, node.proc)
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        subprocess.run([cli, "--cluster", "create",
                        *[f"127.0.0.1:{n.port}" for n in self.nodes],
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        client = redis.Redis(host="127.0.0.1", port=self.nodes[0].port,
                             decode_responses=True)
        while client.cluster("info")["cluster_state"] != "ok":
            if time.time() > deadline:
                raise RuntimeError("the cluster did not become ok")
            time.sleep(0.1)
        return self

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


class SandboxProcess:
    """The Tencent sandbox as its own process on a free loopback port (benchmarks)."""

    def __init__(self, sdkappid: int, secret_key: str, logdir: str | Path,
                 rate: int = 200) -> None:
        """`rate`: the calls a second per API it serves (Tencent's 200)."""
        from scorer_local.sandbox_control import SandboxControl

        port = free_port()
        env = {**os.environ, "SCORER_SDKAPPID": str(sdkappid), "SCORER_SECRET_KEY": secret_key,
               "PYTHONPATH": str(ROOT)}
        with open(Path(logdir) / "sandbox.log", "w") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker.doors.cli", "sandbox", "--port", str(port),
                 "--rate", str(rate)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"
        self.ctl = SandboxControl(self.url)
        for _ in range(100):
            try:
                self.ctl.state()
                break
            except Exception:
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.ctl.close()
