"""One request as the receiver records it: headers read, the access log line, safe log text."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

log = logging.getLogger("scorer.receiver")

_CREDENTIALS = re.compile(r"//[^/@\s]*@")


@dataclass
class Exchange:
    """One request as the access log and metrics see it (never its query or body)."""

    method: str
    path: str
    route: str
    started: float
    deadline: float
    status: int = 0
    size: int = 0
    has_event_id: bool = False
    body_read: bool = False


def header(scope: dict, name: bytes) -> bytes | None:
    """The first value of a request header (names are lower case in ASGI)."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


def has_body(scope: dict) -> bool:
    """Whether a request we answer without reading carries a body (then we close)."""
    length = header(scope, b"content-length")
    return header(scope, b"transfer-encoding") is not None or length not in (None, b"0")


def safe_path(path: str) -> str:
    """The path for a log line: control characters escaped (no forged lines), 200 chars."""
    return path.encode("unicode_escape").decode("ascii")[:200]


def describe_error(exc: BaseException) -> str:
    """An exception for a log line, any user:password in a URL removed."""
    return _CREDENTIALS.sub("//****@", f"{type(exc).__name__}: {exc}")[:300]


def access_log(method: str, path: str, status: int, seconds: float, size: int,
               has_event_id: bool) -> None:
    """One line per request: method, path (never the query: it holds Sign), status,
    duration, body size, and whether an event id came with it (never the body)."""
    log.info("%s %s %d %.1fms body=%dB event_id=%s", method, safe_path(path), status,
             seconds * 1000, size, "yes" if has_event_id else "no",
             extra={"status": status, "source": "receiver"})
