"""Pydantic models of the Tencent Live callback bodies the worker consumes, and their parsing."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

GIFT = "Live.CallbackBeforeSendGift"
CREATE = "Live.CallbackAfterCreateBattle"
START = "Live.CallbackAfterStartBattle"
END = "Live.CallbackAfterEndBattle"
COMMANDS = (GIFT, CREATE, START, END)

#: Bounds that keep hostile input from becoming huge Redis keys or numbers.
MAX_ID = 128
MAX_VALUE = 10**12  # coins in one gift event (Coins, or Coins x Count): far above any real
# gift, far below MAX_SCORE (worker/engine/tencent/models.py), the bound of a room's score on
# Tencent
MAX_RECEIVERS = 64
MAX_ROOMS = 32
#: Unix seconds between 2020 and 2100: anything else is a unit or type mistake.
MIN_TIME, MAX_TIME = 1_577_836_800, 4_102_444_800


def _id(v: Any) -> Any:
    # Tencent is inconsistent: account and room ids sometimes arrive as bare numbers.
    if isinstance(v, bool):
        raise ValueError("must be a string")
    if isinstance(v, int):
        return str(v)
    return v


Ident = Annotated[str, BeforeValidator(_id), Field(min_length=1, max_length=MAX_ID,
                                                    pattern=r"^[\x21-\x7e]+$")]
Seconds = Annotated[int, Field(ge=MIN_TIME, le=MAX_TIME, strict=False)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class GiftWater(_Body):
    """One gift: sender, receivers, time (unix s), gift id, count and coins."""

    From_Account: Ident
    To_Account: list[Ident] = Field(min_length=1, max_length=MAX_RECEIVERS)
    Time: Seconds
    GiftId: Ident
    Count: int = Field(ge=0, le=1_000_000)
    Coins: int = Field(ge=0, le=MAX_VALUE)


class GiftEvent(_Body):
    """Live.CallbackBeforeSendGift: a gift the app approved."""

    CallbackCommand: Literal["Live.CallbackBeforeSendGift"]
    RoomId: Ident
    GiftWater: GiftWater

    def value(self, mode: str) -> int:
        """The gift's value under SCORER_GIFT_VALUE (`coins` or `coins_x_count`)."""
        gw = self.GiftWater
        value = gw.Coins * gw.Count if mode == "coins_x_count" else gw.Coins
        if value > MAX_VALUE:  # Coins x Count reached 1e18: past any score Tencent holds
            raise InvalidEvent(f"GiftWater: value {value} exceeds {MAX_VALUE} per gift")
        return value


class RoomInfo(_Body):
    """A battle room with its owner (and, at the end, its score)."""

    RoomId: Ident
    Owner_Account: Ident | None = None
    Score: int | None = Field(default=None, ge=0)


class CreateEvent(_Body):
    """Live.CallbackAfterCreateBattle: rooms and duration, no start time yet."""

    CallbackCommand: Literal["Live.CallbackAfterCreateBattle"]
    BattleId: Ident
    FromRoomId: Ident
    ToRoomIdList: list[Ident] = Field(default_factory=list, max_length=MAX_ROOMS)
    Duration: int = Field(default=0, ge=0, le=86_400_000)


class StartEvent(_Body):
    """Live.CallbackAfterStartBattle: rooms, owners, StartTime (s) and Duration (ms)."""

    CallbackCommand: Literal["Live.CallbackAfterStartBattle"]
    BattleId: Ident
    Duration: int = Field(gt=0, le=86_400_000)
    StartTime: Seconds
    FromRoomInfo: RoomInfo
    ToRoomList: list[RoomInfo] = Field(default_factory=list, max_length=MAX_ROOMS)

    @property
    def rooms(self) -> list[RoomInfo]:
        """All rooms, the From room first."""
        return [self.FromRoomInfo, *self.ToRoomList]


class EndEvent(_Body):
    """Live.CallbackAfterEndBattle: the final scores as Tencent holds them."""

    CallbackCommand: Literal["Live.CallbackAfterEndBattle"]
    BattleId: Ident
    StartTime: Seconds | None = None
    EndTime: Seconds | None = None
    Duration: int | None = Field(default=None, ge=0)
    OpType: int | None = None
    FromRoomInfo: RoomInfo | None = None
    ToRoomList: list[RoomInfo] = Field(default_factory=list, max_length=MAX_ROOMS)

    @property
    def rooms(self) -> list[RoomInfo]:
        """All rooms that came with the event."""
        return ([self.FromRoomInfo] if self.FromRoomInfo else []) + list(self.ToRoomList)


#: A parsed callback, and the lifecycle ones among them (a battle created, started or ended).
Event = GiftEvent | CreateEvent | StartEvent | EndEvent
Lifecycle = CreateEvent | StartEvent | EndEvent

MODELS: dict[str, type[Event]] = {GIFT: GiftEvent, CREATE: CreateEvent, START: StartEvent,
                                  END: EndEvent}


class InvalidEvent(ValueError):
    """A body that cannot be scored; `reason` is short, printable and holds no secret."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason[:500]


def command_of(body: Any) -> str:
    """The callback command of a body (`CallbackCommand`, or `WebhookCommand` as some docs say)."""
    if not isinstance(body, dict):
        raise InvalidEvent(f"body must be a JSON object, not {type(body).__name__}")
    cmd = body.get("CallbackCommand", body.get("WebhookCommand"))
    if cmd is None:  # not a Tencent callback at all: a producer bug worth keeping
        raise InvalidEvent("CallbackCommand is missing")
    if not isinstance(cmd, str):
        raise InvalidEvent("CallbackCommand must be a string")
    return cmd


def parse(body: Any) -> Event | None:
    """The typed event for a body; None for a command the worker ignores; InvalidEvent if bad."""
    cmd = command_of(body)
    model = MODELS.get(cmd or "")
    if model is None:
        return None
    if "CallbackCommand" not in body:
        body = {**body, "CallbackCommand": cmd}
    try:
        return model.model_validate(body)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise InvalidEvent(f"{cmd}: {where}: {first.get('msg', 'invalid')}") from None


def derive_event_id(body: dict[str, Any]) -> str:
    """A stable id for a gift body that came without the app's ledger id.

    Two genuinely different gifts with identical sender, receivers, room, gift, count, coins
    and second collapse into one: the README says so, and producers should send event_id.
    """
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return "derived:" + hashlib.sha256(canon.encode()).hexdigest()[:32]


def valid_event_id(event_id: Any) -> str:
    """The producer's event id, checked: a short printable string."""
    if not isinstance(event_id, (str, int)) or isinstance(event_id, bool):
        raise InvalidEvent("event_id must be a string")
    s = str(event_id)
    if not 1 <= len(s) <= 200 or not s.isprintable():
        raise InvalidEvent("event_id must be 1-200 printable characters")
    return s
