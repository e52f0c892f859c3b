"""Webhook body models: strict where it matters, lenient where Tencent is inconsistent."""

import pytest

from worker.engine import events as e


def gift(**gw):
    base = {"From_Account": "viewer", "To_Account": ["owner"], "Time": 1_763_800_000,
            "GiftId": "rose", "Count": 2, "Coins": 10}
    base.update(gw)
    return {"CallbackCommand": e.GIFT, "RoomId": "room1", "GiftWater": base}


def test_gift_parses_and_values():
    ev = e.parse(gift())
    assert ev.value("coins") == 10 and ev.value("coins_x_count") == 20


@pytest.mark.parametrize("bad", [{"Count": -1}, {"Coins": -5}, {"Coins": "ten"},
                                 {"Time": 12}, {"To_Account": []}, {"GiftId": "x" * 500},
                                 {"From_Account": None}, {"Coins": 10**15}])
def test_gift_rejects_bad_fields(bad):
    with pytest.raises(e.InvalidEvent) as err:
        e.parse(gift(**bad))
    assert err.value.reason.startswith(e.GIFT)


def test_owner_account_as_number_and_webhookcommand_spelling():
    body = {"WebhookCommand": e.START, "BattleId": "b1", "Duration": 60000,
            "StartTime": 1_763_800_000, "FromRoomInfo": {"RoomId": "r1", "Owner_Account": 42},
            "ToRoomList": [{"RoomId": 7, "Owner_Account": "o2"}]}
    ev = e.parse(body)
    assert [(r.RoomId, r.Owner_Account) for r in ev.rooms] == [("r1", "42"), ("7", "o2")]


def test_unknown_command_is_ignored_and_non_dict_is_invalid():
    assert e.parse({"CallbackCommand": "Live.CallbackAfterCreateRoom"}) is None
    with pytest.raises(e.InvalidEvent):
        e.parse(["not", "a", "dict"])


def test_derived_event_id_is_stable_and_order_insensitive():
    a = gift()
    b = dict(reversed(list(gift().items())))
    assert e.derive_event_id(a) == e.derive_event_id(b)
    assert e.derive_event_id(a) != e.derive_event_id(gift(Coins=11))
