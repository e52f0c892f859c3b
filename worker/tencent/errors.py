"""The one place that classifies every Tencent call outcome: success, retryable, ambiguous, final."""

from __future__ import annotations

from enum import Enum

import httpx


class Outcome(str, Enum):
    """What a caller may do after a Tencent call."""

    success = "success"
    retryable = "retryable"  # certainly not applied: safe to send again
    ambiguous = "ambiguous"  # may have been applied: only a path that cannot double-count
    final = "final"  # not applied and sending again will not help


#: ErrorCodes that mean "not processed, try again" (100012 also means our limiter failed).
RETRYABLE_CODES = frozenset({100001, 100012})
#: UserSig expired: retried once with a freshly generated sig (the client does this).
SIG_EXPIRED = 70001
#: set_battle_score on a battle that has not started or has already ended.
BATTLE_NOT_RUNNING = 100006
INVALID_PARAMETER = 100002
RATE_LIMITED = 100012


class TencentError(Exception):
    """A Tencent call that did not succeed; `outcome` says what may be done next."""

    def __init__(self, api: str, outcome: Outcome, message: str, *, code: int | None = None,
                 request_id: str | None = None, status: int | None = None) -> None:
        self.api = api
        self.outcome = outcome
        self.code = code
        self.request_id = request_id
        self.status = status
        detail = f"{api}: {outcome.value}: {message}"
        if code is not None:
            detail += f" (ErrorCode {code})"
        if request_id:
            detail += f" [RequestId {request_id}]"
        super().__init__(detail)


def classify_code(code: int) -> Outcome:
    """Outcome for a Tencent ErrorCode in an HTTP 200 answer."""
    if code == 0:
        return Outcome.success
    if code in RETRYABLE_CODES or code == SIG_EXPIRED:
        return Outcome.retryable
    # 100002, 100006, other 7xxxx (sig invalid, key or identifier mismatch) and every code
    # we do not know: sending the same request again cannot help.
    return Outcome.final


def classify_status(status: int) -> Outcome:
    """Outcome for an HTTP status: 5xx was not processed; anything else but 200 is final."""
    if status == 200:
        return Outcome.success
    if 500 <= status <= 599:
        return Outcome.retryable
    return Outcome.final


def classify_exception(exc: Exception) -> Outcome:
    """Outcome for a transport error: did the request possibly reach Tencent?"""
    # Nothing was sent: no connection, or no pooled connection free in time.
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return Outcome.retryable
    # Sent (maybe partly) and no answer: it may have been applied.
    if isinstance(exc, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)):
        return Outcome.ambiguous
    return Outcome.ambiguous
