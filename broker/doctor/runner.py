"""The doctor run: the six checks in order, then any a backend contributes, in one time budget.

The runner is the only place that knows the order, and it alone hands one check's findings to
the next (``KeyFacts`` from the key check, ``KeyWorks`` from the key-works check), so no check
reads state another left behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from ..http import HttpPool
from .budget import Budget
from .checks import CheckFn, auth, backend_checks, config, domains, key, openai, workflows
from .context import DoctorContext
from .report import Report, render_json, render_text, render_width, scrub

DEFAULT_TIMEOUT = 20.0


async def run(
    ctx: DoctorContext,
    extra: Sequence[CheckFn] | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Report:
    """Every check against ``ctx``; ``extra`` (default: the backends' own) after the six."""
    started = clock()
    checks = [await config.check(ctx)]
    key_check, key_facts = await key.check(ctx)
    works_check, works = await openai.check(ctx, key_facts)
    checks += [key_check, works_check, await workflows.check(ctx, key_facts, works)]
    checks += [await auth.check(ctx), await domains.check(ctx)]
    for contributed in backend_checks(ctx.settings) if extra is None else extra:
        checks.append(await contributed(ctx))
    return Report(tuple(checks), clock() - started, ctx.budget.seconds, ctx.budget.exhausted_by)


async def _run_with_own_pool(ctx: DoctorContext, extra: Sequence[CheckFn] | None) -> Report:
    try:
        return await run(ctx, extra)
    finally:  # closed in the loop that used it
        await ctx.http.close()


def run_doctor(
    env: Mapping[str, str],
    shell: Mapping[str, str],
    dotenv: Mapping[str, str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    token: str | None = None,
    as_json: bool = False,
    width: int | None = None,
    extra: Sequence[CheckFn] | None = None,
    smoke: bool = False,
) -> tuple[int, str]:
    """Run every check; return the exit code and the (scrubbed) report to print.

    ``width`` defaults to ``render_width()`` (``COLUMNS`` or the terminal's).
    """
    broker_log = logging.getLogger("broker")
    saved = broker_log.propagate, broker_log.level
    broker_log.propagate = False  # the report says it all; no stray warnings on stderr
    silent = logging.NullHandler()
    broker_log.addHandler(silent)
    try:
        ctx = DoctorContext.load(
            env,
            shell,
            dotenv,
            http=HttpPool(limit=8),
            budget=Budget(timeout),
            token=token,
            smoke=smoke,
        )
        report = asyncio.run(_run_with_own_pool(ctx, extra))
    finally:
        broker_log.removeHandler(silent)  # one handler per call would pile up otherwise
        broker_log.propagate, broker_log.level = saved
    if as_json:
        text = render_json(report)
    else:
        text = render_text(report, render_width() if width is None else width)
    return report.exit_code, scrub(text, ctx.secrets | report.secrets)
