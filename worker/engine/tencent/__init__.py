"""Tencent TUILiveKit REST client: URLs, UserSig, typed models, outcome classification, and
the shared rate limiter."""

from worker.engine.tencent.client import TencentClient
from worker.engine.tencent.errors import Outcome, TencentError

__all__ = ["Outcome", "TencentClient", "TencentError"]
