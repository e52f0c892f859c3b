"""Helpers of the engine's unit tests: Tencent's answers (respx), battles and value (fakeredis)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import respx

from tests.unit.conftest import API, T0
from worker.engine.battles import registry
from worker.engine.battles.records import Battle
from worker.engine.runtime import Runtime
from worker.engine.state import keys
from worker.engine.state.keys import BattleKeys

SET_SCORE = f"{API}/v4/live_engine_http_pk/set_battle_score"
BATTLE_INFO = f"{API}/v4/live_engine_http_pk/get_battle_info"
GIFT_COUNT = f"{API}/v4/live_engine_http_srv/get_gift_count"

#: The rooms (RoomId → owner) of the battles the tests register.
ROOMS = {"r1": "o1", "r2": "o2"}


def answer(response: dict[str, Any] | None = None, code: int = 0) -> httpx.Response:
    """Tencent's HTTP 200 answer: ErrorCode `code`, and `response` as its Response."""
    body: dict[str, Any] = {"ActionStatus": "OK" if code == 0 else "FAIL", "ErrorCode": code,
                            "ErrorInfo": "", "RequestId": f"req-{code}"}
    if response is not None:
        body["Response"] = response
    return httpx.Response(200, json=body)


def scored(codes: dict[str, int] | None = None) -> httpx.Response:
    """set_battle_score's answer: ResultCode per room (none listed: every room set)."""
    return answer({"Result": [{"RoomId": r, "ResultCode": c} for r, c in (codes or {}).items()]})


def info(battle_id: str, scores: dict[str, int], *, start: float = 0, end: float = 0,
         status: int | None = 1, owners: dict[str, str] | None = None,
         duration_ms: int = 0) -> httpx.Response:
    """get_battle_info's answer: the battle's rooms (the first is the From room) and scores."""
    rooms = [{"RoomId": r, "Score": s, "Owner_Account": (owners or {}).get(r)}
             for r, s in scores.items()]
    response: dict[str, Any] = {"BattleId": battle_id, "StartTime": int(start),
                                "EndTime": int(end), "Duration": duration_ms, "Status": status,
                                "FromRoomInfo": rooms[0] if rooms else None,
                                "ToRoomList": rooms[1:]}
    return answer(response)


def sent(route: respx.Route) -> list[dict[str, Any]]:
    """The JSON bodies of every request `route` answered, in order."""
    return [json.loads(call.request.content) for call in route.calls]


def scores_of(body: dict[str, Any]) -> dict[str, int]:
    """RoomId → Score of a set_battle_score body."""
    return {item["RoomId"]: item["Score"] for item in body["ScoreList"]}


def start(rt: Runtime, battle_id: str = "b1", *, at: float = T0 - 10, seconds: float = 60,
          rooms: dict[str, str | None] | None = None) -> Battle:
    """Register a running battle that started at `at` and lasts `seconds`."""
    return registry.register(rt, battle_id, at, int(seconds * 1000),
                             dict(ROOMS if rooms is None else rooms), "unit")


def pend(rt: Runtime, battle_id: str = "b1", **deltas: int) -> None:
    """Value waiting for the battle's flush (as ingest or a correction leaves it), due now."""
    rt.redis.hset(BattleKeys(battle_id).pending, mapping=deltas)
    rt.redis.zadd(keys.FLUSH_DUE, {battle_id: rt.clock()}, nx=True)


def ints(rt: Runtime, key: str) -> dict[str, int]:
    """A hash of integers as a dict."""
    return {k: int(v) for k, v in rt.redis.hgetall(key).items()}
