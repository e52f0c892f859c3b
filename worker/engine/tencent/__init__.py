"""Tencent TUILiveKit REST client: URLs, UserSig, typed models and outcome classification."""

from worker.engine.tencent.client import TencentClient
from worker.engine.tencent.errors import Outcome, TencentError

__all__ = ["Outcome", "TencentClient", "TencentError"]
