"""Logging: one line per event, JSON for machines or text for a terminal, request id on each.

A last-resort filter scrubs anything shaped like an API key, a JWT or a client secret, so a
careless log call cannot leak one; the code is written not to log them in the first place.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from contextvars import ContextVar

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")

_SECRET_RE = re.compile(
    r"sk-[A-Za-z0-9_-]{8,}"  # OpenAI API keys
    r"|eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*"  # JWTs
    r"|\bek_[A-Za-z0-9_-]{4,}|\bmock_[A-Za-z0-9_.-]{16,}"  # ChatKit client secrets
    r"|Bearer\s+\S+",
)
ACCESS_FIELDS = (
    "method",
    "path",
    "status",
    "ms",
    "user",
    "workflow",
    "outcome",
    "chatkit_type",
    "relayed_bytes",
    "ttfb_ms",
)


def redact(text: str) -> str:
    return _SECRET_RE.sub("[redacted]", text)


class _Context(logging.Filter):
    def __init__(self, extra_secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self._secrets = tuple(s for s in extra_secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        if record.name != "broker.access":
            message = redact(record.getMessage())
            for secret in self._secrets:
                message = message.replace(secret, "[redacted]")
            record.msg, record.args = message, None
            if record.exc_info and not record.exc_text:
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for key in ACCESS_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                data[key] = value
        if record.exc_text:
            data["exc"] = record.exc_text
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname:<7} [{getattr(record, 'request_id', '-')}] {record.getMessage()}"
        extras = " ".join(
            f"{k}={getattr(record, k)}"
            for k in ("user", "workflow", "outcome", "chatkit_type", "relayed_bytes", "ttfb_ms")
            if getattr(record, k, None) is not None
        )
        if extras:
            line += " " + extras
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


def setup_logging(fmt: str, level: str, *, secrets: tuple[str, ...] = ()) -> None:
    """Route the broker's and uvicorn's logs through one handler on stderr."""
    # Neither formatter prints thread, process or caller, so don't collect them for every
    # record: the logging HOWTO's "Optimization" switches, worth ~40% of an access line.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # no findCaller() stack walk per record
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_Context(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True


def mask(key: str) -> str:
    """``sk-proj-…abcd``: enough to tell keys apart, never enough to use one."""
    prefix = "sk-proj-" if key.startswith("sk-proj-") else key[:3]
    return f"{prefix}…{key[-4:]}" if len(key) > 12 else "…"
