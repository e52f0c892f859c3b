"""Test helpers: the body builders (from scorer_local.bodies) and waiting for a condition."""

from __future__ import annotations

import time

from scorer_local.bodies import end_body, gift_body, start_body

__all__ = ["end_body", "gift_body", "start_body", "wait_for"]


def wait_for(pred, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    """Poll `pred` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)
