"""The receiver's pure checks: Tencent's Sign, the URL parameters, event ids, lengths, bodies."""

from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import parse_qs

#: Largest callback body accepted (Tencent's gift and battle callbacks are a few KiB).
MAX_BODY = 64 * 1024
#: How far RequestTime may be from our clock, in seconds (Tencent's own rule).
MAX_AGE = 60
#: Longest event id accepted (the app's ledger id).
MAX_EVENT_ID = 128
#: Tencent's "accepted" answer.
OK = {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}

#: The metric label of a rejection, by HTTP status, when the raiser gives none.
_DEFAULT_LABELS = {400: "bad_request", 401: "signature", 403: "sdkappid", 405: "method",
                   408: "timeout", 413: "too_large", 503: "unavailable"}


def expected_sign(token: str, request_time: str) -> str:
    """Tencent's callback signature: hex(sha256(Token + RequestTime))."""
    return hashlib.sha256((token + request_time).encode()).hexdigest()


class Rejected(Exception):
    """A request we refuse: HTTP status and a short reason (never echoing a secret).

    `label` names the reason in metrics (a short fixed word, never request data)."""

    def __init__(self, status: int, reason: str, label: str | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason
        self.label = label or _DEFAULT_LABELS.get(status, "other")


def fail(reason: str) -> dict:
    """Tencent's rejection answer with a short reason."""
    return {"ActionStatus": "FAIL", "ErrorCode": 1, "ErrorInfo": reason}


def check(query: dict[str, str], sdkappid: int, token: str | None, now: float) -> str | None:
    """Validate the URL parameters; returns the CallbackCommand from the URL (if any)."""
    app = query.get("SdkAppid") or query.get("SdkAppId")
    if app != str(sdkappid):
        raise Rejected(403, "SdkAppid is not ours")
    if token:
        sign, rtime = query.get("Sign", ""), query.get("RequestTime", "")
        # ASCII only: '²'.isdigit() is true but int() refuses it, and compare_digest raises
        # on a non-ASCII str; either would be a 500 with a traceback, not a 401.
        if not sign or not sign.isascii() or not (rtime.isascii() and rtime.isdigit()):
            raise Rejected(401, "missing or malformed Sign or RequestTime")
        if abs(now - int(rtime)) > MAX_AGE:
            raise Rejected(401, "RequestTime is more than 60 s from now")
        if not hmac.compare_digest(expected_sign(token, rtime), sign.lower()):
            raise Rejected(401, "bad Sign")
    return query.get("CallbackCommand") or query.get("WebhookCommand")


def parse_query(raw: bytes) -> dict[str, str]:
    """The URL's query string as {name: first value} (percent-decoded)."""
    text = raw.decode("latin-1")
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True, errors="replace").items()}


def valid_event_id(value: str) -> bool:
    """An event id is 1 to 128 printable characters (no control characters, no newline)."""
    return 1 <= len(value) <= MAX_EVENT_ID and value.isprintable()


def event_id_of(header: bytes | None, query: dict[str, str]) -> str | None:
    """The app's ledger id from `X-Event-Id` or `?EventId=`; None if neither is given.

    Both given and different is refused: one of them would be silently ignored."""
    from_query = query.get("EventId")
    from_header = None
    if header is not None:
        try:
            from_header = header.decode("utf-8")
        except UnicodeDecodeError:
            raise Rejected(400, "X-Event-Id is not UTF-8", "bad_event_id") from None
    for value in (from_header, from_query):
        if value is not None and not valid_event_id(value):
            raise Rejected(400, "event id must be 1-128 printable characters", "bad_event_id")
    if from_header is not None and from_query is not None and from_header != from_query:
        raise Rejected(400, "X-Event-Id and EventId differ", "bad_event_id")
    return from_header if from_header is not None else from_query


def declared_length(header: bytes | None) -> int | None:
    """The Content-Length header as a number; 400 if negative or not a number, 413 if over
    MAX_BODY. (uvicorn's HTTP parser already refuses most bad lengths; this is the backstop.)"""
    if header is None:
        return None
    text = header.decode("latin-1").strip()
    if not text.isdigit():  # "-1", "abc", "1e3", "" are all refused
        raise Rejected(400, "bad Content-Length", "bad_length")
    length = int(text)
    if length > MAX_BODY:
        raise Rejected(413, "body too large")
    return length


def parse_body(raw: bytes, command: str | None) -> dict:
    """The body as a JSON object, with the URL's CallbackCommand when the body lacks one."""
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Rejected(400, "body is not JSON", "not_json") from None
    if not isinstance(body, dict):
        raise Rejected(400, "body must be a JSON object", "not_object")
    if command and "CallbackCommand" not in body:
        body["CallbackCommand"] = command
    return body
