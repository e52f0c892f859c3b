"""Every Tencent call outcome classified in one place: success, retryable, ambiguous, final."""

from __future__ import annotations

from enum import Enum

import httpx


class Outcome(str, Enum):
    """What a caller may do after a Tencent call."""

    success = "success"
    retryable = "retryable"  # certainly not applied: safe to send again
    ambiguous = "ambiguous"  # may have been applied: only a path that cannot double-count
    final = "final"  # not applied and sending this request again will not help
    refused = "refused"  # not applied: our configuration (UserSig, key) or a proxy refused it;
    # the same request may succeed later (a key rotation, a proxy's limit), so it is retried,
    # slowly, until the battle ends, rather than dropped


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


class RateLimitTimeout(TencentError):
    """No call slot within what the caller was willing to wait: the request was never sent
    (retryable). Raised by the shared rate limiter, before any byte leaves."""

    def __init__(self, api: str, waited: float) -> None:
        super().__init__(api, Outcome.retryable, f"no call slot within {waited:.1f}s")


class Fenced(Exception):
    """A write stopped before its first byte left: the caller's fence (its lock's lease) said
    it could land after another process took the battle over. Never sent."""

    def __init__(self, api: str) -> None:
        super().__init__(f"{api}: stopped before it left: the lock's lease ran short")
        self.api = api


#: UserSig invalid, key mismatch, identifier mismatch: our configuration, mid key rotation
#: perhaps: refused, not final (tencent-api.md §5).
CONFIG_CODES = frozenset({70003, 70009, 70013})
#: HTTP statuses of a proxy that refused the request before it reached Tencent: Too Many
#: Requests, Request Timeout. Retryable like a 5xx.
PROXY_RETRY_STATUSES = frozenset({408, 429})


def classify_code(code: int) -> Outcome:
    """Outcome for a Tencent ErrorCode in an HTTP 200 answer."""
    if code == 0:
        return Outcome.success
    if code in RETRYABLE_CODES or code == SIG_EXPIRED:
        return Outcome.retryable
    if code in CONFIG_CODES:
        return Outcome.refused
    # 100002, 100006 and every code we do not know: sending the same request again cannot help.
    return Outcome.final


def classify_status(status: int) -> Outcome:
    """Outcome for an HTTP status other than 200: 5xx and a proxy's 408/429 were not processed
    (retryable); any other status (401, 403, 404 of a proxy or a misconfigured endpoint) was
    refused before Tencent: retried slowly, never final (it would drop the value for good)."""
    if status == 200:
        return Outcome.success
    if 500 <= status <= 599 or status in PROXY_RETRY_STATUSES:
        return Outcome.retryable
    return Outcome.refused


def classify_exception(exc: Exception) -> Outcome:
    """Outcome for a transport error: did the request possibly reach Tencent?"""
    # Nothing was sent: no connection, or no pooled connection free in time.
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return Outcome.retryable
    # Sent (maybe partly) and no answer: it may have been applied.
    if isinstance(exc, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)):
        return Outcome.ambiguous
    return Outcome.ambiguous
