"""The `battle-scorer` command: configuration check, sandbox, operator views, metrics, health."""

from __future__ import annotations

import argparse
import importlib
import signal
import socket
import sys
import threading
from types import ModuleType
from typing import TYPE_CHECKING

# The operator views (stats, battles, one battle, dead letters) live in their own module.
from worker.doors.cli_views import cmd_battle, cmd_battles, cmd_dead_letters, cmd_stats
from worker.engine.settings import load_settings

if TYPE_CHECKING:
    from worker.engine.settings import Settings


def cmd_check_config(args: argparse.Namespace) -> int:
    """Print the effective settings (secret masked), the resolved API base URL and this host's
    clock against Redis's; non-zero if that clock is off by more than redisclock.WARN."""
    s = load_settings()
    width = max(len(k) for k in s.masked())
    for name, value in s.masked().items():
        print(f"{name:<{width}}  {value}")
    print(f"{'API base URL':<{width}}  {s.api_base_url}")
    rc = _clock(s, width)
    if args.probe:
        return _probe(s) or rc
    return rc


def _clock(settings: Settings, width: int) -> int:
    """This host's clock against the broker Redis's (worker/engine/state/redisclock.py)."""
    import redis

    from worker.engine.runtime import connect
    from worker.engine.state import redisclock

    label = f"{'host clock':<{width}}  "
    try:
        client = connect(settings.redis_url, settings.sentinel_master,
                         settings.sentinel_secret, quick=2.0)
        offset, rtt = redisclock.measure(client)
    except (redis.RedisError, OSError) as err:
        print(f"{label}not measured: the broker Redis did not answer ({type(err).__name__})")
        return 0
    ahead = -offset
    print(f"{label}{ahead:+.3f} s against Redis's (round trip {rtt * 1000:.1f} ms)")
    if abs(ahead) > redisclock.WARN:
        print(f"this host's clock is {ahead:+.3f} s off Redis's (more than "
              f"{redisclock.WARN:g} s): fix its NTP; scoring uses Redis's clock and is not "
              "affected", file=sys.stderr)
        return 1
    return 0


def _probe(settings: Settings) -> int:
    """One signed read call, to prove the credentials and region work."""
    from worker.engine.tencent import Outcome, TencentClient, TencentError

    client = TencentClient(settings, max_attempts=1)
    try:
        client.get_gift_count("battle-scorer-probe", settings.admin_id)
    except TencentError as err:
        hints = {70001: "the UserSig expired: check the machine's clock",
                 70003: "the UserSig is invalid: check SCORER_SDKAPPID",
                 70009: "the signature does not verify: check SCORER_SECRET_KEY",
                 70013: "the identifier does not match: check SCORER_ADMIN_ID"}
        hint = hints.get(err.code or 0)
        if hint is None and err.outcome not in (Outcome.final, Outcome.refused):
            hint = "could not reach Tencent: check SCORER_REGION / SCORER_API_URL and network"
        print(f"probe failed: {err}" + (f" — {hint}" if hint else ""), file=sys.stderr)
        return 1
    finally:
        client.close()
    print("probe ok: credentials and region work")
    return 0


def _local_world(name: str) -> ModuleType:
    """A module of the local world (local/: the sandbox, the demo), which production images do
    not install: a missing one stops the command with one line saying how to get it."""
    try:
        return importlib.import_module(f"scorer_local.{name}")
    except ModuleNotFoundError as err:
        if err.name is None or not err.name.startswith("scorer_local"):
            raise
        raise SystemExit(f"battle-scorer {name}: the local world is not installed here "
                         "(production images leave it out): from a checkout, "
                         "pip install -e ./local, or run `make run`") from None


def cmd_sandbox(args: argparse.Namespace) -> int:
    """Run the local Tencent sandbox."""
    return int(_local_world("sandbox").main(args.rest))


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo."""
    return int(_local_world("demo").main(args.rest))


def cmd_receive(args: argparse.Namespace) -> int:
    """Run the signed webhook receiver."""
    from worker.doors.receiver import serve as receiver

    return receiver.main(args.rest)


def cmd_metrics(args: argparse.Namespace) -> int:
    """Serve /metrics (cluster-wide, from Redis) and /healthz until SIGTERM or SIGINT."""
    from worker.doors import logs, metrics_http

    s = load_settings(require=())  # Redis and the queue name only: never the Tencent key
    port = args.port if args.port is not None else (s.metrics_port or 9808)
    logs.to_stderr(s, ("scorer",))
    state, broker = metrics_http.clients(s)
    try:
        server, _thread = metrics_http.start(args.host, port, state, broker, s.queue)
    except OSError as err:
        print(f"metrics: cannot listen on {args.host}:{port}: {err}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    host = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 address
    print(f"metrics on http://{host}:{server.server_address[1]}/metrics", flush=True)
    while not stop.wait(1.0):  # a timed wait: the signal handler runs between waits
        pass
    server.shutdown()
    server.server_close()
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the service is healthy, else 1 with one line on stderr (healthchecks)."""
    if args.service == "metrics":
        from worker.doors.metrics_http import get_status

        status, line = get_status(args.url, args.timeout)
        if status == 200:
            return 0
        print(f"metrics: {args.url} answered {status or 'nothing'}: {line}", file=sys.stderr)
        return 1
    if args.service == "worker":
        from worker.doors.app import app

        name = args.name or f"celery@{socket.gethostname()}"
        try:
            replies = app.control.ping(destination=[name], timeout=args.timeout)
        except Exception as err:  # a broken broker is an unhealthy worker
            replies, why = [], type(err).__name__
        else:
            why = "no reply"
        if any(name in r for r in replies):
            return 0
        print(f"worker: {name} did not answer a ping within {args.timeout}s ({why})",
              file=sys.stderr)
        return 1
    return _health_beat(args)


