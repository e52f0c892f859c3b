"""A local fake of Tencent's battle and gift REST APIs, for tests, the demo and trying the worker.

It verifies what Tencent verifies (the query string and the UserSig, by running the
TLSSigAPIv2 algorithm in reverse), models battles and gift counters, enforces a per-API
calls-per-second limit (counting each call as it arrives, as Tencent does), injects faults on
request, and records every call and score change.
Control endpoints under `/sandbox/` drive it (no auth: bind it to loopback only).

Its parts: the signature check (sandbox_auth), the faults (sandbox_faults), the model of
battles and APIs (sandbox_model), the HTTP server (sandbox_http); here, the server started in
a thread and the `battle-scorer sandbox` command.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading

from scorer_local.sandbox_auth import Reject, verify_usersig
from scorer_local.sandbox_faults import FAULT_KINDS
from scorer_local.sandbox_http import SandboxHandler, SandboxServer
from scorer_local.sandbox_model import SandboxState

__all__ = ["FAULT_KINDS", "Reject", "Sandbox", "SandboxState", "main", "verify_usersig"]


class Sandbox:
    """The sandbox server: `Sandbox(app, key).start()` serves on 127.0.0.1 in a thread."""

    def __init__(self, sdkappid: int, secret_key: str, admin_id: str = "administrator",
                 rate: int = 200, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = SandboxState(sdkappid, secret_key, admin_id, rate)
        self.server = SandboxServer((host, port), SandboxHandler)
        self.server.state = self.state
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Sandbox(url={self.url!r})"

    def start(self) -> Sandbox:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                        name="sandbox")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()
        self.server.server_close()


def main(argv: list[str] | None = None) -> int:
    """`battle-scorer sandbox`: serve until SIGINT/SIGTERM."""
    p = argparse.ArgumentParser(prog="battle-scorer sandbox", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9100)
    p.add_argument("--sdkappid", type=int, default=int(os.environ.get("SCORER_SDKAPPID") or 0))
    p.add_argument("--admin-id", default=os.environ.get("SCORER_ADMIN_ID", "administrator"))
    p.add_argument("--rate", type=int, default=200, help="calls per second per API")
    p.add_argument("--clock-offset", type=float, default=0.0,
                   help="seconds the sandbox's clock (Tencent's) runs ahead of this machine's")
    args = p.parse_args(argv)
    key = os.environ.get("SCORER_SECRET_KEY", "")
    if not args.sdkappid or not key:
        p.error("set SCORER_SDKAPPID and SCORER_SECRET_KEY (the sandbox verifies signatures "
                "with the same key as the worker)")
    sb = Sandbox(args.sdkappid, key, args.admin_id, args.rate, args.host, args.port)
    sb.state.clock_offset = args.clock_offset
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    sb.start()
    print(f"sandbox listening on {sb.url}", flush=True)
    stop.wait()
    sb.stop()
    return 0
