"""worker.engine.tencent.client: signing, retries, UserSig renewal, outcomes (sandbox, respx)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
import respx
import TLSSigAPIv2

from scorer_local.sandbox import Reject, verify_usersig
from scorer_local.sandbox_control import SandboxControl
from tests.conftest import SDKAPPID, SECRET
from tests.unit.conftest import API
from worker.engine.settings import Settings
from worker.engine.tencent import Outcome, TencentClient, TencentError
from worker.engine.tencent.client import ADMITTED, SERVICES
from worker.engine.tencent.errors import (
    RateLimitTimeout,
    classify_code,
    classify_exception,
    classify_status,
)
from worker.engine.tencent.usersig import UserSigCache


@pytest.fixture
def client(sandbox):
    s = Settings(_env_file=None, sdkappid=SDKAPPID, secret_key=SECRET, api_url=sandbox.url)
    c = TencentClient(s, backoff=0.01, timeout=httpx.Timeout(2.0))
    yield c
    c.close()


@pytest.fixture
def battle(sandbox):
    ctl = SandboxControl(sandbox.url)
    info = ctl.create_battle({"r1": "o1", "r2": "o2"}, 60_000, start=time.time() - 1)
    yield info["BattleId"], ctl
    ctl.close()


def test_signed_request_is_verified_by_the_sandbox(client, sandbox, battle):
    bid, ctl = battle
    res = client.set_battle_score(bid, 1, {"r1": 5})
    assert res.codes() == {"r1": 0} and res.RequestId
    call = sandbox.state.calls[-1]
    assert call["error_code"] is None and 0 <= int(call["random"]) < 2**32
    assert ctl.scores(bid)["r1"] == 5


def test_random_is_fresh_per_request(client, sandbox, battle):
    bid, _ = battle
    for _ in range(5):
        client.get_battle_info(bid)
    randoms = {c["random"] for c in sandbox.state.calls}
    assert len(randoms) == 5


def test_wrong_key_and_expired_sig_are_refused(sandbox):
    good = TLSSigAPIv2.TLSSigAPIv2(SDKAPPID, SECRET).gen_sig("administrator")
    verify_usersig(good, SECRET, SDKAPPID, "administrator")
    wrong = TLSSigAPIv2.TLSSigAPIv2(SDKAPPID, "another-key").gen_sig("administrator")
    with pytest.raises(Reject) as err:
        verify_usersig(wrong, SECRET, SDKAPPID, "administrator")
    assert err.value.code == 70009
    expired = TLSSigAPIv2.TLSSigAPIv2(SDKAPPID, SECRET).gen_sig("administrator", expire=10)
    with pytest.raises(Reject) as err:
        verify_usersig(expired, SECRET, SDKAPPID, "administrator", now=time.time() + 60)
    assert err.value.code == 70001
    with pytest.raises(Reject) as err:
        verify_usersig(good, SECRET, SDKAPPID, "someone-else")
    assert err.value.code == 70013
    # And over HTTP: a client with the wrong key gets a final error.
    bad = TencentClient(Settings(_env_file=None, sdkappid=SDKAPPID, secret_key="nope",
                                 api_url=sandbox.url))
    with pytest.raises(TencentError) as terr:
        bad.get_gift_count("r1", "o1")
    assert terr.value.code == 70009 and terr.value.outcome is Outcome.refused
    assert "nope" not in str(terr.value) and "nope" not in repr(bad)


def test_usersig_is_cached_and_renewed_before_expiry():
    now = [1000.0]
    cache = UserSigCache(SDKAPPID, SECRET, "administrator", lifetime=100, clock=lambda: now[0])
    first = cache.get()
    now[0] += 50
    assert cache.get() == first and cache.generated == 1  # cached, not one per request
    now[0] += 30  # less than a quarter of its life left: renewed
    cache.get()
    assert cache.generated == 2
    assert SECRET not in repr(cache)


def test_expired_sig_answer_is_retried_once_with_a_new_sig(client, sandbox, battle):
    bid, _ = battle
    client.sigs.get()
    made = client.sigs.generated
    client.sigs._sig = TLSSigAPIv2.TLSSigAPIv2(SDKAPPID, SECRET).gen_sig("administrator",
                                                                         expire=-100)
    client.sigs._expires_at = time.time() + 10**6  # the cache believes it is fresh
    info = client.get_battle_info(bid)
    assert info.BattleId == bid
    codes = [c["error_code"] for c in sandbox.state.calls]
    assert codes == [70001, None]
    assert client.sigs.generated == made + 1  # one fresh sig, then the call went through


@pytest.mark.parametrize("kind,outcome", [("http502", Outcome.retryable),
                                          ("error100001", Outcome.retryable),
                                          ("lost_response", Outcome.ambiguous)])
def test_fault_outcomes(client, sandbox, battle, kind, outcome):
    bid, ctl = battle
    ctl.inject(kind, api="set_battle_score", count=10)
    with pytest.raises(TencentError) as err:
        client.set_battle_score(bid, 1, {"r1": 1}, max_attempts=2)
    assert err.value.outcome is outcome
    applied = ctl.scores(bid)["r1"]
    assert applied == (1 if kind == "lost_response" else 0)  # ambiguous: it WAS applied


def test_retryable_fault_then_success(client, battle):
    bid, ctl = battle
    ctl.inject("http502", api="set_battle_score")
    ctl.inject("error100001", api="set_battle_score")
    client.set_battle_score(bid, 1, {"r1": 3})
    assert ctl.scores(bid)["r1"] == 3


def test_latency_beyond_timeout_is_ambiguous(client, battle):
    bid, ctl = battle
    ctl.inject("latency", api="set_battle_score", latency=3.0)
    with pytest.raises(TencentError) as err:
        client.set_battle_score(bid, 1, {"r1": 4})
    assert err.value.outcome is Outcome.ambiguous


def test_final_codes(client, sandbox, battle):
    bid, ctl = battle
    with pytest.raises(TencentError) as err:
        client.set_battle_score("no-such-battle", 1, {"r1": 1})
    assert err.value.code == 100002 and err.value.outcome is Outcome.final
    assert err.value.request_id and err.value.request_id in str(err.value)
    ctl.end_battle(bid)
    with pytest.raises(TencentError) as err:
        client.set_battle_score(bid, 1, {"r1": 1})
    assert err.value.code == 100006 and err.value.outcome is Outcome.final


def test_connection_refused_is_retryable():
    s = Settings(_env_file=None, sdkappid=SDKAPPID, secret_key=SECRET,
                 api_url="http://127.0.0.1:9")
    c = TencentClient(s, backoff=0.01, max_attempts=2)
    with pytest.raises(TencentError) as err:
        c.get_gift_count("r", "o")
    assert err.value.outcome is Outcome.retryable


def test_classifier_table():
    assert classify_code(0) is Outcome.success
    for code in (100001, 100012, 70001):
        assert classify_code(code) is Outcome.retryable
    for code in (100002, 100006, 12345):
        assert classify_code(code) is Outcome.final
    for code in (70003, 70009, 70013):  # configuration: retried slowly, never dropped
        assert classify_code(code) is Outcome.refused
    assert classify_status(502) is Outcome.retryable and classify_status(404) is Outcome.refused
    assert classify_status(429) is Outcome.retryable and classify_status(408) is Outcome.retryable
    assert classify_exception(httpx.ConnectError("x")) is Outcome.retryable
    assert classify_exception(httpx.ReadTimeout("x")) is Outcome.ambiguous
    assert classify_exception(httpx.RemoteProtocolError("x")) is Outcome.ambiguous


def test_region_urls(sandbox):
    s = Settings(_env_file=None, sdkappid=SDKAPPID, secret_key=SECRET, region="jakarta")
    c = TencentClient(s)
    assert c.url("get_gift_count") == \
        "https://adminapiidn.im.qcloud.com/v4/live_engine_http_srv/get_gift_count"
    assert c.url("set_battle_score").endswith("/v4/live_engine_http_pk/set_battle_score")


def test_rate_limit_of_the_sandbox_answers_100012(sandbox, client, battle):
    bid, _ = battle
    sandbox.state.rate = 3
    for _ in range(3):
        client.get_battle_info(bid)
    with pytest.raises(TencentError) as err:
        client.call("get_battle_info", {"BattleId": bid}, max_attempts=1)
    assert err.value.code == 100012 and err.value.outcome is Outcome.retryable


# -- Without the sandbox: respx answers at tests.unit.conftest.API, sleeps are recorded -----

SCORE = f"/v4/{SERVICES['set_battle_score']}/set_battle_score"
INFO = f"/v4/{SERVICES['get_battle_info']}/get_battle_info"
GIFTS = f"/v4/{SERVICES['get_gift_count']}/get_gift_count"


def _ok(response: dict | None = None, **top: object) -> httpx.Response:
    """A Tencent answer: ErrorCode 0 (or as given), a RequestId, a Date header."""
    body = {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": "", "RequestId": "req-1",
            "Response": response or {}, **top}
    return httpx.Response(200, json=body, headers={"Date": "Fri, 15 Jan 2027 08:00:00 GMT"})


class RecordingLimiter:
    """A limiter that admits at once and records what it was asked."""

    window_ms = 1000

    def __init__(self, fail: Exception | None = None) -> None:
        self.asked: list[tuple[str, float | None, str]] = []
        self.fail = fail

    def acquire(self, api: str, max_wait: float | None = None, lane: str = "high") -> float:
        self.asked.append((api, max_wait, lane))
        if self.fail is not None:
            raise self.fail
        return 0.0

    def try_acquire(self, api: str, lane: str = "high") -> float:
        return 0.0

    def leave(self, api: str) -> float:
        self.asked.append((api, None, "leave"))
        return 0.0

    def high_in_window(self, api: str) -> int:
        return 0

    def set_reserve(self, api: str, calls: int) -> None:
        pass


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=API, assert_all_called=False) as router:
        yield router


@pytest.fixture
def unit_client(unit_settings: Settings, sleeps: list[float]) -> Iterator[TencentClient]:
    c = TencentClient(unit_settings, RecordingLimiter(), backoff=0.2, sleep=sleeps.append)
    yield c
    c.close()


def test_a_call_is_signed_and_sends_its_typed_body(mock: respx.MockRouter,
                                                   unit_client: TencentClient) -> None:
    route = mock.post(SCORE).mock(return_value=_ok({"Result": [
        {"RoomId": "r1", "ResultCode": 0}, {"RoomId": "r2", "ResultCode": 1}]}))
    res = unit_client.set_battle_score("b1", 1, {"r1": 5, "r2": 7})
    assert res.split(["r1", "r2"]) == (["r1"], ["r2"]) and res.RequestId == "req-1"
    request = route.calls.last.request
    q = request.url.params
    assert q["sdkappid"] == "1400000001" and q["identifier"] == "administrator"
    assert q["contenttype"] == "json" and 0 <= int(q["random"]) < 2**32 and q["usersig"]
    assert json.loads(request.content) == {"BattleId": "b1", "OpType": 1, "ScoreList": [
        {"RoomId": "r1", "Score": 5}, {"RoomId": "r2", "Score": 7}]}
    assert "unit-test-key" not in str(request.url) and "unit-test-key" not in repr(unit_client)


def test_retryable_answers_back_off_exponentially_with_jitter(
        mock: respx.MockRouter, unit_client: TencentClient, sleeps: list[float]) -> None:
    mock.post(INFO).mock(side_effect=[httpx.Response(502), _ok(ErrorCode=100001),
                                      _ok({"BattleId": "b1", "Duration": 60_000})])
    assert unit_client.get_battle_info("b1").Duration == 60_000
    assert len(sleeps) == 2
    assert 0.1 <= sleeps[0] <= 0.3 and 0.2 <= sleeps[1] <= 0.6  # 0.2 x 2^n x [0.5, 1.5)


def test_retryable_answers_give_up_after_max_attempts(
        mock: respx.MockRouter, unit_client: TencentClient, sleeps: list[float]) -> None:
    route = mock.post(INFO).mock(return_value=httpx.Response(503))
    with pytest.raises(TencentError) as err:
        unit_client.get_battle_info("b1", max_attempts=3)
    assert err.value.outcome is Outcome.retryable and err.value.status == 503
    assert route.call_count == 3 and len(sleeps) == 2


@pytest.mark.parametrize("answer,outcome", [
    (httpx.ReadTimeout, Outcome.ambiguous),  # it may have been applied: never sent again
    (httpx.Response(200, text="<html>busy</html>"), Outcome.ambiguous),
    (_ok(ErrorCode=100006, ErrorInfo="battle not running"), Outcome.final),
    (httpx.Response(404), Outcome.refused),
    (_ok(ErrorCode=70009), Outcome.refused),
])
def test_outcomes_other_than_retryable_raise_at_once(
        mock: respx.MockRouter, unit_client: TencentClient, sleeps: list[float],
        answer: object, outcome: Outcome) -> None:
    route = mock.post(SCORE).mock(side_effect=[answer])
    with pytest.raises(TencentError) as err:
        unit_client.set_battle_score("b1", 1, {"r1": 1})
    assert err.value.outcome is outcome and err.value.api == "set_battle_score"
    assert route.call_count == 1 and sleeps == []


def test_a_final_error_names_its_code_and_request(mock: respx.MockRouter,
                                                  unit_client: TencentClient) -> None:
    mock.post(SCORE).mock(return_value=_ok(ErrorCode=100002, ErrorInfo="x" * 500,
                                           RequestId="req-9"))
    with pytest.raises(TencentError) as err:
        unit_client.set_battle_score("b1", 1, {"r1": 1})
    assert (err.value.code, err.value.request_id) == (100002, "req-9")
    assert "req-9" in str(err.value) and "x" * 201 not in str(err.value)  # info cut at 200


def test_an_answer_that_breaks_the_model_is_ambiguous_not_a_validation_error(
        mock: respx.MockRouter, unit_client: TencentClient) -> None:
    mock.post(INFO).mock(return_value=_ok({"Duration": 1}))  # no BattleId
    with pytest.raises(TencentError) as err:
        unit_client.get_battle_info("b1")
    assert err.value.outcome is Outcome.ambiguous and "malformed answer" in str(err.value)
    mock.post(GIFTS).mock(return_value=_ok({"TotalCoins": "lots"}))
    with pytest.raises(TencentError):
        unit_client.get_gift_count("r1", "o1")


def test_an_expired_sig_is_renewed_once_then_refused(mock: respx.MockRouter,
                                                     unit_client: TencentClient,
                                                     sleeps: list[float]) -> None:
    route = mock.post(INFO).mock(return_value=_ok(ErrorCode=70001))
    unit_client.sigs.get()
    with pytest.raises(TencentError) as err:
        unit_client.get_battle_info("b1")
    assert err.value.outcome is Outcome.refused and "after renewal" in str(err.value)
    assert route.call_count == 2 and sleeps == []
    assert unit_client.sigs.generated == 2  # a fresh sig for the second attempt, no third


def test_the_limiters_timeout_is_raised_before_anything_is_sent(
        mock: respx.MockRouter, unit_settings: Settings, sleeps: list[float]) -> None:
    route = mock.post(SCORE).mock(return_value=_ok())
    limiter = RecordingLimiter(fail=RateLimitTimeout("set_battle_score", 0.5))
    c = TencentClient(unit_settings, limiter, sleep=sleeps.append)
    with pytest.raises(RateLimitTimeout):
        c.set_battle_score("b1", 1, {"r1": 1}, max_wait=0.5, lane="low")
    assert limiter.asked == [("set_battle_score", 0.5, "low")]  # asked once, not retried
    assert route.call_count == 0 and sleeps == []


def test_an_admitted_call_waits_for_no_slot_first_and_none_after(
        mock: respx.MockRouter, unit_client: TencentClient) -> None:
    mock.post(SCORE).mock(side_effect=[httpx.Response(502), _ok()])
    unit_client.set_battle_score("b1", 1, {"r1": 1}, max_wait=ADMITTED)
    limiter = unit_client.limiter
    assert isinstance(limiter, RecordingLimiter)
    # The retry: a slot now or never. (The send log is asked by httpcore's trace hook as the
    # headers go out to a socket, which respx has none of: tests/integration/test_ratelimit.py.)
    assert limiter.asked == [("set_battle_score", 0.0, "high")]
    assert all("trace" in call.request.extensions for call in mock.calls)


def test_hooks_see_each_attempt_and_a_failing_clock_hook_fails_nothing(
        mock: respx.MockRouter, unit_client: TencentClient) -> None:
    mock.post(SCORE).mock(side_effect=[httpx.Response(500), _ok()])
    calls: list[tuple[str, str]] = []
    sent: list[bool] = []
    unit_client.on_call = lambda api, outcome, seconds, waited: calls.append((api, outcome))

    def bad_clock(date: str, sent_at: float, received: float) -> None:
        raise ValueError(date)

    unit_client.on_answer = bad_clock
    unit_client.set_battle_score("b1", 1, {"r1": 1}, on_send=lambda: sent.append(True))
    assert calls == [("set_battle_score", "retryable"), ("set_battle_score", "success")]
    assert sent == [True, True]


def test_a_read_timeout_applies_to_that_call_only(mock: respx.MockRouter,
                                                  unit_client: TencentClient) -> None:
    route = mock.post(INFO).mock(return_value=_ok({"BattleId": "b1"}))
    unit_client.get_battle_info("b1", read_timeout=0.75)
    unit_client.get_battle_info("b1")
    first, second = (c.request.extensions["timeout"] for c in route.calls)
    assert first["read"] == 0.75 and first["connect"] == 2.0
    assert second["read"] == 5.0


def test_urls_follow_the_region_unless_an_api_url_is_set(unit_settings: Settings) -> None:
    c = TencentClient(unit_settings)
    assert c.url("get_gift_count") == f"{API}/v4/live_engine_http_srv/get_gift_count"
    china = Settings(_env_file=None, sdkappid=1, secret_key="k")
    assert TencentClient(china).url("set_battle_score") == \
        "https://console.tim.qq.com/v4/live_engine_http_pk/set_battle_score"


def test_threads_that_first_call_together_share_one_http_client(monkeypatch):
    """The end game's 16 threads, idle until the first battles end, made 16 clients (and TLS
    contexts) at once: 2 s of CPU at the buzzer. One is made; the others wait for it."""
    import threading

    made: list[int] = []
    real = httpx.Client

    def slow_client(*args, **kwargs):
        made.append(1)
        time.sleep(0.05)  # a TLS context under a contended GIL
        return real(*args, **kwargs)

    monkeypatch.setattr(httpx, "Client", slow_client)
    client = TencentClient(Settings(_env_file=None, sdkappid=SDKAPPID, secret_key=SECRET,
                                    api_url=API))
    go = threading.Barrier(16)
    seen: list[httpx.Client] = []

    def first_call() -> None:
        go.wait()
        seen.append(client.http)

    threads = [threading.Thread(target=first_call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and len({id(c) for c in seen}) == 1
    client.close()
