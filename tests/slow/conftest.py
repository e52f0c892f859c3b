"""Slow tests (chaos, demo, compose, Flower): `make test` runs them; `-m 'not slow'` skips them."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this folder `slow` (and `integration`: they start processes too)."""
    for item in items:
        if "/tests/slow/" in str(item.path):
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.integration)
