"""A local fake of Tencent's battle and gift REST APIs, for tests, the demo and trying the worker.

It verifies what Tencent verifies (the query string and the UserSig, by running the
TLSSigAPIv2 algorithm in reverse), models battles and gift counters, enforces a per-API
calls-per-second limit, injects faults on request, and records every call and score change.
Control endpoints under `/sandbox/` drive it (no auth: bind it to loopback only).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import random
import signal
import socket
import threading
import time
import uuid
import zlib
from collections import defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

APIS = {"set_battle_score": "live_engine_http_pk", "get_battle_info": "live_engine_http_pk",
        "create_battle": "live_engine_http_pk", "get_gift_count": "live_engine_http_srv"}
FAULT_KINDS = ("http502", "error100001", "latency", "lost_response", "late_landing",
               "http429", "http408")
#: Faults that only writes suffer at random (a read has nothing to land late), and the writes.
WRITE_FAULTS = frozenset({"late_landing"})
WRITES = frozenset({"set_battle_score", "create_battle"})
#: A `late_landing` request is held this long, then applied, then answered: past the client's
#: 5 s read timeout, so the client has given up on a write that lands after all.
LATE_LANDING = 8.0


class Reject(Exception):
    """A Tencent error answer (HTTP 200, ActionStatus FAIL)."""

    def __init__(self, code: int, info: str) -> None:
        super().__init__(info)
        self.code, self.info = code, info


def verify_usersig(sig: str, key: str, sdkappid: int, identifier: str,
                   now: float | None = None) -> None:
    """Raise Reject unless `sig` is a valid, unexpired UserSig of `identifier` for our app."""
    try:
        raw = sig.replace("*", "+").replace("-", "/").replace("_", "=")
        doc = json.loads(zlib.decompress(base64.b64decode(raw)))
        sig_id, sig_app = str(doc["TLS.identifier"]), int(doc["TLS.sdkappid"])
        t, expire, mac = int(doc["TLS.time"]), int(doc["TLS.expire"]), str(doc["TLS.sig"])
    except Exception:
        raise Reject(70003, "usersig invalid: cannot decode") from None
    if sig_app != sdkappid:
        raise Reject(70003, "usersig invalid: sdkappid mismatch")
    content = (f"TLS.identifier:{sig_id}\nTLS.sdkappid:{sig_app}\n"
               f"TLS.time:{t}\nTLS.expire:{expire}\n")
    want = base64.b64encode(hmac.new(key.encode(), content.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(want.decode(), mac):
        raise Reject(70009, "usersig verification failed: key mismatch")
    if sig_id != identifier:
        raise Reject(70013, "usersig identifier mismatch")
    if t + expire < (now if now is not None else time.time()):
        raise Reject(70001, "usersig expired")


class SandboxState:
    """Battles, rooms, gift counters, faults and the call log, under one lock."""

    def __init__(self, sdkappid: int, secret_key: str, admin_id: str = "administrator",
                 rate: int = 200) -> None:
        self.sdkappid, self._key, self.admin_id, self.rate = sdkappid, secret_key, admin_id, rate
        self.lock = threading.Lock()
        #: Tencent's clock minus ours: battle times, 100006 and the Date header follow it.
        self.clock_offset = 0.0
        self.reset()

    def now(self) -> float:
        """Tencent's clock (ours + `clock_offset`)."""
        return time.time() + self.clock_offset

    def __repr__(self) -> str:
        return f"SandboxState(sdkappid={self.sdkappid})"

    def reset(self) -> None:
        """Forget everything."""
        with self.lock:
            self.rooms: dict[str, str] = {}
            self.battles: dict[str, dict] = {}
            self.counters: dict[tuple[str, str], dict] = {}
            self.calls: list[dict] = []
            self.history: list[dict] = []
            self.faults: deque = deque()
            self.rates: dict[str, float] = {}
            self.rate_latency = 0.3
            self.rate_apis: set[str] | None = None
            self.rng = random.Random()
            self.faults_injected: dict[str, int] = defaultdict(int)
            self.windows: dict[str, deque] = defaultdict(deque)  # accepted call times per API
            self.max_per_second: dict[str, int] = defaultdict(int)

    # -- control ---------------------------------------------------------------------------

    def create_room(self, room_id: str, owner: str) -> None:
        with self.lock:
            self.rooms[str(room_id)] = str(owner)

    def create_battle(self, rooms: list[dict], duration_ms: int, start: float | None = None,
                      battle_id: str | None = None) -> dict:
        """A battle of rooms [{RoomId, Owner_Account}] starting at `start` (Tencent's clock,
        default now)."""
        bid = battle_id or "battle_" + uuid.uuid4().hex[:12]
        start = self.now() if start is None else float(start)
        with self.lock:
            for r in rooms:
                self.rooms[str(r["RoomId"])] = str(r["Owner_Account"])
            ids = [str(r["RoomId"]) for r in rooms]
            self.battles[bid] = {"rooms": ids, "start": start, "duration_ms": int(duration_ms),
                                 "end": start + int(duration_ms) / 1000.0,
                                 "scores": {r: 0 for r in ids}}
            return {"BattleId": bid, "StartTime": start, "EndTime": self.battles[bid]["end"]}

    def end_battle(self, battle_id: str) -> dict:
        with self.lock:
            b = self.battles[battle_id]
            b["end"] = min(b["end"], self.now())
            return {"BattleId": battle_id, "EndTime": b["end"]}

    def count_gifts(self, gifts: list[dict]) -> int:
        """Tencent counts these gifts for each receiver in the room."""
        with self.lock:
            for g in gifts:
                for receiver in g.get("To_Account") or []:
                    c = self.counters.setdefault((str(g["RoomId"]), str(receiver)), {
                        "TotalCount": 0, "TotalCoins": 0, "Sequence": 0, "senders": set()})
                    c["TotalCoins"] += int(g.get("Coins", 0))
                    c["TotalCount"] += int(g.get("Count", 1))
                    c["Sequence"] += 1
                    c["senders"].add(str(g.get("From_Account", "")))
            return len(gifts)

    def inject(self, api: str | None, kind: str, count: int = 1, latency: float = 0.0) -> None:
        """Queue `count` faults of `kind` for the next calls of `api` (None: any API)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        with self.lock:
            for _ in range(count):
                self.faults.append((api, kind, latency))

    def set_fault_rates(self, rates: dict[str, float], latency: float = 0.3,
                        seed: int | None = None, apis: list[str] | None = None) -> None:
        """Inject faults at random: kind → probability per call."""
        for kind in rates:
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r}")
        with self.lock:
            self.rates, self.rate_latency = dict(rates), latency
            self.rng = random.Random(seed)
            self.rate_apis = set(apis) if apis else None

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()
            self.rates = {}

    def snapshot(self) -> dict:
        """Battles with their scores, faults injected, calls per API, max calls per second."""
        with self.lock:
            by_api: dict[str, int] = defaultdict(int)
            for c in self.calls:
                by_api[c["api"]] += 1
            return {
                "battles": {bid: {"rooms": b["rooms"], "scores": dict(b["scores"]),
                                  "start": b["start"], "end": b["end"],
                                  "owners": {r: self.rooms.get(r) for r in b["rooms"]}}
                            for bid, b in self.battles.items()},
                "faults_injected": dict(self.faults_injected),
                "calls_by_api": dict(by_api),
                "max_calls_per_second": dict(self.max_per_second),
                "clock_offset": self.clock_offset,
            }

    # -- the Tencent side ------------------------------------------------------------------

    def take_fault(self, api: str) -> tuple[str, float] | None:
        """The fault this call suffers, if any (queued first, then random)."""
        with self.lock:
            for i, (fapi, kind, latency) in enumerate(self.faults):
                if fapi in (None, api):
                    del self.faults[i]
                    self.faults_injected[kind] += 1
                    return kind, latency
            if self.rates and (self.rate_apis is None or api in self.rate_apis):
                x = self.rng.random()
                for kind, p in self.rates.items():
                    if x < p:
                        if kind in WRITE_FAULTS and api not in WRITES:
                            return None  # a read has nothing to land late
                        self.faults_injected[kind] += 1
                        return kind, self.rate_latency
                    x -= p
        return None

    def admit(self, api: str, now: float) -> bool:
        """Sliding 1-s window per API; refused calls (100012) do not count in it."""
        with self.lock:
            w = self.windows[api]
            while w and w[0] <= now - 1.0:
                w.popleft()
            if len(w) >= self.rate:
                return False
            w.append(now)
            self.max_per_second[api] = max(self.max_per_second[api], len(w))
            return True

    def check_query(self, query: dict[str, list[str]]) -> None:
        q = {k: v[0] for k, v in query.items()}
        for name in ("sdkappid", "identifier", "usersig", "random", "contenttype"):
            if not q.get(name):
                raise Reject(100002, f"missing query parameter {name}")
        if q["sdkappid"] != str(self.sdkappid):
            raise Reject(100002, "sdkappid does not match")
        try:
            rnd = int(q["random"])
        except ValueError:
            raise Reject(100002, "random must be an integer") from None
        if not 0 <= rnd < 2**32:
            raise Reject(100002, "random must be a 32-bit unsigned integer")
        if q["contenttype"] != "json":
            raise Reject(100002, "contenttype must be json")
        verify_usersig(q["usersig"], self._key, self.sdkappid, q["identifier"])
        if q["identifier"] != self.admin_id:
            raise Reject(70013, "identifier is not the app admin")

    def apply(self, api: str, body: dict) -> dict:
        """Run one API call on the model; returns the Response payload or raises Reject."""
        if not isinstance(body, dict):
            raise Reject(100002, "body must be a JSON object")
        with self.lock:
            return getattr(self, f"_api_{api}")(body)

    def _battle(self, body: dict) -> tuple[str, dict]:
        bid = body.get("BattleId")
        if not isinstance(bid, str) or bid not in self.battles:
            raise Reject(100002, "battle not found")
        return bid, self.battles[bid]

    def _api_set_battle_score(self, body: dict) -> dict:
        bid, b = self._battle(body)
        try:
            op = int(body.get("OpType"))
        except (TypeError, ValueError):
            raise Reject(100002, "OpType must be 1 or 2") from None
        items = body.get("ScoreList")
        if op not in (1, 2) or not isinstance(items, list) or not items:
            raise Reject(100002, "OpType must be 1 or 2 and ScoreList a non-empty list")
        for it in items:
            if (not isinstance(it, dict) or not isinstance(it.get("Score"), int)
                    or it["Score"] < 0 or "RoomId" not in it):
                raise Reject(100002, "ScoreList items need RoomId and a non-negative Score")
        now, tnow = time.time(), self.now()
        if tnow < b["start"] or tnow >= b["end"]:
            raise Reject(100006, "battle has not started or has already ended")
        result = []
        for it in items:
            room = str(it["RoomId"])
            if room not in self.rooms:
                result.append({"RoomId": room, "ResultCode": 1})
                continue
            if room in b["scores"]:
                b["scores"][room] = (b["scores"][room] + it["Score"]) if op == 1 else it["Score"]
                self.history.append({"t": now, "battle": bid, "room": room, "op": op,
                                     "value": it["Score"], "score_after": b["scores"][room]})
            result.append({"RoomId": room, "ResultCode": 0})
        return {"Result": result}

    def _api_get_battle_info(self, body: dict) -> dict:
        bid, b = self._battle(body)
        now = self.now()
        rooms = [{"RoomId": r, "Score": b["scores"][r], "Owner_Account": self.rooms.get(r)}
                 for r in b["rooms"]]
        return {"BattleId": bid, "Duration": b["duration_ms"], "StartTime": int(b["start"]),
                "EndTime": int(b["end"]),
                "Status": 0 if now < b["start"] else 1 if now < b["end"] else 2,
                "FromRoomInfo": rooms[0], "ToRoomList": rooms[1:]}

    def _api_create_battle(self, body: dict) -> dict:
        ids = [body.get("FromRoomId"), *(body.get("ToRoomIdList") or [])]
        known = [r for r in ids if r in self.rooms]
        bid = "battle_" + uuid.uuid4().hex[:12]
        now = self.now()
        self.battles[bid] = {"rooms": known, "start": now,
                             "duration_ms": int(body.get("Duration") or 0),
                             "end": now + int(body.get("Duration") or 0) / 1000.0,
                             "scores": {r: 0 for r in known}}
        return {"BattleId": bid, "Result": [
            {"RoomId": r, "ResultCode": 0 if r in self.rooms else 1,
             "ResultMessage": "" if r in self.rooms else "room does not exist"} for r in ids]}

    def _api_get_gift_count(self, body: dict) -> dict:
        room, user = body.get("RoomId"), body.get("From_Account")
        if not isinstance(room, str) or not isinstance(user, str):
            raise Reject(100002, "RoomId and From_Account are required strings")
        c = self.counters.get((room, user))
        if c is None:
            return {"Sequence": 0, "TotalCount": 0, "TotalCoins": 0, "GiftSenderCount": 0}
        return {"Sequence": c["Sequence"], "TotalCount": c["TotalCount"],
                "TotalCoins": c["TotalCoins"], "GiftSenderCount": len(c["senders"])}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without NODELAY, Nagle and the client's
        # delayed ACK add ~40 ms to every keep-alive answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

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

    def do_GET(self) -> None:  # noqa: N802
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

    def do_POST(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        try:
            body = self._body()
        except (ValueError, UnicodeDecodeError):
            body = ValueError
        if url.path.startswith("/sandbox/"):
            return self._control(url.path, body)
        parts = url.path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "v4" or APIS.get(parts[2]) != parts[1]:
            return self._send(404, {"error": "not found"})
        self._tencent(parts[2], parse_qs(url.query), body)

    def _tencent(self, api: str, query: dict, body: Any) -> None:
        st = self.server.state
        request_id = uuid.uuid4().hex
        record = {"t": time.time(), "api": api, "body": body if isinstance(body, dict) else None,
                  "error_code": None, "fault": None, "random": (query.get("random") or [None])[0]}
        answer: dict[str, Any] = {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": "",
                                  "RequestId": request_id}
        lost = False
        try:
            if body is ValueError:
                raise Reject(100002, "body is not valid JSON")
            st.check_query(query)
            if not st.admit(api, time.time()):
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
                    time.sleep(latency if latency > 1 else LATE_LANDING)  # (0.3: the rates' default)
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
                gifts = body["gifts"] if "gifts" in body else [body]
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    state: SandboxState


class Sandbox:
    """The sandbox server: `Sandbox(app, key).start()` serves on 127.0.0.1 in a thread."""

    def __init__(self, sdkappid: int, secret_key: str, admin_id: str = "administrator",
                 rate: int = 200, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = SandboxState(sdkappid, secret_key, admin_id, rate)
        self.server = _Server((host, port), _Handler)
        self.server.state = self.state
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Sandbox(url={self.url!r})"

    def start(self) -> "Sandbox":
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
