"""The shape of a kind's registration: what the broker, doctor and the CLI ask of each kind.

Each kind declares one ``KindSpec`` in ``backends/<kind>/kind.py``; ``backends/__init__.py``
lists them. The builders import their backend when called, so a broker that serves only hosted
workflows never loads the Agents SDK or SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..gate import Gate
    from ..http import HttpPool
    from ..metrics import Metrics
    from ..ratelimit import RateLimits
    from ..session_secrets import SessionSecrets
    from ..settings import Settings
    from ..workflow import Workflow
    from .base import Backend


@dataclass(frozen=True)
class BuildContext:
    """The components a backend is built from (``app.build_broker`` makes them)."""

    settings: Settings
    http: HttpPool
    metrics: Metrics
    limits: RateLimits
    gate: Gate
    secrets: SessionSecrets | None
    overrides: dict[str, Any]  # injected parts, by kind (tests, benchmarks)


@dataclass(frozen=True)
class KindSpec:
    """One kind of backend, as the rest of the broker sees it.

    ``workflow`` is its workflow model (None for mock mode, which serves every workflow);
    ``shorthand`` says whether a ``BROKER_WORKFLOWS`` value names one of its workflows;
    ``check`` adds configuration problems and warnings that need more than one variable;
    ``preflight`` answers what keeps ``serve`` from starting (the agent store's schema);
    ``doctor`` lists the checks ``chatkit-broker doctor`` runs for it.
    """

    kind: str
    build: Callable[[BuildContext], Backend]
    workflow: type[Workflow] | None = None
    shorthand: Callable[[str], bool] | None = None
    calls_openai: bool = False
    broker_sessions: bool = True
    check: (
        Callable[[Settings, Sequence[Workflow], Path | None, list[str], list[str]], None] | None
    ) = None
    preflight: Callable[[Settings], str | None] | None = None
    doctor: Callable[[Settings], Sequence[Any]] | None = None
    #: lines of ``chatkit-broker check``'s summary about this kind (never a secret)
    describe: Callable[[Settings], list[str]] | None = None
