"""The access log: under ``serve``'s JSON handler each line is written directly, and must be
the very line ``JSONFormatter`` would have written; with any other listener (a test's caplog,
text logs) a normal record goes through ``logging``."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator

import pytest

from broker import logs
from broker.logs import AccessLog, JSONFormatter, setup_logging

STATES = [
    {"request_id": "abc123", "user": "alice", "workflow": "support"},
    {"request_id": "r2", "user": 'quo"te\\back\nslash', "workflow": "wf ünïcode ✓"},
    {
        "request_id": "r3",
        "user": "bob",
        "workflow": "gw",
        "outcome": "complete",
        "chatkit_type": "threads.create",
        "relayed_bytes": 12345,
        "ttfb_ms": 3.25,
    },
    {"request_id": "r4"},
]
PATHS = ["/api/chatkit/session", "/chatkit/ünï code", '/x"y\\z']


@pytest.fixture
def json_stream() -> Iterator[io.StringIO]:
    """``setup_logging``'s JSON handler, writing to a string (restored afterwards)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    setup_logging("json", "info")
    stream = io.StringIO()
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    yield stream
    root.handlers[:], _ = saved
    root.setLevel(saved[1])
    logs._direct = None


@contextlib.contextmanager
def only_broker_handler() -> Iterator[None]:
    """Without pytest's own capture handlers on the root, as under ``serve``."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [logs._direct]
    try:
        yield
    finally:
        root.handlers[:] = saved


def _formatter_line(method: str, path: str, status: int, ms: float, state: dict) -> dict:
    """What JSONFormatter makes of the same line sent through ``logging``."""
    record = logging.LogRecord(
        "broker.access", logging.INFO, "", 0, "%s %s %d %.1fms", (method, path, status, ms), None
    )
    record.request_id = state["request_id"]
    for key in ("method", "path", "status", "ms"):
        setattr(record, key, {"method": method, "path": path, "status": status, "ms": ms}[key])
    for key in logs.ACCESS_FIELDS[4:]:
        setattr(record, key, state.get(key))
    return json.loads(JSONFormatter().format(record))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("state", STATES)
def test_the_direct_line_is_the_formatters_line(json_stream, path, state):
    with only_broker_handler():
        AccessLog().request("POST", path, 429, 0.0123456, state)
    text = json_stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    written = json.loads(text)
    expected = _formatter_line("POST", path, 429, 12.35, state)
    assert abs(written.pop("ts") - expected.pop("ts")) < 5
    assert written == expected
    assert list(written) == list(expected)  # same keys in the same order


def test_another_listener_gets_a_record_instead(json_stream, caplog):
    with caplog.at_level(logging.INFO, logger="broker.access"):
        AccessLog().request("GET", "/healthz", 200, 0.001, {"request_id": "x1", "user": "eve"})
    (record,) = [r for r in caplog.records if r.name == "broker.access"]
    assert (record.path, record.status, record.user) == ("/healthz", 200, "eve")


def test_no_line_below_info(json_stream):
    logging.getLogger().setLevel(logging.WARNING)
    with only_broker_handler():
        AccessLog().request("GET", "/healthz", 200, 0.001, {"request_id": "x"})
    assert json_stream.getvalue() == ""
