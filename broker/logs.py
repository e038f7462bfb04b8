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
from typing import Any

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")

_SECRET_RE = re.compile(
    r"sk-[A-Za-z0-9_-]{8,}"  # OpenAI API keys
    r"|eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*"  # JWTs
    r"|\bek_[A-Za-z0-9_-]{4,}|\bmock_[A-Za-z0-9_.-]{16,}"  # ChatKit client secrets
    r"|\bckb_sk_[A-Za-z0-9_-]{4,}"  # service keys (broker/service_keys.py)
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
    "service_key",  # the name of the service key that called (never the key)
    "run",  # a background run's id
)


# one encoder for every line (``json.dumps`` with options builds a new one per call), and the
# C string quoter for the access line's text fields
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_quote = json.encoder.encode_basestring  # type: ignore[attr-defined]
_STATE_FIELDS = ACCESS_FIELDS[4:]  # user, workflow, …: what handlers put in scope["state"]
_direct: logging.StreamHandler | None = None  # the JSON handler of setup_logging, if any


class AccessLog:
    """One ``broker.access`` line per answered request, with the fields of ``ACCESS_FIELDS``.

    Under ``serve`` (JSON logs, the one handler ``setup_logging`` installed) the line is
    written straight to that handler's stream: the same JSON ``JSONFormatter`` writes, without
    a ``LogRecord``, filters or a formatter per request (about 5 µs instead of 28). Anywhere
    else — text logs, a test's ``caplog``, another handler — a normal record goes through
    ``logging``, so nothing that listens misses a line.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger("broker.access")

    def request(
        self, method: str, path: str, status: int, seconds: float, state: dict[str, Any]
    ) -> None:
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        ms = round(seconds * 1000, 2)
        handler = _direct
        root = logging.root
        if (
            handler is not None
            and len(root.handlers) == 1
            and root.handlers[0] is handler
            and logger.propagate
            and not logger.handlers
            and not logger.filters
        ):
            self._write(handler, method, path, status, ms, state)
            return
        record = logging.LogRecord(
            logger.name, logging.INFO, "", 0, "%s %s %d %.1fms", (method, path, status, ms), None
        )
        fields = record.__dict__
        fields["method"] = method
        fields["path"] = path
        fields["status"] = status
        fields["ms"] = ms
        for key in _STATE_FIELDS:
            fields[key] = state.get(key)
        logger.handle(record)

    def _write(
        self,
        handler: logging.StreamHandler,
        method: str,
        path: str,
        status: int,
        ms: float,
        state: dict[str, Any],
    ) -> None:
        quoted_path = _quote(path)
        parts = [
            '{"ts":',
            repr(round(time.time(), 3)),
            ',"level":"info","logger":"broker.access","msg":',
            _quote(f"{method} {path} {status} {ms:.1f}ms"),
            ',"request_id":',
            _quote(state.get("request_id") or request_id_var.get()),
            ',"method":',
            _quote(method),
            ',"path":',
            quoted_path,
            ',"status":',
            str(status),
            ',"ms":',
            repr(ms),
        ]
        for key in _STATE_FIELDS:
            value = state.get(key)
            if value is not None:
                parts.append(f',"{key}":')
                parts.append(_quote(value) if type(value) is str else _encode(value))
        parts.append("}\n")
        line = "".join(parts)
        handler.acquire()
        try:
            stream = handler.stream
            stream.write(line)
            stream.flush()
        except Exception:  # as StreamHandler.emit: a broken log must not break the answer
            record = logging.LogRecord("broker.access", logging.INFO, "", 0, line, None, None)
            handler.handleError(record)
        finally:
            handler.release()


def redact(text: str) -> str:
    return _SECRET_RE.sub("[redacted]", text)


def failure(exc: BaseException) -> str:
    """An error as part of one log line: its type and its message's first line (a log line
    carries no traceback; the type and first line say what happened)."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first[:300]}" if first else type(exc).__name__


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
        return _encode(data)


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
    global _direct
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_Context(secrets))
    _direct = handler if fmt == "json" else None
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