def _health_beat(args: argparse.Namespace) -> int:
    from redis import RedisError

    from worker.doors import metrics, metrics_http
    from worker.engine.tick.schedule import tick_seconds

    s = load_settings(require=())
    # Beat publishes every tick (0.25 s by default): 40 ticks missed is stuck, not jitter.
    max_age = args.max_age if args.max_age is not None else max(
        10.0, 40 * tick_seconds(s.flush_interval))
    try:
        age = metrics.beat_publish_age(metrics_http.connect(s.state_url, args.timeout, s))
    except RedisError as err:
        print(f"beat: Redis unavailable ({type(err).__name__})", file=sys.stderr)
        return 1
    if age == metrics.INF:
        print(f"beat: no tick published in the last {metrics.BEAT_PUBLISHED_TTL}s",
              file=sys.stderr)
        return 1
    if age > max_age:
        print(f"beat: last tick published {age:.1f}s ago (max {max_age:g}s)", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `battle-scorer`."""
    p = argparse.ArgumentParser(prog="battle-scorer", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check-config", help="print the effective settings (secret masked)")
    c.add_argument("--probe", action="store_true", help="make one signed read call to Tencent")
    c.set_defaults(func=cmd_check_config)
    c = sub.add_parser("sandbox", help="run the local Tencent sandbox (see --help)",
                       add_help=False)
    c.add_argument("rest", nargs=argparse.REMAINDER)
    c.set_defaults(func=cmd_sandbox)
    c = sub.add_parser("demo", help="run everything locally and play a few battles",
                       add_help=False)
    c.add_argument("rest", nargs=argparse.REMAINDER)
    c.set_defaults(func=cmd_demo)
    c = sub.add_parser("receive", help="signed Tencent webhook receiver (see --help)",
                       add_help=False)
    c.add_argument("rest", nargs=argparse.REMAINDER)
    c.set_defaults(func=cmd_receive)
    c = sub.add_parser("metrics", help="serve Prometheus metrics and /healthz")
    c.add_argument("--port", type=int, default=None,
                   help="default SCORER_METRICS_PORT, else 9808 (0: any free port)")
    c.add_argument("--host", default="127.0.0.1")
    c.set_defaults(func=cmd_metrics)
    c = sub.add_parser("health", help="exit 0 when a service is healthy (healthchecks)")
    c.add_argument("service", choices=["beat", "worker", "metrics"])
    c.add_argument("--max-age", type=float, default=None,
                   help="beat: seconds since its last tick publish (default 40 ticks, >= 10)")
    c.add_argument("--url", default="http://127.0.0.1:9808/healthz", help="metrics: URL")
    c.add_argument("--name", default=None, help="worker: node name (default celery@HOSTNAME)")
    c.add_argument("--timeout", type=float, default=3.0)
    c.set_defaults(func=cmd_health)
    c = sub.add_parser("stats", help="event counters")
    c.set_defaults(func=cmd_stats)
    c = sub.add_parser("battles", help="active battles")
    c.set_defaults(func=cmd_battles)
    c = sub.add_parser("battle", help="one battle's ledger, flushes and Tencent score")
    c.add_argument("battle_id")
    c.set_defaults(func=cmd_battle)
    c = sub.add_parser("dead-letters", help="list or replay dead letters")
    c.add_argument("action", choices=["list", "replay"])
    c.add_argument("--limit", type=int, default=100)
    c.set_defaults(func=cmd_dead_letters)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    argv = sys.argv[1:] if argv is None else argv
    # Commands with their own parsers get the rest of the line untouched.
    passthrough = {"sandbox": cmd_sandbox, "demo": cmd_demo, "receive": cmd_receive}
    if argv and argv[0] in passthrough:
        try:
            return int(passthrough[argv[0]](argparse.Namespace(rest=argv[1:])) or 0)
        except KeyboardInterrupt:
            return 130
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
