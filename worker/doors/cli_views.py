"""The operator views of `battle-scorer`: counters, active battles, one battle, dead letters."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any, cast

from worker.engine.settings import load_settings

if TYPE_CHECKING:  # the runtime (Redis, the Tencent client) is built only by the views' calls
    from worker.engine.runtime import Runtime


def _rt() -> Runtime:
    from worker.engine.runtime import build_runtime

    return build_runtime(load_settings())


def cmd_stats(args: argparse.Namespace) -> int:
    """Print the event counters."""
    from worker.engine.state import counters

    rt = _rt()
    for k, v in counters.read(rt.redis).items():
        print(f"{k:<24} {v}")
    return 0


def cmd_battles(args: argparse.Namespace) -> int:
    """List active battles: rooms, owners, confirmed and pending score, end time."""
    from worker.engine.battles.registry import Battle
    from worker.engine.state import keys
    from worker.engine.state.keys import BattleKeys

    rt = _rt()
    ids = cast(list[str], rt.redis.zrange(keys.ACTIVE, 0, -1))  # replies decoded
    if not ids:
        print("no active battles")
    for bid in ids:
        b = Battle.load(rt, bid)
        if b is None:
            continue
        bk = BattleKeys(bid)
        applied = rt.redis.hgetall(bk.applied)
        pending = rt.redis.hgetall(bk.pending)
        last = rt.redis.lindex(bk.flushes, 0)
        last_at = json.loads(last)["at"] if last else None
        ends = time.strftime("%H:%M:%S", time.localtime(b.end)) if b.end else "?"
        print(f"{bid}  status={b.status}  ends={ends}  last_flush="
              f"{'-' if last_at is None else f'{time.time() - last_at:.1f}s ago'}")
        for room, owner in b.rooms.items():
            print(f"  {room:<20} owner={owner or '?':<16} confirmed={applied.get(room, 0):>8}"
                  f"  pending={pending.get(room, 0)}")
    return 0


def cmd_battle(args: argparse.Namespace) -> int:
    """One battle: its ledger, flush history, and the score Tencent holds."""
    from worker.engine.state.keys import BattleKeys

    rt = _rt()
    bk = BattleKeys(args.battle_id)
    meta = rt.redis.hgetall(bk.meta)
    if not meta:
        print(f"unknown battle {args.battle_id}", file=sys.stderr)
        return 1
    out: dict[str, Any] = {"meta": meta}
    for name in ("pending", "inflight", "applied", "ledger", "corr", "unapplied", "recon"):
        out[name] = rt.redis.hgetall(getattr(bk, name))
    out["flushes"] = [json.loads(x) for x in rt.redis.lrange(bk.flushes, 0, 19)]
    try:
        info = rt.client.get_battle_info(args.battle_id)
        out["tencent"] = {r.RoomId: r.Score for r in info.rooms}
    except Exception as err:  # the operator still gets our side
        out["tencent"] = f"unavailable: {err}"
    print(json.dumps(out, indent=2, default=str))
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    """List or replay dead letters."""
    from worker.engine import deadletters
    from worker.engine.ingest.replay import replay

    rt = _rt()
    if args.action == "list":
        for i, entry in enumerate(deadletters.list_entries(rt, args.limit)):
            print(json.dumps({"index": i, **entry}))
        return 0
    counts = replay(rt)
    print(json.dumps(counts))
    return 0
