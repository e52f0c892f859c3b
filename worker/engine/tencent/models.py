"""Typed request and response bodies of the three Tencent APIs the worker uses."""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: The largest score a room can be sent or hold: JSON's exact integers (2**53). One rule from
#: ingest (events.MAX_VALUE per gift) to the call: a batch past it is refused, not retried.
MAX_SCORE = 2**53

class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


def _as_str(v: object) -> str | None:
    # Tencent sometimes sends account ids as bare numbers.
    return v if v is None or isinstance(v, str) else str(v)


class ScoreItem(_Loose):
    """One room's score in a set_battle_score call."""

    RoomId: str = Field(min_length=1, max_length=128)
    Score: int = Field(ge=0, le=MAX_SCORE)


class OpType(IntEnum):
    """set_battle_score's OpType: add to each room's score, or set it."""

    ACCUMULATE = 1
    OVERWRITE = 2


class SetBattleScoreRequest(_Loose):
    """Body of live_engine_http_pk/set_battle_score (OpType 1 accumulate, 2 overwrite)."""

    BattleId: str = Field(min_length=1, max_length=128)
    OpType: int = Field(ge=1, le=2)
    ScoreList: list[ScoreItem] = Field(min_length=1)


class RoomResult(_Loose):
    """Per-room answer of set_battle_score: 0 set, 1 room does not exist."""

    RoomId: str
    ResultCode: int

    _s = field_validator("RoomId", mode="before")(_as_str)


class SetBattleScoreResult(_Loose):
    """Parsed answer of set_battle_score."""

    Result: list[RoomResult] = Field(default_factory=list)
    RequestId: str | None = None

    def codes(self) -> dict[str, int]:
        """RoomId → ResultCode."""
        return {r.RoomId: r.ResultCode for r in self.Result}

    def split(self, rooms: Iterable[str]) -> tuple[list[str], list[str]]:
        """`rooms` split into those set (ResultCode 0, or not mentioned in the answer) and
        those refused (any other ResultCode, e.g. 1: the room does not exist)."""
        codes = self.codes()
        ok: list[str] = []
        failed: list[str] = []
        for room in rooms:
            (ok if codes.get(room, 0) == 0 else failed).append(room)
        return ok, failed


class GiftCountRequest(_Loose):
    """Body of live_engine_http_srv/get_gift_count (From_Account: the room owner)."""

    RoomId: str = Field(min_length=1, max_length=128)
    From_Account: str = Field(min_length=1, max_length=128)


class GiftCount(_Loose):
    """Cumulative gift totals of one receiver in one room since the room was created."""

    Sequence: int | None = None
    TotalCount: int = 0
    TotalCoins: int = 0
    GiftSenderCount: int = 0
    RequestId: str | None = None


class BattleRoom(_Loose):
    """A room of a battle as get_battle_info reports it."""

    RoomId: str
    Score: int = 0
    Owner_Account: str | None = None

    _s = field_validator("RoomId", "Owner_Account", mode="before")(_as_str)


class BattleInfo(_Loose):
    """Parsed answer of get_battle_info: membership, timing and current scores."""

    BattleId: str
    Duration: int = 0  # ms
    StartTime: int = 0  # unix s
    EndTime: int = 0  # unix s
    Status: int | None = None
    FromRoomInfo: BattleRoom | None = None
    ToRoomList: list[BattleRoom] = Field(default_factory=list)
    RequestId: str | None = None

    @property
    def rooms(self) -> list[BattleRoom]:
        """Every room of the battle, the From room first."""
        return ([self.FromRoomInfo] if self.FromRoomInfo else []) + list(self.ToRoomList)
