"""`python -m worker.doors.endgame_main`: the end game in a process of its own, beside the
control workers.

The end game's runner thread (worker/engine/flush/endgame.py) used to live in a control worker,
beside up to eight task threads flushing and reconciling and sixteen of its own: at 10,000
battles that process was CPU-bound, and a round waited for the GIL behind them. Its due
battles aged to 1.8 s, admitted calls left late and bunched up at Tencent (100012), and 20 to
400 battles in 10,000 missed their last value. In a process of its own the runner only
competes for a core, and the kernel wakes a mostly idle process at once. The control pool
starts it (worker/doors/control_pool.py); while it beats (`bs:endgame:dedicated`), the runner
threads of the control workers stand by.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from worker.doors.logs import to_stderr
from worker.engine.flush import endgame
from worker.engine.flush.flusher import flush_battle
from worker.engine.runtime import get_runtime
from worker.engine.settings import get_settings

#: The niceness the end game asks for: ahead of ingest, the control workers and anything else
#: on the host when 100 battles end in a second (it needs CAP_SYS_NICE: root, or the
#: capability; without it the process runs at the default, and says so).
PRIORITY = -5


def first_in_line() -> bool:
    """Ask the kernel to run this process before the others (PRIORITY); True if it did."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, PRIORITY)
    except OSError as err:
        logging.getLogger("scorer.endgame").info(
            "end game runs at the default priority (%s: needs CAP_SYS_NICE)", err.strerror)
        return False
    return True


def main() -> int:
    """Run the end game until SIGTERM."""
    # Every logger of the process (the root), named "endgame" in text lines.
    to_stderr(get_settings(), ("",), "[%(asctime)s: %(levelname)s/endgame] %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its URLs carry the UserSig
    first_in_line()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    rt = get_runtime()
    _ = rt.client.http  # made now, not by the first flushes at the buzzer (TLS context: ms)
    endgame.run_dedicated(rt, flush_battle, stop)
    return 0


if __name__ == "__main__":
    from worker.doors import control_pool

    control_pool.die_with_parent()
    sys.exit(main())
