"""Webhook bodies and a running battle for the ingest unit tests (frt's clock: T0)."""

from __future__ import annotations

import itertools
from typing import Any

from tests.unit.conftest import T0
from worker.engine import events
from worker.engine.ingest.gifts import handle
from worker.engine.runtime import Runtime
from worker.engine.state.keys import BattleKeys

BATTLE = "battle-1"
ROOMS = {"room_a": "owner_a", "room_b": "owner_b"}
#: The battle runs [T0 - 10, T0 + 590): far from its end game at T0.
START, DURATION_MS = int(T0) - 10, 600_000

_senders = itertools.count(1)


def gift(room: str = "room_a", coins: int = 5, t: float = T0, to: str | None = None,
         count: int = 1, sender: str | None = None) -> dict[str, Any]:
    """A gift webhook body: `coins` to the room's owner (or `to`) at `t`."""
    return {"CallbackCommand": events.GIFT, "RoomId": room,
            "GiftWater": {"From_Account": sender or f"viewer{next(_senders)}",
                          "To_Account": [to or ROOMS.get(room, "owner_x")], "Time": int(t),
                          "GiftId": "rose", "Count": count, "Coins": coins}}


def start(battle_id: str = BATTLE, rooms: dict[str, str] | None = None) -> dict[str, Any]:
    """The start webhook of a battle running at T0 (the first room is the From room)."""
    (first, owner), *rest = (rooms or ROOMS).items()
    return {"CallbackCommand": events.START, "BattleId": battle_id, "Duration": DURATION_MS,
            "StartTime": START, "FromRoomInfo": {"RoomId": first, "Owner_Account": owner},
            "ToRoomList": [{"RoomId": r, "Owner_Account": o} for r, o in rest]}


def start_battle(rt: Runtime, battle_id: str = BATTLE) -> str:
    """Register the battle through its start webhook."""
    assert handle(rt, [(start(battle_id), None)])["lifecycle"] == 1
    return battle_id


def ledger(rt: Runtime, battle_id: str = BATTLE) -> dict[str, int]:
    """Room → value ingested for the battle."""
    return {k: int(v) for k, v in rt.redis.hgetall(BattleKeys(battle_id).ledger).items()}
