"""Helpers shared by the adversarial tests: the environment of a real broker process, a
watch list of secrets that must never reach its log, and the process's memory."""

from __future__ import annotations

import contextlib
import logging
import re
import resource
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import API_KEY, SECRET, BrokerProcess, wait_until_serving
from .env import hosted_env
from .jwt_kit import token
from .processes import START_TIMEOUT, start_broker

# Patterns of the secrets the tests create: the fake mints ``ek_`` + 48 hex, the broker's own
# session secrets are ``cks_`` + an itsdangerous token, JWTs are two base64url JSON objects and
# a signature.
SECRET_PATTERNS = {
    "API key": re.compile(re.escape(API_KEY)),
    "JWT": re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"),
    "client_secret": re.compile(r"ek_[0-9a-f]{48}"),
    "session secret": re.compile(r"cks_[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_.-]{10,}"),
    "Authorization value": re.compile(r"Bearer\s+[A-Za-z0-9_.-]{16,}"),
    "JWT secret": re.compile(re.escape(SECRET)),
    # a gateway assertion is a JWT too; this catches one logged with its header name, however cut
    "ChatKit-Broker-Assertion value": re.compile(
        r"(?i)chatkit[-_]broker[-_]assertion[\"':=\s]+(?:bearer\s+)?eyJ"
    ),
}


_WORD = re.compile(r"[A-Za-z0-9_.~+/=-]{8,}")


def live_env(base_url: str, **overrides: str | None) -> dict[str, str]:
    """A live configuration against the fake OpenAI at ``base_url`` (its ``/v1``), with
    rate limits out of the way (these tests measure other things)."""
    quiet: dict[str, str | None] = {
        "BROKER_LOG_LEVEL": "info",
        "BROKER_RATE_LIMIT": "1000000/minute",
        "BROKER_IP_RATE_LIMIT": "10000000/minute",
        "BROKER_TEST_PAGE": "0",
    }
    return hosted_env(base_url, **{**quiet, **overrides})


def mock_env(**overrides: str | None) -> dict[str, str]:
    env = live_env("http://127.0.0.1:9/v1", OPENAI_API_KEY=None, OPENAI_BASE_URL=None)
    env["BROKER_MOCK"] = "1"
    env.update({k: v for k, v in overrides.items() if v is not None})
    return env


class SecretWatch:
    """Collects every secret value a test handled; ``check(log)`` fails if one is in the log."""

    def __init__(self) -> None:
        self.values: set[str] = {API_KEY, SECRET}

    def add(self, *values: str | None) -> None:
        from . import log_audit

        log_audit.add_secret(*values)  # and in every log of the session, not just this one
        for value in values:
            if value and len(value) >= 8:
                self.values.add(value)

    def check(self, log: str) -> int:
        """Assert no secret value or secret-shaped string appears; returns the lines checked."""
        if len(self.values) <= 2000:
            leaks = [v[:12] + "…" for v in self.values if v in log]
        else:  # tens of thousands of secrets (load test): compare whole words, not substrings
            words = set(_WORD.findall(log))
            leaks = [v[:12] + "…" for v in self.values if v in words]
        assert not leaks, f"secrets in the broker log: {leaks}"
        for what, pattern in SECRET_PATTERNS.items():
            match = pattern.search(log)
            assert match is None, f"a {what} is in the broker log: {match.group(0)[:16]}…"
        return log.count("\n")


def rss_mib(pid: int) -> float:
    """Resident memory of a process, MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def raise_fd_limit(want: int) -> int:
    """Raise this process's open-file limit towards ``want`` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@contextlib.contextmanager
def broker_process(
    env: dict[str, str],
    log_dir: Path,
    *args: str,
    port: int | None = None,
    start_timeout: float = START_TIMEOUT,
) -> Iterator[BrokerProcess]:
    """A real ``chatkit-broker serve`` for a whole module (``run_broker`` is per test)."""
    bp = start_broker(env, log_dir, *args, port=port)
    try:
        wait_until_serving(bp, start_timeout)
        yield bp
    finally:
        bp.stop()


def make_token(user: str, ttl: int = 3600) -> str:
    """A valid HS256 sign-in token for ``user`` (for module-scoped fixtures, which cannot use
    the function-scoped ``token`` fixture): ``jwt_kit.token`` with an hour to live."""
    return token(user, ttl=ttl)


def logged_text(caplog: Any, level: int = logging.NOTSET) -> str:
    """Every record pytest captured for the test at ``level`` or above — setup, call and
    teardown, tracebacks included. (``caplog.text`` in a fixture's teardown holds the
    teardown's records only.) The broker logs at INFO: pass that to judge what it would write."""
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
    return "\n".join(
        formatter.format(record)
        for when in ("setup", "call", "teardown")
        for record in caplog.get_records(when)
        if record.levelno >= level
    )
