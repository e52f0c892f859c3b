"""The engine's records: a battle as its meta hash stores it, a gift as routing carries it."""

from __future__ import annotations

import json
from dataclasses import dataclass

from worker.engine.runtime import Runtime
from worker.engine.state.keys import BattleKeys


@dataclass(frozen=True)
class Gift:
    """A validated gift, reduced to what scoring needs."""

    event_id: str
    room: str
    to: tuple[str, ...]
    second: int
    value: int

    def to_json(self, deadline: float) -> str:
        """The gift as a held list item, to be routed again until `deadline`."""
        return json.dumps({"e": self.event_id, "r": self.room, "to": list(self.to),
                           "t": self.second, "v": self.value, "d": deadline})

    @classmethod
    def from_json(cls, raw: str) -> tuple[Gift, float]:
        """(gift, deadline) of a held list item written by `to_json`."""
        d = json.loads(raw)
        return cls(d["e"], d["r"], tuple(d["to"]), int(d["t"]), int(d["v"])), float(d["d"])


@dataclass
class Battle:
    """A battle's registration as stored in its meta hash."""

    battle_id: str
    start: float  # 0 while unknown
    end: float
    rooms: dict[str, str | None]  # RoomId → owner (None while unknown)
    status: str = "running"
    ended_at: float = 0.0  # when Tencent told us it has ended (end webhook, 100006), else 0

    @classmethod
    def load(cls, rt: Runtime, battle_id: str) -> Battle | None:
        """The battle as its meta hash holds it (None if unknown)."""
        return cls.from_meta(battle_id, rt.redis.hgetall(BattleKeys(battle_id).meta))

    @classmethod
    def from_meta(cls, battle_id: str, m: dict[str, str]) -> Battle | None:
        """The battle of a meta hash read elsewhere (None if it is empty)."""
        if not m:
            return None
        return cls(battle_id, float(m.get("start", 0)), float(m.get("end", 0)),
                   json.loads(m.get("rooms", "{}")), m.get("status", "running"),
                   float(m.get("ended_at") or m.get("ended_by_webhook") or 0.0))

    def starts_in(self, now: float) -> float:
        """Seconds until its start from `now` (Tencent's clock at the earliest: "surely
        started" once this is 0); 0 once started, or while the start is unknown."""
        return max(0.0, self.start - now)

    def has_ended(self, now: float, margin: float) -> bool:
        """True once no write can land: Tencent said so, or `margin` s past its known end."""
        return bool(self.ended_at) or (self.start > 0 and self.end > 0
                                       and now >= self.end + margin)
