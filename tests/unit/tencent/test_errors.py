"""worker.engine.tencent.errors: one table of outcomes for codes, statuses and transport errors."""

from __future__ import annotations

import httpx
import pytest

from worker.engine.tencent.errors import (
    BATTLE_NOT_RUNNING,
    INVALID_PARAMETER,
    RATE_LIMITED,
    SIG_EXPIRED,
    Outcome,
    RateLimitTimeout,
    TencentError,
    classify_code,
    classify_exception,
    classify_status,
)


@pytest.mark.parametrize("code,outcome", [
    (0, Outcome.success),
    (100001, Outcome.retryable),  # internal error: not processed
    (RATE_LIMITED, Outcome.retryable),
    (SIG_EXPIRED, Outcome.retryable),  # the client renews the sig once
    (70003, Outcome.refused), (70009, Outcome.refused), (70013, Outcome.refused),  # our config
    (INVALID_PARAMETER, Outcome.final),
    (BATTLE_NOT_RUNNING, Outcome.final),
    (12345, Outcome.final), (-1, Outcome.final),  # unknown codes: sending again cannot help
])
def test_error_codes(code: int, outcome: Outcome) -> None:
    assert classify_code(code) is outcome


@pytest.mark.parametrize("status,outcome", [
    (200, Outcome.success),
    (500, Outcome.retryable), (502, Outcome.retryable), (599, Outcome.retryable),
    (408, Outcome.retryable), (429, Outcome.retryable),  # a proxy refused: not processed
    (400, Outcome.refused), (401, Outcome.refused), (403, Outcome.refused),
    (404, Outcome.refused), (301, Outcome.refused), (600, Outcome.refused),
])
def test_http_statuses_are_never_final(status: int, outcome: Outcome) -> None:
    # A status other than 200 never reached Tencent's logic: dropping the value would lose it.
    assert classify_status(status) is outcome
    assert classify_status(status) is not Outcome.final


_REQ = httpx.Request("POST", "http://tencent.unit.invalid/")


@pytest.mark.parametrize("exc,outcome", [
    (httpx.ConnectError("refused", request=_REQ), Outcome.retryable),  # nothing was sent
    (httpx.ConnectTimeout("slow", request=_REQ), Outcome.retryable),
    (httpx.PoolTimeout("busy", request=_REQ), Outcome.retryable),
    (httpx.ReadTimeout("late", request=_REQ), Outcome.ambiguous),  # sent, maybe applied
    (httpx.WriteTimeout("late", request=_REQ), Outcome.ambiguous),
    (httpx.ReadError("reset", request=_REQ), Outcome.ambiguous),
    (httpx.WriteError("reset", request=_REQ), Outcome.ambiguous),
    (httpx.RemoteProtocolError("closed", request=_REQ), Outcome.ambiguous),
    (RuntimeError("anything else"), Outcome.ambiguous),  # unsure: never retried blindly
])
def test_transport_errors_say_whether_the_request_may_have_landed(exc: Exception,
                                                                  outcome: Outcome) -> None:
    assert classify_exception(exc) is outcome


def test_a_tencent_error_carries_what_callers_need_and_says_it() -> None:
    err = TencentError("set_battle_score", Outcome.final, "battle not running",
                       code=BATTLE_NOT_RUNNING, request_id="req-1", status=200)
    assert (err.api, err.outcome, err.code, err.request_id, err.status) == (
        "set_battle_score", Outcome.final, 100006, "req-1", 200)
    assert str(err) == ("set_battle_score: final: battle not running (ErrorCode 100006) "
                        "[RequestId req-1]")
    bare = TencentError("get_gift_count", Outcome.ambiguous, "ReadTimeout")
    assert str(bare) == "get_gift_count: ambiguous: ReadTimeout"
    assert bare.code is None and bare.request_id is None and bare.status is None


def test_the_limiters_timeout_is_a_retryable_tencent_error() -> None:
    err = RateLimitTimeout("get_battle_info", 2.5)
    assert isinstance(err, TencentError)
    assert err.outcome is Outcome.retryable and err.api == "get_battle_info"
    assert err.code is None and "no call slot within 2.5s" in str(err)


def test_outcomes_compare_equal_to_their_names() -> None:
    # Their values go to Redis (metrics fields) and back as plain strings.
    assert [o.value for o in Outcome] == ["success", "retryable", "ambiguous", "final",
                                          "refused"]
    assert Outcome.retryable == "retryable" and Outcome("final") is Outcome.final
