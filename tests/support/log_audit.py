"""No secret in any log the suite produces: a pytest plugin (registered in tests/conftest.py).

Two kinds of log reach it, spooled to one file for the session with where each came from:

- every log record of the test process (the in-process apps, the fakes, the example server),
  through a root handler installed for the session — formatted as the broker's own stderr
  handler would write it (its JSON formatter behind its redaction filter, on a copy of the
  record), so what is scanned is what would have been *logged*, after redaction; the root
  logger is raised to INFO, the broker's default level, so the access lines are seen too
  (httpx's INFO line per request is skipped: it is the tests' own clients, naming URLs);
- the log file of every subprocess the helpers start (``BrokerProcess.stop``,
  ``adversarial.broker_process``, ``load.spawn``, …), handed over with ``collect_file``.

When the session ends, each chunk is scanned for ``SECRET_PATTERNS`` and for the secret
values the fixtures created (``add_secret``: the ``token`` fixture, every ``SecretWatch``,
the secret-named variables of every subprocess environment, the secret-named constants of
the test modules). A leak fails the run — exit status 1 — with a line naming the pattern and
the test or file it was in, and at most the secret's first four characters.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from broker.logs import JSONFormatter, _Context

from .adversarial import SECRET_PATTERNS

# environment variables and module constants whose values are secrets
_SECRET_NAME = re.compile(r"SECRET|_KEY$|^KEY$|PASSWORD|TOKEN|PRIVATE", re.I)
_HEADER = "\x00\x1f@@ "  # starts the line that names a chunk's origin in the spool
_MIN_VALUE = 12  # shorter values would match ordinary words


@dataclass(frozen=True)
class Leak:
    what: str  # the pattern's name, or "secret value"
    where: str  # test id, and the log file for a subprocess's log
    hint: str  # never more than the secret's first four characters


class Audit:
    """The session's spool of log text and the secret values to look for in it."""

    def __init__(self, spool: Path) -> None:
        self.spool_path = spool
        self._spool = spool.open("w", encoding="utf-8", errors="replace")
        self.values: set[str] = set()
        self.where = "(collection)"
        self._current: str | None = None
        self.lines = 0
        self.files = 0

    def add_secret(self, *values: Any) -> None:
        for value in values:
            if isinstance(value, str) and len(value) >= _MIN_VALUE and "\n" not in value[:64]:
                self.values.add(value)
            elif isinstance(value, str) and "PRIVATE KEY" in value:
                self.values.add(value.strip().splitlines()[1])  # a PEM: its first base64 line

    def add_env(self, env: Mapping[str, str] | None) -> None:
        for name, value in (env or {}).items():
            if _SECRET_NAME.search(name) and value and not value.startswith("@"):
                self.add_secret(value, *value.split(","))  # a rotation list: each key too

    def write(self, where: str, text: str) -> None:
        if not text:
            return
        if where != self._current:
            self._spool.write(f"{_HEADER}{where}\n")
            self._current = where
        self._spool.write(text if text.endswith("\n") else text + "\n")
        self.lines += text.count("\n") + (not text.endswith("\n"))

    def collect_file(self, path: Path | str) -> None:
        path = Path(path)
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return
        self.files += 1
        self.write(f"{self.where} [{path.name}]", text)
        self._current = None  # the next in-process line starts a new chunk

    def chunks(self) -> Iterator[tuple[str, str]]:
        self._spool.flush()
        where, lines = "(unknown)", []
        with self.spool_path.open(encoding="utf-8", errors="replace") as spool:
            for line in spool:
                if line.startswith(_HEADER):
                    if lines:
                        yield where, "".join(lines)
                    where, lines = line[len(_HEADER) :].rstrip("\n"), []
                else:
                    lines.append(line)
        if lines:
            yield where, "".join(lines)

    def scan(self) -> list[Leak]:
        """Every (pattern or value, origin) found once; the values that match a pattern are
        found by the pattern, the rest by substring."""
        plain = [v for v in self.values if not any(p.search(v) for p in SECRET_PATTERNS.values())]
        leaks: dict[tuple[str, str], Leak] = {}
        for where, text in self.chunks():
            for what, pattern in SECRET_PATTERNS.items():
                match = pattern.search(text)
                if match is not None:
                    leaks.setdefault((what, where), Leak(what, where, match.group(0)[:4]))
            for value in plain:
                if value in text:
                    leaks.setdefault(
                        ("secret value", where), Leak("secret value", where, value[:4])
                    )
        return list(leaks.values())

    def close(self) -> None:
        self._spool.close()


