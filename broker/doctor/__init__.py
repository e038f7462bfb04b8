"""``chatkit-broker doctor``: diagnose the OpenAI side in one command.

Six checks, in order, each ✔ / ⚠ / ✖ (or ○ when skipped) with a one-line fix:

1. ``checks.config``: the configuration is valid (the same ``load_settings`` the service runs);
2. ``checks.key``: which API key is in use and where it came from, and whether a shell
   variable shadows ``.env``;
3. ``checks.openai``: the key works (``GET /models``), and which organization / project the
   API answers for;
4. ``checks.workflows``: every hosted workflow mints (as the throwaway user ``doctor-check``)
   and is cancelled at once; gateway and agent workflows are listed as checked by their backend;
5. ``checks.auth``: sign-in tokens: the JWKS keys, the secret's length, and ``--token``
   verified exactly as served;
6. ``checks.domains``: the origins of ``BROKER_ALLOWED_ORIGINS`` and OpenAI's domain allowlist.

Each check is an ``async def check(ctx, …) -> Check`` over a frozen ``DoctorContext``
(settings, the env / shell / ``.env`` mappings, the shared ``HttpPool``, the time budget, the
token). What a later check needs from an earlier one travels as a typed result the runner hands
on: ``KeyFacts`` (check 2: the key's label, a stray shell key) and ``KeyWorks`` (check 3: the
project OpenAI named), both read by check 4 to explain a 404.

**Backend hook.** After the six, the runner runs the checks the configured backends contribute:
``checks.backend_checks(settings)`` looks up each workflow kind in use in
the registry of kinds (``broker.backends.KINDS``, each spec's ``doctor``) (kind → ``(Settings) -> [CheckFn]``, a ``CheckFn`` being
``async (DoctorContext) -> Check``) and runs what it returns, numbered 7, 8 …, in the same
budget; a failed one fails the run. ``run``/``run_doctor`` also take an
explicit ``extra`` list, which replaces the looked-up one.

It reuses the broker's own modules (``load_settings`` and ``api_key_in_effect``, the hosted
client's ``HostedSessions``, ``api_headers`` and ``error_message``, ``Verifier``,
``JWKSCache``, ``HttpPool``, ``read_capped``), so what passes here is what the service does.
Nothing it prints contains a full API key, JWT or client secret: values are masked where they
are produced, and the finished report is scrubbed once more (``report.scrub``).
"""

from __future__ import annotations

from .budget import Budget
from .checks import CheckFn, backend_checks
from .checks.key import KeyFacts
from .checks.openai import KeyWorks
from .context import DoctorContext
from .report import SCHEMA, Check, Report, Status, for_stream, render_json, render_text, scrub
from .runner import DEFAULT_TIMEOUT, run, run_doctor

__all__ = [
    "DEFAULT_TIMEOUT",
    "SCHEMA",
    "Budget",
    "Check",
    "CheckFn",
    "DoctorContext",
    "KeyFacts",
    "KeyWorks",
    "Report",
    "Status",
    "backend_checks",
    "for_stream",
    "render_json",
    "render_text",
    "run",
    "run_doctor",
    "scrub",
]
