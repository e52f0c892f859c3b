"""A small HTTP client for the sandbox's control endpoints (tests, demo, bench, chaos)."""

from __future__ import annotations

from typing import Any

import httpx


class SandboxControl:
    """Drive a running sandbox: create battles, count gifts, inject faults, read state."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=10)

    def _post(self, path: str, body: dict | None = None) -> Any:
        resp = self.http.post(path, json=body or {})
        resp.raise_for_status()
        return resp.json()

    def create_battle(self, rooms: dict[str, str], duration_ms: int,
                      start: float | None = None, battle_id: str | None = None) -> dict:
        """A battle of `rooms` (RoomId → owner); returns {BattleId, StartTime, EndTime}."""
        body: dict[str, Any] = {"Rooms": [{"RoomId": r, "Owner_Account": o}
                                          for r, o in rooms.items()], "Duration": duration_ms}
        if start is not None:
            body["StartTime"] = start
        if battle_id is not None:
            body["BattleId"] = battle_id
        return self._post("/sandbox/battles", body)

    def end_battle(self, battle_id: str) -> dict:
        """End a battle now."""
        return self._post(f"/sandbox/battles/{battle_id}/end")

    def count_gifts(self, gifts: list[dict]) -> dict:
        """Tencent counts these gifts ({RoomId, To_Account[], From_Account, Coins, Count})."""
        return self._post("/sandbox/gifts", {"gifts": gifts})

    def inject(self, kind: str, api: str | None = None, count: int = 1,
               latency: float = 0.0) -> dict:
        """Queue `count` faults of `kind` for `api` (None: any API)."""
        body: dict[str, Any] = {"kind": kind, "count": count, "latency": latency}
        if api:
            body["api"] = api
        return self._post("/sandbox/faults", body)

    def fault_rates(self, rates: dict[str, float], latency: float = 0.3,
                    seed: int | None = None) -> dict:
        """Inject faults at random with these probabilities per call."""
        return self._post("/sandbox/faults", {"rates": rates, "latency": latency, "seed": seed})

    def set_clock_offset(self, offset: float) -> dict:
        """Run Tencent's clock `offset` s ahead of ours (negative: behind)."""
        return self._post("/sandbox/clock", {"offset": offset})

    def clear_faults(self) -> dict:
        return self._post("/sandbox/faults/clear")

    def state(self) -> dict:
        """Battles with their scores, faults injected, calls per API, max calls per second."""
        resp = self.http.get("/sandbox/state")
        resp.raise_for_status()
        return resp.json()

    def scores(self, battle_id: str) -> dict[str, int]:
        """The score the sandbox holds per room of a battle."""
        return {str(k): int(v) for k, v in self.state()["battles"][battle_id]["scores"].items()}

    def close(self) -> None:
        self.http.close()
