"""The doctor's checks, one module per group, and the hook through which backends add theirs.

Each module has an ``async def check(ctx, …) -> Check`` over the frozen ``DoctorContext``;
the key and key-works checks also return what later checks need (``KeyFacts``, ``KeyWorks``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

from ...settings import Settings
from ..context import DoctorContext
from ..report import Check

#: a check a backend contributes: it reads the context and reports one line of its own
CheckFn = Callable[[DoctorContext], Awaitable[Check]]


def backend_checks(
    settings: Settings | None,
    by_kind: Mapping[str, Callable[[Settings], Sequence[CheckFn]]] | None = None,
) -> list[CheckFn]:
    """The checks the configured workflows' kinds add after the six built-in ones.

    One contribution per kind in use (in the order the kinds first appear), from the registry
    of kinds; none in mock mode (the mock serves every workflow) or when the configuration is
    invalid.
    """
    if settings is None or settings.mock:
        return []
    if by_kind is None:
        from ...backends import KINDS

        by_kind = {kind: spec.doctor for kind, spec in KINDS.items() if spec.doctor is not None}
    kinds = dict.fromkeys(wf.kind for wf in settings.workflows)
    return [fn for kind in kinds if kind in by_kind for fn in by_kind[kind](settings)]
