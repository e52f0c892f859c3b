"""Tencent TUILiveKit REST client: URLs, UserSig, typed models and outcome classification."""

from worker.tencent.client import TencentClient
from worker.tencent.errors import Outcome, TencentError

__all__ = ["TencentClient", "TencentError", "Outcome"]
