"""The Tencent client against the sandbox: signing, UserSig renewal, every outcome class."""

from __future__ import annotations

import time

import httpx
import pytest
import TLSSigAPIv2

from scorer_local.sandbox import Reject, verify_usersig
from scorer_local.sandbox_control import SandboxControl
from tests.conftest import SDKAPPID, SECRET
from worker.engine.settings import Settings
from worker.engine.tencent import Outcome, TencentClient, TencentError
from worker.engine.tencent.errors import classify_code, classify_exception, classify_status
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
