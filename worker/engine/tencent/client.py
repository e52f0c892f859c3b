"""HTTP client for Tencent's REST APIs: signed URLs, pooled httpx, limiter, retries, typed calls."""

from __future__ import annotations

import logging
import os
import random
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import ValidationError

from worker.engine.settings import Settings
from worker.engine.tencent.errors import (
    SIG_EXPIRED,
    Outcome,
    RateLimitTimeout,
    TencentError,
    classify_code,
    classify_exception,
    classify_status,
)
from worker.engine.tencent.limiter import Departure, Limiter, NoLimiter
from worker.engine.tencent.models import (
    BattleInfo,
    GiftCount,
    GiftCountRequest,
    ScoreItem,
    SetBattleScoreRequest,
    SetBattleScoreResult,
)
from worker.engine.tencent.usersig import UserSigCache
from worker.engine.timers import TIMERS

log = logging.getLogger("scorer.tencent")
# httpx logs every request at INFO with its full URL, whose query holds the UserSig (a
# credential for a day): keep those lines out of every log.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)

#: API name → REST service.
SERVICES = {
    "set_battle_score": "live_engine_http_pk",
    "get_battle_info": "live_engine_http_pk",
    "create_battle": "live_engine_http_pk",
    "get_gift_count": "live_engine_http_srv",
}

#: Explicit timeouts: connecting is cheap to retry; a slow read is the ambiguous case.
DEFAULT_TIMEOUT = httpx.Timeout(connect=TIMERS.tencent.connect, read=TIMERS.tencent.read,
                                write=TIMERS.tencent.write, pool=TIMERS.tencent.pool)


#: `admitted=ADMITTED`: the caller already holds the limiter's slot for the first attempt.
ADMITTED = -1.0