class _Handler(logging.Handler):
    """Writes each record as the broker's stderr handler would (redacted JSON)."""

    def __init__(self, audit: Audit) -> None:
        super().__init__(logging.NOTSET)
        self.audit = audit
        self.redact = _Context()
        self.formatter_ = JSONFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "httpx" and record.levelno < logging.WARNING:
            # "HTTP Request: POST <url>" of the tests' own clients, which put secrets in query
            # strings on purpose; the broker's outbound URLs carry none (keys go in headers)
            return
        try:
            shown = copy.copy(record)  # the filter rewrites msg: caplog must see the original
            self.redact.filter(shown)
            self.audit.write(self.audit.where, self.formatter_.format(shown))
        except Exception:  # a log call must never fail a test; the text is lost, not hidden
            self.handleError(record)


_audit: Audit | None = None
_report: list[str] = []  # printed in the terminal summary, after the scan


def add_secret(*values: Any) -> None:
    """Look for these values in every log at the end of the session."""
    if _audit is not None:
        _audit.add_secret(*values)


def add_env(env: Mapping[str, str] | None) -> None:
    """The secret-named variables of a subprocess's environment (``*_SECRET``, ``*_KEY``, …)."""
    if _audit is not None:
        _audit.add_env(env)


def collect_file(path: Path | str) -> None:
    """A subprocess's log file, read now (it may live in a directory removed later)."""
    if _audit is not None:
        _audit.collect_file(path)


def _module_constants(modules: Iterable[Any]) -> Iterator[str]:
    for module in modules:
        for name, value in vars(module).items():
            if name.isupper() and _SECRET_NAME.search(name) and isinstance(value, str):
                yield value


# --- the pytest hooks ---------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    global _audit
    if _audit is not None or hasattr(config, "workerinput"):
        return
    spool = Path(tempfile.mkstemp(prefix="log-audit-", suffix=".txt")[1])
    _audit = Audit(spool)
    from . import env

    _audit.add_secret(env.API_KEY, env.SECRET)
    handler = _Handler(_audit)
    root = logging.getLogger()
    root.addHandler(handler)
    config.stash[_HANDLER] = (handler, root.level)
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)


_HANDLER = pytest.StashKey[tuple[logging.Handler, int]]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if _audit is not None:
        modules = {item.module for item in items if getattr(item, "module", None) is not None}
        _audit.add_secret(*_module_constants(modules))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    if _audit is not None:
        _audit.where = item.nodeid
    yield
    if _audit is not None:
        _audit.where = "(between tests)"


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _audit
    audit = _audit
    if audit is None:
        return
    handler, level = session.config.stash[_HANDLER]
    root = logging.getLogger()
    root.removeHandler(handler)
    root.setLevel(level)
    leaks = audit.scan()
    audit.close()
    _audit = None
    if not leaks:
        _report.append(f"{audit.lines} log lines ({audit.files} subprocess logs) hold no secret")
        os.unlink(audit.spool_path)
        return
    _report.append(f"{len(leaks)} secret(s) in the suite's logs (spool {audit.spool_path}):")
    for leak in sorted(leaks, key=lambda x: (x.where, x.what)):
        _report.append(f"  a {leak.what} ({leak.hint}…) in the log of {leak.where}")
    if session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _report:
        terminalreporter.write_sep("-", "log audit")
        for line in _report:
            terminalreporter.write_line(line)
