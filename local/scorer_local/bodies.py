"""Builders of Tencent Live callback bodies, for the demo, the benchmarks and the tests."""

from __future__ import annotations

import itertools
import time

from worker.engine import events

_senders = itertools.count(1)


def start_body(battle_id: str, start: float, duration_ms: int, rooms: dict[str, str]) -> dict:
    """A Live.CallbackAfterStartBattle body (the first room is the From room)."""
    (first, owner), *rest = rooms.items()
    return {"CallbackCommand": events.START, "BattleId": battle_id, "Duration": duration_ms,
            "CreateTime": int(start), "StartTime": int(start), "EventTime": int(start * 1000),
            "FromRoomInfo": {"RoomId": first, "Owner_Account": owner},
            "ToRoomList": [{"RoomId": r, "Owner_Account": o} for r, o in rest]}


def end_body(battle_id: str, start: float, end: float, scores: dict[str, int],
             owners: dict[str, str]) -> dict:
    """A Live.CallbackAfterEndBattle body with Tencent's final scores."""
    rooms = [{"RoomId": r, "Owner_Account": owners[r], "Score": s} for r, s in scores.items()]
    return {"CallbackCommand": events.END, "BattleId": battle_id, "StartTime": int(start),
            "EndTime": int(end), "Duration": int((end - start) * 1000), "OpType": 0,
            "FromRoomInfo": rooms[0], "ToRoomList": rooms[1:]}


def gift_body(room: str, owner: str, coins: int, t: float | None = None, count: int = 1,
              sender: str | None = None) -> dict:
    """A Live.CallbackBeforeSendGift body: `coins` to the room's owner at time `t`."""
    return {"CallbackCommand": events.GIFT, "Operator_Account": sender or "viewer",
            "RoomId": room,
            "GiftWater": {"From_Account": sender or f"viewer{next(_senders)}",
                          "To_Account": [owner], "Time": int(t if t is not None else time.time()),
                          "GiftId": "rose", "Count": count, "Coins": coins}}
