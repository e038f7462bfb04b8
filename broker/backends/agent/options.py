"""The agent backend's settings (``BROKER_DATABASE_URL``, ``BROKER_AGENT_TRACING``,
``BROKER_RUN_TIMEOUT``), parsed without importing the heavy agent libraries, so config
validation stays fast and reports these problems beside every other one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = [
    "DEFAULT_DATABASE_URL",
    "MEMORY_URL",
    "AgentOptions",
    "DatabaseURLError",
    "load_agent_options",
    "resolve_database_url",
]

DEFAULT_DATABASE_URL = "sqlite:///./chatkit-broker.sqlite3"
MEMORY_URL = "sqlite+aiosqlite://"
DEFAULT_RUN_TIMEOUT = 120.0


class DatabaseURLError(ValueError):
    """``BROKER_DATABASE_URL`` is not a database this store can use (a configuration error)."""


@dataclass(frozen=True)
class AgentOptions:
    """What agent workflows (and mock mode's threads) need besides the workflows."""

    database_url: str = field(
        default=MEMORY_URL, repr=False
    )  # async driver URL; may hold a password
    tracing: bool = False
    run_timeout: float = DEFAULT_RUN_TIMEOUT


def resolve_database_url(value: str | None, *, mock: bool = False) -> str:
    """The SQLAlchemy async URL for ``BROKER_DATABASE_URL`` as people write it.

    Unset means an in-memory database in mock mode and ``./chatkit-broker.sqlite3``
    otherwise; ``memory`` asks for the in-memory one explicitly. ``sqlite:///path`` and
    ``postgresql://…`` are mapped to the aiosqlite and asyncpg drivers.
    """
    raw = (value or "").strip()
    if not raw:
        return MEMORY_URL if mock else resolve_database_url(DEFAULT_DATABASE_URL)
    if raw in {"memory", "memory://", "sqlite://", "sqlite:///:memory:", MEMORY_URL}:
        return MEMORY_URL
    scheme, sep, rest = raw.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise DatabaseURLError(
            "BROKER_DATABASE_URL must look like sqlite:///path/to/file.sqlite3, "
            "postgresql://user@host:5432/dbname or memory."
        )
    if scheme in {"sqlite", "sqlite+aiosqlite"}:
        if rest in {"", "/:memory:"}:
            return MEMORY_URL
        if not rest.startswith("/") or rest == "/":
            raise DatabaseURLError(
                "BROKER_DATABASE_URL for SQLite needs three slashes and a path: "
                "sqlite:///relative.sqlite3 or sqlite:////absolute/path.sqlite3."
            )
        return f"sqlite+aiosqlite://{rest}"
    if scheme in {"postgres", "postgresql", "postgresql+asyncpg"}:
        # asyncpg takes `ssl`, not libpq's `sslmode`; accept the libpq spelling people copy.
        parts = urlsplit("x://" + rest)
        query = [("ssl" if k == "sslmode" else k, v) for k, v in parse_qsl(parts.query)]
        rest = rest.split("?", 1)[0] + (f"?{urlencode(query)}" if query else "")
        return f"postgresql+asyncpg://{rest}"
    raise DatabaseURLError(
        f"BROKER_DATABASE_URL uses {scheme!r}; only sqlite:///…, postgresql://… and memory "
        "are supported."
    )


def load_agent_options(
    get: Callable[[str], str | None], *, mock: bool, problems: list[str]
) -> AgentOptions:
    """Parse the agent settings from ``get`` (name → value or None), adding problems."""
    try:
        url = resolve_database_url(get("BROKER_DATABASE_URL"), mock=mock)
    except DatabaseURLError as exc:
        problems.append(str(exc))
        url = MEMORY_URL
    tracing_raw = (get("BROKER_AGENT_TRACING") or "0").strip().lower()
    if tracing_raw not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
        problems.append("BROKER_AGENT_TRACING must be 1 or 0")
    tracing = tracing_raw in ("1", "true", "yes", "on")
    raw_timeout = get("BROKER_RUN_TIMEOUT") or str(DEFAULT_RUN_TIMEOUT)
    try:
        timeout = float(raw_timeout)
    except ValueError:
        timeout = -1.0
    if not 1 <= timeout <= 3600:
        problems.append(f"BROKER_RUN_TIMEOUT must be seconds from 1 to 3600, got {raw_timeout!r}")
        timeout = DEFAULT_RUN_TIMEOUT
    return AgentOptions(database_url=url, tracing=tracing, run_timeout=timeout)
