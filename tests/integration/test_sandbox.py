"""The sandbox models Tencent's battles, gift counters, limits and faults."""

from __future__ import annotations

import time

import httpx
import pytest

from scorer_local.sandbox_control import SandboxControl
from tests.conftest import SDKAPPID, SECRET
from worker.engine.settings import Settings
from worker.engine.tencent import TencentClient, TencentError


@pytest.fixture
def env(sandbox):
    ctl = SandboxControl(sandbox.url)
    client = TencentClient(Settings(_env_file=None, sdkappid=SDKAPPID, secret_key=SECRET,
                                    api_url=sandbox.url), max_attempts=1)
    yield ctl, client
    ctl.close()
    client.close()


def test_optypes_rooms_and_results(env):
    ctl, client = env
    bid = ctl.create_battle({"a": "oa", "b": "ob"}, 60_000, start=time.time() - 1)["BattleId"]
    ctl.create_battle({"c": "oc"}, 60_000)  # room c exists, but in another battle
    assert client.set_battle_score(bid, 1, {"a": 5, "b": 2}).codes() == {"a": 0, "b": 0}
    client.set_battle_score(bid, 1, {"a": 5})
    client.set_battle_score(bid, 2, {"b": 40})
    res = client.set_battle_score(bid, 1, {"c": 9, "nope": 1})
    assert res.codes() == {"c": 0, "nope": 1}  # not in the battle: ignored; unknown: 1
    assert ctl.scores(bid) == {"a": 10, "b": 40}
    info = client.get_battle_info(bid)
    assert [(r.RoomId, r.Score, r.Owner_Account) for r in info.rooms] == \
        [("a", 10, "oa"), ("b", 40, "ob")]
    assert info.Status == 2 and info.Duration == 60_000  # running (the referee's reading)


def test_not_started_and_ended_battles_answer_100006(env):
    ctl, client = env
    future = ctl.create_battle({"a": "oa"}, 60_000, start=time.time() + 100)["BattleId"]
    with pytest.raises(TencentError) as err:
        client.set_battle_score(future, 1, {"a": 1})
    assert err.value.code == 100006
    bid = ctl.create_battle({"b": "ob"}, 60_000, start=time.time() - 1)["BattleId"]
    ctl.end_battle(bid)
    with pytest.raises(TencentError) as err:
        client.set_battle_score(bid, 1, {"b": 1})
    assert err.value.code == 100006


def test_gift_counters_per_room_and_receiver(env):
    ctl, client = env
    ctl.count_gifts([{"RoomId": "a", "To_Account": ["oa"], "From_Account": "v1", "Coins": 10,
                      "Count": 2},
                     {"RoomId": "a", "To_Account": ["oa", "guest"], "From_Account": "v2",
                      "Coins": 5, "Count": 1}])
    c = client.get_gift_count("a", "oa")
    assert (c.TotalCoins, c.TotalCount, c.GiftSenderCount) == (15, 3, 2)
    assert client.get_gift_count("a", "guest").TotalCoins == 5
    assert client.get_gift_count("b", "oa").TotalCoins == 0


def test_query_string_is_checked(sandbox):
    url = f"{sandbox.url}/v4/live_engine_http_srv/get_gift_count"
    r = httpx.post(url, params={"sdkappid": SDKAPPID, "identifier": "administrator"},
                   json={"RoomId": "a", "From_Account": "b"})
    assert r.json()["ErrorCode"] == 100002
    assert httpx.post(f"{sandbox.url}/v4/nope/nothing", json={}).status_code == 404


def test_state_records_calls_and_max_rate(env, sandbox):
    ctl, client = env
    for _ in range(3):
        client.get_gift_count("a", "oa")
    st = ctl.state()
    assert st["calls_by_api"]["get_gift_count"] == 3
    assert st["max_calls_per_second"]["get_gift_count"] == 3
    ctl.fault_rates({"http502": 1.0}, seed=1)
    with pytest.raises(TencentError):
        client.get_gift_count("a", "oa")
    ctl.clear_faults()
    assert ctl.state()["faults_injected"]["http502"] == 1


def test_the_rate_limit_counts_arrivals_in_every_window_that_holds_them():
    """Tencent counts a call when it arrives: the sandbox, whose threads may get to calls late
    and out of order on a busy machine, checks each call's arrival against every sliding
    second that holds it, and a refused call takes no place in any."""
    from scorer_local.sandbox_model import SandboxState

    st = SandboxState(SDKAPPID, SECRET, rate=2)
    assert st.admit("a", 10.0) and st.admit("a", 10.5)
    assert not st.admit("a", 10.9)  # the third in (9.9, 10.9]
    assert st.admit("a", 11.0)  # 10.0 has left the second ending at 11.0
    # Read late: the second ending at 10.2 holds only 10.0, but those ending at 10.5 and 11.0
    # would hold three.
    assert not st.admit("a", 10.2)
    assert st.admit("a", 12.2)
    assert st.admit("a", 11.9)  # read late, and two at most in every second holding it
    assert st.admit("b", 10.9)  # each API has its own budget
    assert st.snapshot()["max_calls_per_second"] == {"a": 2, "b": 1}
    # Read more than a second late, behind a later arrival: what it shares a second with is
    # still kept, so it is refused.
    assert st.admit("c", 12.2) and st.admit("c", 12.4) and st.admit("c", 15.0)
    assert not st.admit("c", 12.5)
