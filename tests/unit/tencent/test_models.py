"""worker.engine.tencent.models: the Tencent call bodies, their bounds and the result split."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from worker.engine.events import MAX_VALUE
from worker.engine.tencent.models import (
    MAX_SCORE,
    BattleInfo,
    GiftCount,
    GiftCountRequest,
    OpType,
    ScoreItem,
    SetBattleScoreRequest,
    SetBattleScoreResult,
)


def _request(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {"BattleId": "b1", "OpType": OpType.ACCUMULATE,
                               "ScoreList": [{"RoomId": "r1", "Score": 5}]}
    return {**base, **kw}


def test_op_type_is_the_integer_tencent_expects() -> None:
    assert (OpType.ACCUMULATE, OpType.OVERWRITE) == (1, 2)
    body = SetBattleScoreRequest.model_validate(_request(OpType=OpType.OVERWRITE)).model_dump()
    assert body == {"BattleId": "b1", "OpType": 2,
                    "ScoreList": [{"RoomId": "r1", "Score": 5}]}


@pytest.mark.parametrize("bad", [
    {"OpType": 0}, {"OpType": 3}, {"ScoreList": []}, {"BattleId": ""},
    {"BattleId": "b" * 129}, {"ScoreList": [{"RoomId": "r1", "Score": -1}]},
    {"ScoreList": [{"RoomId": "r1", "Score": MAX_SCORE + 1}]},
    {"ScoreList": [{"RoomId": "", "Score": 1}]},
])
def test_a_request_out_of_bounds_is_refused_before_it_is_sent(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SetBattleScoreRequest.model_validate(_request(**bad))


def test_scores_go_up_to_json_exact_integers_and_far_above_one_gift() -> None:
    assert MAX_SCORE == 2**53 and MAX_VALUE < MAX_SCORE
    assert ScoreItem(RoomId="r", Score=MAX_SCORE).Score == MAX_SCORE


def test_split_sorts_rooms_by_their_result_code() -> None:
    res = SetBattleScoreResult.model_validate(
        {"Result": [{"RoomId": "r1", "ResultCode": 0}, {"RoomId": 7, "ResultCode": 1},
                    {"RoomId": "r3", "ResultCode": 5}], "Extra": "ignored"})
    assert res.codes() == {"r1": 0, "7": 1, "r3": 5}  # numeric ids as strings
    # A room the answer does not mention was set; the order of `rooms` is kept.
    assert res.split(["r3", "r1", "r9", "7"]) == (["r1", "r9"], ["r3", "7"])
    assert SetBattleScoreResult().split(["a", "b"]) == (["a", "b"], [])
    assert res.split([]) == ([], [])


def test_battle_info_lists_its_rooms_the_from_room_first() -> None:
    info = BattleInfo.model_validate({
        "BattleId": "b1", "Duration": 60_000, "StartTime": 1_800_000_000,
        "FromRoomInfo": {"RoomId": 11, "Owner_Account": 42, "Score": 3},
        "ToRoomList": [{"RoomId": "r2"}], "Unknown": {"x": 1}})
    assert [(r.RoomId, r.Owner_Account, r.Score) for r in info.rooms] == [
        ("11", "42", 3), ("r2", None, 0)]
    assert info.EndTime == 0 and info.Status is None
    assert [r.RoomId for r in BattleInfo(BattleId="b2").rooms] == []


def test_gift_count_defaults_and_request_bounds() -> None:
    assert GiftCount.model_validate({}).model_dump() == {
        "Sequence": None, "TotalCount": 0, "TotalCoins": 0, "GiftSenderCount": 0,
        "RequestId": None}
    assert GiftCountRequest(RoomId="r", From_Account="o").model_dump() == {
        "RoomId": "r", "From_Account": "o"}
    with pytest.raises(ValidationError):
        GiftCountRequest(RoomId="r", From_Account="")
