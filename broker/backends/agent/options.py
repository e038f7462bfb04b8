"""The agent backend's settings (``BROKER_DATABASE_URL``, ``BROKER_AGENT_TRACING``,
``BROKER_RUN_TIMEOUT``): declared with every other variable in ``broker/settings.py``; the
names are kept here for the code that imports them from the agent package."""

from ...settings import (
    DEFAULT_DATABASE_URL,
    DEFAULT_RUN_TIMEOUT,
    MEMORY_URL,
    AgentOptions,
    DatabaseURLError,
    resolve_database_url,
)

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DEFAULT_RUN_TIMEOUT",
    "MEMORY_URL",
    "AgentOptions",
    "DatabaseURLError",
    "resolve_database_url",
]
