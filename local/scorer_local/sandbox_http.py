"""The sandbox's HTTP side: Tencent's REST APIs (signed, rate limited, with injected faults)
and the control endpoints under `/sandbox/` (no auth: bind it to loopback only)."""

from __future__ import annotations

import json
import socket
import struct
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from scorer_local.sandbox_auth import Reject
from scorer_local.sandbox_faults import LATE_LANDING
from scorer_local.sandbox_model import SandboxState
from worker.engine.tencent.client import SERVICES

#: Linux's SO_TIMESTAMPNS (and SCM_TIMESTAMPNS): Python's socket module does not name it.
SO_TIMESTAMPNS = 35


class SandboxHandler(BaseHTTPRequestHandler):
    """Tencent's REST APIs under /v4/, the control endpoints under /sandbox/."""

    protocol_version = "HTTP/1.1"
    server: SandboxServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without NODELAY, Nagle and the client's
        # delayed ACK add ~40 ms to every keep-alive answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The kernel stamps each segment as it arrives: a call's `t_arrived` is when it
        # reached this host, before any wait of ours (threads, the GIL), so a bench can tell
        # requests that left a client bunched from ones this process was slow to read.
        self.arrived: float | None = None
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:  # not Linux: calls are counted when read, as before
            pass

    def handle_one_request(self) -> None:
        self.arrived = self._arrival()
        super().handle_one_request()

    def _arrival(self) -> float | None:
        """When the next request reached the host: the kernel's stamp of what is queued at
        the peek (its headers', or its body's if that came too; None before the kernel
        stamps at all, e.g. a first connection's first request: then it is counted when
        read). A peek reads nothing and waits as the request line's read would. Needs a
        client that does not pipeline requests (none of ours: httpx sends the next request
        once the answer is read)."""
        try:
            _, anc, _, _ = self.connection.recvmsg(1, socket.CMSG_SPACE(16), socket.MSG_PEEK)
        except OSError:
            return None
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
                sec, ns = struct.unpack("qq", data[:16])
                return sec + ns / 1e9
        return None

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet: tests read the call log
        pass

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The Date header on Tencent's clock (the worker estimates the offset from it)."""
        return super().date_time_string(self.server.state.now() if timestamp is None
                                        else timestamp)

    def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        return json.loads(raw) if raw else None

    def do_GET(self) -> None:
        st = self.server.state
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/sandbox/state":
            return self._send(200, st.snapshot())
        if url.path == "/sandbox/calls":
            since = int(q.get("since", 0))
            with st.lock:
                return self._send(200, {"calls": st.calls[since:], "next": len(st.calls)})
        if url.path == "/sandbox/history":
            with st.lock:
                h = [x for x in st.history if x["battle"] == q.get("battle", x["battle"])]
            return self._send(200, {"history": h})
        self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        url = urlparse(self.path)
        try:
            body = self._body()
        except (ValueError, UnicodeDecodeError):
            body = ValueError
        if url.path.startswith("/sandbox/"):
            return self._control(url.path, body)
        parts = url.path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "v4" or SERVICES.get(parts[2]) != parts[1]:
            return self._send(404, {"error": "not found"})
        self._tencent(parts[2], parse_qs(url.query), body)

    def _tencent(self, api: str, query: dict[str, list[str]], body: Any) -> None:
        st = self.server.state
        request_id = uuid.uuid4().hex
        record: dict[str, Any] = {
            "t": time.time(), "api": api, "body": body if isinstance(body, dict) else None,
            "error_code": None, "fault": None, "t_arrived": self.arrived,
            "random": next(iter(query.get("random") or []), None)}
        answer: dict[str, Any] = {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": "",
                                  "RequestId": request_id}
        lost = False
        try:
            if body is ValueError:
                raise Reject(100002, "body is not valid JSON")
            st.check_query(query)
            # Tencent counts a call when it arrives, not when a thread here gets to it
            # (on 2 busy cores, up to 0.2 s later: bench/RESULTS.md, seventh session).
            arrived = self.arrived if self.arrived is not None else record["t"]
            if not st.admit(api, arrived):
                raise Reject(100012, "request frequency limit exceeded")
            fault = st.take_fault(api)
            if fault:
                kind, latency = fault
                record["fault"] = kind
                if kind in ("http502", "http429", "http408"):  # a proxy's refusal: not applied
                    status = int(kind[4:])
                    with st.lock:
                        st.calls.append(record)
                    return self._send(status, f"<html>{status}</html>".encode(), "text/html")
                if kind == "late_landing":
                    # (0.3, the rates' default latency, means the default hold)
                    time.sleep(latency if latency > 1 else LATE_LANDING)
                    record["t_landed"] = time.time()
                if kind == "error100001":
                    raise Reject(100001, "internal error")
                if kind == "latency":
                    time.sleep(latency)
                lost = kind == "lost_response"
            answer["Response"] = st.apply(api, body)
        except Reject as rej:
            answer.update(ActionStatus="FAIL", ErrorCode=rej.code, ErrorInfo=rej.info)
            record["error_code"] = rej.code
        with st.lock:
            st.calls.append(record)
        if lost:  # applied, but the answer never reaches the caller
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        try:
            self._send(200, answer)
        except OSError:  # a late landing's client has given up and gone
            self.close_connection = True

    def _control(self, path: str, body: Any) -> None:
        st = self.server.state
        body = body if isinstance(body, dict) else {}
        try:
            if path == "/sandbox/rooms":
                st.create_room(body["RoomId"], body["Owner_Account"])
                return self._send(200, {"ok": True})
            if path == "/sandbox/battles":
                return self._send(200, st.create_battle(body["Rooms"], body["Duration"],
                                                        body.get("StartTime"),
                                                        body.get("BattleId")))
            if path.startswith("/sandbox/battles/") and path.endswith("/end"):
                return self._send(200, st.end_battle(path.split("/")[3]))
            if path == "/sandbox/gifts":
                gifts = body.get("gifts", [body])
                return self._send(200, {"counted": st.count_gifts(gifts)})
            if path == "/sandbox/faults":
                if "rates" in body:
                    st.set_fault_rates(body["rates"], body.get("latency", 0.3),
                                       body.get("seed"), body.get("apis"))
                else:
                    st.inject(body.get("api"), body["kind"], int(body.get("count", 1)),
                              float(body.get("latency", 0.0)))
                return self._send(200, {"ok": True})
            if path == "/sandbox/faults/clear":
                st.clear_faults()
                return self._send(200, {"ok": True})
            if path == "/sandbox/clock":
                st.clock_offset = float(body["offset"])
                return self._send(200, {"ok": True, "offset": st.clock_offset})
            if path == "/sandbox/reset":
                st.reset()
                return self._send(200, {"ok": True})
        except (KeyError, ValueError, TypeError) as err:
            return self._send(400, {"error": f"bad request: {err!r}"})
        self._send(404, {"error": "not found"})


class SandboxServer(ThreadingHTTPServer):
    """A threaded HTTP server holding the sandbox's state."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    state: SandboxState
