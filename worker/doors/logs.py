"""Logging: text or JSON lines with battle/room/flush/RequestId fields; secrets redacted."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.engine.settings import Settings

#: The text format of a process's own stderr log (a worker's and the beat's are Celery's).
TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(name)s] %(message)s"
#: Record attributes copied into JSON lines when a log call passes them in `extra`.
CONTEXT_FIELDS = ("battle_id", "room_id", "flush_id", "request_id", "event_id", "source",
                  "status", "api", "outcome")


class RedactSecrets(logging.Filter):
    """Replace any occurrence of the given secrets in a record's final message (defence in
    depth: no code path logs the key, but a library error might echo a URL or header)."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        msg = record.getMessage()
        redacted = msg
        for s in self.secrets:
            redacted = redacted.replace(s, "********")
        if redacted != msg:
            record.msg, record.args = redacted, ()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and context fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "time": time.strftime(
                   "%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
               "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        for f in CONTEXT_FIELDS:
            v = getattr(record, f, None)
            if v is not None:
                out[f] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def secrets_of(settings: Settings) -> list[str]:
    """Every secret a process with these settings may hold, for the log filter: the Tencent
    key and the callback token (when set), the Sentinels' password, the Redis URLs'
    passwords. One list for the worker, beat, the metrics process and the receiver."""
    out = [v.get_secret_value() for v in (getattr(settings, "secret_key", None),
                                          settings.callback_token) if v]
    out.append(settings.sentinel_secret or "")
    return out + url_passwords(settings.redis_url, settings.state_url)


def url_passwords(*urls: str | None) -> list[str]:
    """The passwords in these Redis URLs (each URL of a ';' Sentinel list), as written and
    percent-decoded: secrets for the log filter."""
    from urllib.parse import unquote, urlsplit

    out: list[str] = []
    for url in urls:
        for part in (url or "").split(";"):
            try:
                password = urlsplit(part.strip()).password
            except ValueError:
                continue
            if password:
                out += [password, unquote(password)]
    return out


def configure(handlers: list[logging.Handler], fmt: str, secrets: list[str]) -> None:
    """Apply the chosen format and the secret filter to these handlers."""
    redact = RedactSecrets(secrets)
    for h in handlers:
        if fmt == "json":
            h.setFormatter(JsonFormatter())
        h.addFilter(redact)


def to_stderr(settings: Settings, loggers: Iterable[str] = ("scorer",),
              text_format: str = TEXT_FORMAT) -> logging.Handler:
    """Send these loggers (INFO and up, not propagated; "" is the root) to stderr, text or
    JSON (SCORER_LOG_FORMAT), every secret of `settings` redacted as a last line of defence:
    the log of a process Celery does not set up (metrics, the receiver, the end game)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(text_format))
    configure([handler], settings.log_format, secrets_of(settings))
    for name in loggers:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return handler
