"""The sandbox's model of Tencent: battles, rooms, gift counters, the per-API rate limit, the
call log and score history, and the REST APIs the worker calls, run on that model."""

from __future__ import annotations

import threading
import time
import uuid
from bisect import bisect_left, bisect_right, insort
from collections import defaultdict
from typing import Any

from scorer_local.sandbox_auth import Reject, check_query
from scorer_local.sandbox_faults import Faults


class SandboxState:
    """Battles, rooms, gift counters, faults and the call log, under one lock."""

    def __init__(self, sdkappid: int, secret_key: str, admin_id: str = "administrator",
                 rate: int = 200) -> None:
        self.sdkappid, self._key, self.admin_id, self.rate = sdkappid, secret_key, admin_id, rate
        self.lock = threading.Lock()
        #: Tencent's clock minus ours: battle times, 100006 and the Date header follow it.
        self.clock_offset = 0.0
        self.reset()

    def now(self) -> float:
        """Tencent's clock (ours + `clock_offset`)."""
        return time.time() + self.clock_offset

    def __repr__(self) -> str:
        return f"SandboxState(sdkappid={self.sdkappid})"

    def reset(self) -> None:
        """Forget everything."""
        with self.lock:
            self.rooms: dict[str, str] = {}
            self.battles: dict[str, dict] = {}
            self.counters: dict[tuple[str, str], dict] = {}
            self.calls: list[dict] = []
            self.history: list[dict] = []
            self.faults = Faults()
            self.windows: dict[str, list[float]] = defaultdict(list)  # admitted, by arrival
            self.max_per_second: dict[str, int] = defaultdict(int)

    # -- control ---------------------------------------------------------------------------

    def create_room(self, room_id: str, owner: str) -> None:
        """A room and its owner (Tencent knows only the rooms it was told of)."""
        with self.lock:
            self.rooms[str(room_id)] = str(owner)

    def create_battle(self, rooms: list[dict], duration_ms: int, start: float | None = None,
                      battle_id: str | None = None) -> dict:
        """A battle of rooms [{RoomId, Owner_Account}] starting at `start` (Tencent's clock,
        default now)."""
        bid = battle_id or "battle_" + uuid.uuid4().hex[:12]
        start = self.now() if start is None else float(start)
        with self.lock:
            for r in rooms:
                self.rooms[str(r["RoomId"])] = str(r["Owner_Account"])
            ids = [str(r["RoomId"]) for r in rooms]
            self.battles[bid] = {"rooms": ids, "start": start, "duration_ms": int(duration_ms),
                                 "end": start + int(duration_ms) / 1000.0,
                                 "scores": {r: 0 for r in ids}}
            return {"BattleId": bid, "StartTime": start, "EndTime": self.battles[bid]["end"]}

    def end_battle(self, battle_id: str) -> dict:
        """End a battle now (its end moves earlier, never later)."""
        with self.lock:
            b = self.battles[battle_id]
            b["end"] = min(b["end"], self.now())
            return {"BattleId": battle_id, "EndTime": b["end"]}

    def count_gifts(self, gifts: list[dict]) -> int:
        """Tencent counts these gifts for each receiver in the room."""
        with self.lock:
            for g in gifts:
                for receiver in g.get("To_Account") or []:
                    c = self.counters.setdefault((str(g["RoomId"]), str(receiver)), {
                        "TotalCount": 0, "TotalCoins": 0, "Sequence": 0, "senders": set()})
                    c["TotalCoins"] += int(g.get("Coins", 0))
                    c["TotalCount"] += int(g.get("Count", 1))
                    c["Sequence"] += 1
                    c["senders"].add(str(g.get("From_Account", "")))
            return len(gifts)

    def inject(self, api: str | None, kind: str, count: int = 1, latency: float = 0.0) -> None:
        """Queue `count` faults of `kind` for the next calls of `api` (None: any API)."""
        with self.lock:
            self.faults.inject(api, kind, count, latency)

    def set_fault_rates(self, rates: dict[str, float], latency: float = 0.3,
                        seed: int | None = None, apis: list[str] | None = None) -> None:
        """Inject faults at random: kind → probability per call."""
        with self.lock:
            self.faults.set_rates(rates, latency, seed, apis)

    def clear_faults(self) -> None:
        """No more faults (those injected stay counted)."""
        with self.lock:
            self.faults.clear()

    def snapshot(self) -> dict:
        """Battles with their scores, faults injected, calls per API, max calls per second."""
        with self.lock:
            by_api: dict[str, int] = defaultdict(int)
            for c in self.calls:
                by_api[c["api"]] += 1
            return {
                "battles": {bid: {"rooms": b["rooms"], "scores": dict(b["scores"]),
                                  "start": b["start"], "end": b["end"],
                                  "owners": {r: self.rooms.get(r) for r in b["rooms"]}}
                            for bid, b in self.battles.items()},
                "faults_injected": dict(self.faults.injected),
                "calls_by_api": dict(by_api),
                "max_calls_per_second": dict(self.max_per_second),
                "clock_offset": self.clock_offset,
            }

    # -- the Tencent side ------------------------------------------------------------------

    def take_fault(self, api: str) -> tuple[str, float] | None:
        """The fault this call suffers, if any (queued first, then random)."""
        with self.lock:
            return self.faults.take(api)

    def admit(self, api: str, arrived: float) -> bool:
        """At most `rate` calls of an API in any sliding 1-s window, by the time each arrived;
        refused calls (100012) do not count. Threads may get to calls out of order, so a
        call is checked against every window that holds it, not only the one ending at it."""
        with self.lock:
            w = self.windows[api]  # arrival times of admitted calls, sorted
            while w and w[0] <= min(w[-1] - 2.0, arrived - 1.0):  # in no window still open
                w.pop(0)
            ends = [arrived, *w[bisect_right(w, arrived):bisect_left(w, arrived + 1.0)]]
            busiest = max(bisect_right(w, x) - bisect_right(w, x - 1.0) for x in ends)
            if busiest >= self.rate:
                return False
            insort(w, arrived)
            self.max_per_second[api] = max(self.max_per_second[api], busiest + 1)
            return True

    def check_query(self, query: dict[str, list[str]]) -> None:
        """Raise Reject unless the query string is a signed call of the app's admin."""
        check_query(query, self.sdkappid, self._key, self.admin_id)

    def apply(self, api: str, body: dict) -> dict:
        """Run one API call on the model; returns the Response payload or raises Reject."""
        if not isinstance(body, dict):
            raise Reject(100002, "body must be a JSON object")
        with self.lock:
            return getattr(self, f"_api_{api}")(body)

    def _battle(self, body: dict) -> tuple[str, dict]:
        bid = body.get("BattleId")
        if not isinstance(bid, str) or bid not in self.battles:
            raise Reject(100002, "battle not found")
        return bid, self.battles[bid]

    def _api_set_battle_score(self, body: dict) -> dict:
        bid, b = self._battle(body)
        try:
            raw_op: Any = body.get("OpType")  # anything: int() refuses what is not a number
            op = int(raw_op)
        except (TypeError, ValueError):
            raise Reject(100002, "OpType must be 1 or 2") from None
        items = body.get("ScoreList")
        if op not in (1, 2) or not isinstance(items, list) or not items:
            raise Reject(100002, "OpType must be 1 or 2 and ScoreList a non-empty list")
        for it in items:
            if (not isinstance(it, dict) or not isinstance(it.get("Score"), int)
                    or it["Score"] < 0 or "RoomId" not in it):
                raise Reject(100002, "ScoreList items need RoomId and a non-negative Score")
        now, tnow = time.time(), self.now()
        if tnow < b["start"] or tnow >= b["end"]:
            raise Reject(100006, "battle has not started or has already ended")
        result = []
        for it in items:
            room = str(it["RoomId"])
            if room not in self.rooms:
                result.append({"RoomId": room, "ResultCode": 1})
                continue
            if room in b["scores"]:
                b["scores"][room] = (b["scores"][room] + it["Score"]) if op == 1 else it["Score"]
                self.history.append({"t": now, "battle": bid, "room": room, "op": op,
                                     "value": it["Score"], "score_after": b["scores"][room]})
            result.append({"RoomId": room, "ResultCode": 0})
        return {"Result": result}

    def _api_get_battle_info(self, body: dict) -> dict:
        bid, b = self._battle(body)
        now = self.now()
        rooms = [{"RoomId": r, "Score": b["scores"][r], "Owner_Account": self.rooms.get(r)}
                 for r in b["rooms"]]
        return {"BattleId": bid, "Duration": b["duration_ms"], "StartTime": int(b["start"]),
                "EndTime": int(b["end"]),
                # Undocumented values; this is one plausible reading (the acceptance
                # referee's): 1 before the start, 2 while it runs, 3 after. The worker never
                # reads it (an end is EndTime on Tencent's clock).
                "Status": 1 if now < b["start"] else 2 if now < b["end"] else 3,
                "FromRoomInfo": rooms[0], "ToRoomList": rooms[1:]}

    def _api_create_battle(self, body: dict) -> dict:
        ids = [body.get("FromRoomId"), *(body.get("ToRoomIdList") or [])]
        known = [r for r in ids if r in self.rooms]
        bid = "battle_" + uuid.uuid4().hex[:12]
        now = self.now()
        self.battles[bid] = {"rooms": known, "start": now,
                             "duration_ms": int(body.get("Duration") or 0),
                             "end": now + int(body.get("Duration") or 0) / 1000.0,
                             "scores": {r: 0 for r in known}}
        return {"BattleId": bid, "Result": [
            {"RoomId": r, "ResultCode": 0 if r in self.rooms else 1,
             "ResultMessage": "" if r in self.rooms else "room does not exist"} for r in ids]}

    def _api_get_gift_count(self, body: dict) -> dict:
        room, user = body.get("RoomId"), body.get("From_Account")
        if not isinstance(room, str) or not isinstance(user, str):
            raise Reject(100002, "RoomId and From_Account are required strings")
        c = self.counters.get((room, user))
        if c is None:
            return {"Sequence": 0, "TotalCount": 0, "TotalCoins": 0, "GiftSenderCount": 0}
        return {"Sequence": c["Sequence"], "TotalCount": c["TotalCount"],
                "TotalCoins": c["TotalCoins"], "GiftSenderCount": len(c["senders"])}
