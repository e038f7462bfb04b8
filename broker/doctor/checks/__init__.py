"""The doctor's checks, one module per group, and the hook through which backends add theirs.

Each module has an ``async def check(ctx, …) -> Check`` over the frozen ``DoctorContext``;
the key and key-works checks also return what later checks need (``KeyFacts``, ``KeyWorks``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType

from ...config import Settings
from ..context import DoctorContext
from ..report import Check

#: a check a backend contributes: it reads the context and reports one line of its own
CheckFn = Callable[[DoctorContext], Awaitable[Check]]


def _gateway(settings: Settings) -> Sequence[CheckFn]:
    from ...backends.gateway import doctor  # imported when a gateway workflow is configured

    return doctor.checks(settings)


def _agent(settings: Settings) -> Sequence[CheckFn]:
    from ...backends.agent import doctor  # imported when an agent workflow is configured

    return doctor.checks(settings)


#: workflow kind -> the checks its backend adds for these settings
BACKEND_CHECKS: Mapping[str, Callable[[Settings], Sequence[CheckFn]]] = MappingProxyType(
    {"gateway": _gateway, "agent": _agent}
)


def backend_checks(
    settings: Settings | None,
    by_kind: Mapping[str, Callable[[Settings], Sequence[CheckFn]]] = BACKEND_CHECKS,
) -> list[CheckFn]:
    """The checks the configured workflows' backends add after the six built-in ones.

    One contribution per kind in use (in the order the kinds first appear), none in mock mode
    (the mock serves every workflow) or when the configuration is invalid.
    """
    if settings is None or settings.mock:
        return []
    kinds = dict.fromkeys(wf.kind for wf in settings.workflows)
    return [fn for kind in kinds if kind in by_kind for fn in by_kind[kind](settings)]
