"""The room index (BattleId → "start end owner" per room): its one format and the routing rule."""

from __future__ import annotations

# The one Python encoder and decoder of an index value. The Lua script ROUTE_OR_HOLD in
# worker/engine/state/scripts/ingest.py parses the same format ('^(%S+) (%S+) (%S+)$', owner
# '-' while unknown): change the three together.


def index_value(start: float, end: float, owner: str | None) -> str:
    """A room index value: the battle's window [start, end) (0 0 while its start is unknown)
    and the room's owner ('-' while unknown)."""
    return f"{start!r} {end!r} {owner or '-'}"


def parse_index_value(value: str) -> tuple[float, float, str | None]:
    """(start, end, owner or None) of a room index value written by `index_value`."""
    start, end, owner = value.split(" ", 2)
    return float(start), float(end), None if owner == "-" else owner


def find_battle(index: dict[str, str], second: int) -> tuple[str, str, float] | None:
    """(BattleId, owner, end) of the battle of a room's `index` that a gift at `second` scores.

    The routing rule (ROUTE_OR_HOLD in worker/engine/state/scripts/ingest.py is a Lua copy;
    keep both alike): among the battles whose window [start, end) holds `second`, with
    start > 0 and owner known, the one with the LATEST start wins; on equal starts, the
    greater BattleId (byte order). A room is in one battle at a time, but a battle that ended
    early (its end webhook lost) keeps its planned window in the index, and the room's next
    battle may start inside it: from that start on, the gifts are the new battle's.
    """
    best: tuple[float, str, str, float] | None = None  # (start, BattleId, owner, end)
    for battle_id, value in index.items():
        start, end, owner = parse_index_value(value)
        if not (start > 0 and owner is not None and start <= second < end):
            continue
        if best is None or (start, battle_id) > (best[0], best[1]):
            best = (start, battle_id, owner, end)
    return None if best is None else (best[1], best[2], best[3])
