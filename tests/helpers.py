"""Test helpers: the body builders (from scorer_local.bodies) and waiting for a condition."""

from __future__ import annotations

import time

from scorer_local.bodies import end_body, gift_body, start_body

__all__ = ["end_body", "gift_body", "start_body", "wait_for"]


def wait_for(pred, timeout: float = 20.0, interval: float = 0.05, what: str = "condition",
             detail=None):
    """Poll `pred` until it returns a truthy value; fail after `timeout` seconds (the message
    ends with `detail()`, when given: the state that explains the wait)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            more = f"; {detail()}" if detail else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{more}")
        time.sleep(interval)