class TencentClient:
    """One per process: a pooled httpx client, a cached UserSig, and the shared rate limiter."""

    def __init__(self, settings: Settings, limiter: Limiter | None = None,
                 timeout: httpx.Timeout = DEFAULT_TIMEOUT, max_attempts: int = 4,
                 backoff: float = 0.2, sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = settings.api_base_url
        self.sdkappid = settings.sdkappid
        self.identifier = settings.admin_id
        self.sigs = UserSigCache(settings.sdkappid, settings.secret_key.get_secret_value(),
                                 settings.admin_id)
        self.limiter = limiter or NoLimiter()
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff = backoff
        self._sleep = sleep
        self._http: httpx.Client | None = None
        self._pid = 0
        self._http_mu = threading.Lock()
        #: metrics hook: (api, outcome, seconds, seconds waited for the limiter)
        self.on_call: Callable[[str, str, float, float], None] | None = None
        #: clock hook: (the answer's Date header, time sent, time answered), both on `clock`
        self.on_answer: Callable[[str, float, float], None] | None = None
        #: the clock the send and answer times are read on (the runtime's: Redis's clock)
        self.clock: Callable[[], float] = time.time

    def __repr__(self) -> str:
        return f"TencentClient(base_url={self.base_url!r}, sdkappid={self.sdkappid})"

    # -- transport -------------------------------------------------------------------------

    @property
    def http(self) -> httpx.Client:
        """The pooled connection, made once per process (again after a fork): unguarded, the end
        game's 16 threads each built one with its TLS context at once, 2 s of CPU at the buzzer."""
        http = self._http
        if http is not None and self._pid == os.getpid():
            return http
        with self._http_mu:
            if self._http is None or self._pid != os.getpid():
                # (All 20 kept alive, against 100012: 170 calls/s at 10,000 battles, not 175.)
                self._http = httpx.Client(timeout=self.timeout,
                                          limits=httpx.Limits(max_connections=20,
                                                              max_keepalive_connections=10))
                self._pid = os.getpid()
            return self._http

    def close(self) -> None:
        """Close the pooled connection."""
        if self._http is not None and self._pid == os.getpid():
            self._http.close()
        self._http = None

    def url(self, api: str) -> str:
        """The endpoint URL without its query string."""
        return f"{self.base_url}/v4/{SERVICES[api]}/{api}"

    def query(self) -> dict[str, str]:
        """Signed query parameters, with a fresh uint32 `random` per request."""
        return {
            "sdkappid": str(self.sdkappid),
            "identifier": self.identifier,
            "usersig": self.sigs.get(),
            "random": str(secrets.randbits(32)),
            "contenttype": "json",
        }

    def _send_once(self, api: str, body: dict[str, Any],
                   on_send: Callable[[], None] | None = None,
                   max_wait: float | None = None, lane: str = "high",
                   read_timeout: float | None = None,
                   fence: Callable[[], bool] | None = None) -> dict[str, Any]:
        """One HTTP exchange; returns Tencent's JSON or raises a classified TencentError.
        `on_send` runs once the limiter has admitted the call, just before it leaves;
        `max_wait` ADMITTED: the caller holds the slot; else how long to wait for one."""
        waited = 0.0 if max_wait == ADMITTED else self.limiter.acquire(api, max_wait, lane)
        if on_send is not None:
            on_send()
        departure = Departure(self.limiter, api, self.clock, fence)  # as it leaves
        started = time.monotonic()
        sent_at = self.clock()  # until the trace hook says when it left (a mock never does)
        try:
            timeout = self.timeout if read_timeout is None else httpx.Timeout(
                connect=self.timeout.connect, read=read_timeout, write=self.timeout.write,
                pool=self.timeout.pool)
            resp = self.http.post(self.url(api), params=self.query(), json=body,
                                  timeout=timeout, extensions={"trace": departure.trace})
        except httpx.HTTPError as exc:
            outcome = classify_exception(exc)
            # the send log's hold is a wait, not Tencent's latency
            self._observe(api, outcome.value, started + departure.held, waited + departure.held)
            raise TencentError(api, outcome, type(exc).__name__) from None
        waited += departure.held
        started += departure.held
        date = resp.headers.get("date")
        if date and self.on_answer is not None:
            try:
                self.on_answer(date, departure.at or sent_at, self.clock())
            except Exception:  # the clock estimate never fails a call
                log.debug("clock sample dropped", exc_info=True)
        outcome = classify_status(resp.status_code)
        if outcome is not Outcome.success:
            self._observe(api, outcome.value, started, waited)
            raise TencentError(api, outcome, f"HTTP {resp.status_code}", status=resp.status_code)
        try:
            data = resp.json()
        except ValueError:
            # Tencent received it and answered garbage: we cannot tell whether it applied.
            self._observe(api, Outcome.ambiguous.value, started, waited)
            raise TencentError(api, Outcome.ambiguous, "unparseable answer", status=200) from None
        code = int(data.get("ErrorCode", 0) or 0)
        request_id = data.get("RequestId")
        outcome = classify_code(code)
        self._observe(api, outcome.value, started, waited)
        if outcome is not Outcome.success:
            raise TencentError(api, outcome, str(data.get("ErrorInfo", ""))[:200], code=code,
                               request_id=request_id, status=200)
        if waited > 0.5:
            log.info("rate limiter held %s for %.2fs", api, waited)
        return data

    def _observe(self, api: str, outcome: str, started: float, waited: float) -> None:
        if self.on_call is not None:
            self.on_call(api, outcome, time.monotonic() - started, waited)

    # -- retries ---------------------------------------------------------------------------

    def call(self, api: str, body: dict[str, Any], *, max_attempts: int | None = None,
             on_send: Callable[[], None] | None = None, max_wait: float | None = None,
             lane: str = "high", read_timeout: float | None = None,
             fence: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Call `api`, retrying only what is certainly not applied; raise TencentError else.

        A 70001 (UserSig expired) is retried once with a fresh sig; retryable outcomes back
        off exponentially with jitter. Ambiguous and final outcomes raise at once: only the
        caller knows a path that cannot double-count. `max_wait` bounds each wait for the
        limiter (ADMITTED: the first attempt's slot is already held; later ones do not wait).
        `fence()` is asked as each attempt starts out to the socket; False stops it unsent
        (Fenced, never retried here).
        """
        attempts = max_attempts or self.max_attempts
        renewed = False
        for attempt in range(1, attempts + 1):
            try:
                wait = max_wait if attempt == 1 or max_wait != ADMITTED else 0.0
                return self._send_once(api, body, on_send, wait, lane, read_timeout, fence)
            except RateLimitTimeout:
                raise  # never sent; how much longer to wait is the caller's choice, not a retry
            except TencentError as err:
                log.warning("tencent call failed: %s (attempt %d/%d)", err, attempt, attempts)
                if err.code == SIG_EXPIRED:
                    if renewed:
                        raise TencentError(api, Outcome.refused, "UserSig refused after renewal",
                                           code=err.code, request_id=err.request_id) from None
                    renewed = True
                    self.sigs.invalidate()
                    continue
                if err.outcome is not Outcome.retryable or attempt == attempts:
                    raise
                delay = self.backoff * (2 ** (attempt - 1))
                self._sleep(delay * (0.5 + random.random()))
        raise AssertionError("unreachable")  # pragma: no cover

    # -- typed APIs ------------------------------------------------------------------------

    def set_battle_score(self, battle_id: str, op_type: int, scores: dict[str, int], *,
                         max_attempts: int | None = None,
                         on_send: Callable[[], None] | None = None,
                         max_wait: float | None = None, lane: str = "high",
                         read_timeout: float | None = None,
                         fence: Callable[[], bool] | None = None) -> SetBattleScoreResult:
        """OpType 1 adds `scores` to each room, 2 overwrites; returns per-room ResultCodes.
        `read_timeout`: how long to wait for the answer (default: the client's 5 s); `fence`:
        see `call` (a writer passes its lock's lease)."""
        req = SetBattleScoreRequest(
            BattleId=battle_id, OpType=op_type,
            ScoreList=[ScoreItem(RoomId=r, Score=s) for r, s in scores.items()])
        data = self.call("set_battle_score", req.model_dump(), max_attempts=max_attempts,
                         on_send=on_send, max_wait=max_wait, lane=lane,
                         read_timeout=read_timeout, fence=fence)
        resp = _parse(api="set_battle_score", model=SetBattleScoreResult, data=data)
        resp.RequestId = data.get("RequestId")
        return resp

    def get_gift_count(self, room_id: str, owner: str, *,
                       max_wait: float | None = None) -> GiftCount:
        """Cumulative totals of gifts to `owner` in `room_id` since the room was created."""
        req = GiftCountRequest(RoomId=room_id, From_Account=owner)
        data = self.call("get_gift_count", req.model_dump(), max_wait=max_wait)
        out = _parse(api="get_gift_count", model=GiftCount, data=data)
        out.RequestId = data.get("RequestId")
        return out

    def get_battle_info(self, battle_id: str, *, max_wait: float | None = None,
                        max_attempts: int | None = None,
                        read_timeout: float | None = None) -> BattleInfo:
        """Membership, timing and current scores of a battle."""
        data = self.call("get_battle_info", {"BattleId": battle_id}, max_wait=max_wait,
                         max_attempts=max_attempts, read_timeout=read_timeout)
        out = _parse(api="get_battle_info", model=BattleInfo, data=data)
        out.RequestId = data.get("RequestId")
        return out


def _parse(*, api: str, model: Any, data: dict[str, Any]) -> Any:
    """Tencent's `Response` as `model`; an answer that lacks a field or holds a value out of
    the model's bounds raises a classified TencentError (ambiguous: ErrorCode 0 said the
    request was processed), never a bare ValidationError that no caller expects (a poison
    answer made a batch retry for ever)."""
    try:
        return model.model_validate(data.get("Response") or {})
    except ValidationError as err:
        raise TencentError(api, Outcome.ambiguous, f"malformed answer: {err.error_count()} "
                           "field error(s)", request_id=data.get("RequestId"),
                           status=200) from None
