"""Guardrails of Agent Builder exports, as a user and an operator see them.

An export runs openai-guardrails' ``run_guardrails`` with ``suppress_tripwire=True`` and, when
one trips, *returns* a dict of per-guardrail results (Agent Builder's
``build_guardrail_fail_output``) or its own end-node dict: shown as it is, that is raw JSON in
the chat. The loader rebinds the module's ``run_guardrails`` to ``recording(…)``, which notes
every tripwire of the answer in progress; the engine then shows one short refusal naming the
guardrail instead. A guardrail that raises (a missing spaCy model, an API error) becomes
``GuardrailBroken`` naming the guardrail and, when one is known, the command that fixes it.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from .usage import in_guardrails, meter_guardrail_client

__all__ = [
    "DEFAULT_REFUSAL",
    "FAIL_OUTPUT_KINDS",
    "GuardrailBroken",
    "current_trips",
    "failed_in_output",
    "fix_for",
    "instantiating",
    "recording",
    "refusal_text",
]

#: the refusal the chat shows; ``{guardrail}`` is replaced by the kinds that tripped
DEFAULT_REFUSAL = "Sorry, I can't help with that: the {guardrail} check stopped this message."

#: keys of Agent Builder's generated fail output -> the guardrail kind as Agent Builder names it
FAIL_OUTPUT_KINDS = {
    "pii": "Contains PII",
    "moderation": "Moderation",
    "jailbreak": "Jailbreak",
    "hallucination": "Hallucination Detection",
    "nsfw": "NSFW Text",
    "url_filter": "URL Filter",
    "custom_prompt_check": "Custom Prompt Check",
    "prompt_injection": "Prompt Injection Detection",
}

SPACY_MODEL = "en_core_web_sm"
SPACY_FIX = f"install the PII guardrail's spaCy model: python -m spacy download {SPACY_MODEL}"

#: the guardrail kinds that tripped during the answer in progress (None outside one)
current_trips: ContextVar[list[str] | None] = ContextVar("chatkit_broker_trips", default=None)


class GuardrailBroken(Exception):
    """A guardrail could not run: what the operator needs is its name, the cause and a fix."""

    def __init__(self, names: list[str], cause: BaseException) -> None:
        while isinstance(cause, BaseExceptionGroup) and cause.exceptions:  # its TaskGroup's
            cause = cause.exceptions[0]
        self.names = names
        self.cause = cause
        self.fix = fix_for(cause)
        which = ", ".join(names) or "a guardrail"
        super().__init__(f"guardrail {which} raised {type(cause).__name__}: {cause}")


def fix_for(exc: BaseException) -> str | None:
    """The known fix for a guardrail's failure, or None."""
    text = str(exc)
    if SPACY_MODEL in text or (isinstance(exc, OSError) and "spacy" in text.lower()):
        return SPACY_FIX
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return f"install {exc.name!r} into the broker's environment (pip install 'chatkit-broker[guardrails]')"
    return None


def _name_of(guardrail: Any) -> str:
    definition = getattr(guardrail, "definition", None)
    return str(getattr(definition, "name", None) or type(guardrail).__name__)


def _tripped_name(result: Any) -> str | None:
    if getattr(result, "tripwire_triggered", False) is not True:
        return None
    info = getattr(result, "info", None)
    name = info.get("guardrail_name") if isinstance(info, dict) else None
    return str(name or "guardrail")


def recording(
    run_guardrails: Callable[..., Awaitable[Any]],
) -> Callable[..., Awaitable[Any]]:
    """``run_guardrails`` that notes tripwires in ``current_trips`` and names broken guardrails."""
    if getattr(run_guardrails, "__chatkit_broker__", False):
        return run_guardrails

    @functools.wraps(run_guardrails)
    async def run(ctx: Any, data: Any, media_type: str, guardrails: Any, *a: Any, **kw: Any) -> Any:
        guardrails = list(guardrails)
        trips = current_trips.get()
        # their model calls go through the export's own client: metered there (usage.py)
        meter_guardrail_client(getattr(ctx, "guardrail_llm", None))
        metering = in_guardrails.set(True)
        try:
            results = await run_guardrails(ctx, data, media_type, guardrails, *a, **kw)
        except Exception as exc:
            if type(exc).__name__.endswith("TripwireTriggered"):
                name = _tripped_name(getattr(exc, "guardrail_result", None))
                if trips is not None and name:
                    trips.append(name)
                raise
            raise GuardrailBroken([_name_of(g) for g in guardrails], exc) from exc
        finally:
            in_guardrails.reset(metering)
        if trips is not None:
            trips.extend(n for n in map(_tripped_name, results or []) if n)
        return results

    run.__chatkit_broker__ = True  # type: ignore[attr-defined]
    return run


def instantiating(
    instantiate: Callable[..., Any],
) -> Callable[..., Any]:
    """``instantiate_guardrails`` (or ``load_config_bundle``) whose failure — a missing spaCy
    model, a bad config — becomes ``GuardrailBroken`` naming the guardrails, not a bare error."""
    if getattr(instantiate, "__chatkit_broker__", False):
        return instantiate

    @functools.wraps(instantiate)
    def build(bundle: Any, *a: Any, **kw: Any) -> Any:
        try:
            return instantiate(bundle, *a, **kw)
        except Exception as exc:
            raise GuardrailBroken(_bundle_names(bundle), exc) from exc

    build.__chatkit_broker__ = True  # type: ignore[attr-defined]
    return build


def _bundle_names(bundle: Any) -> list[str]:
    if isinstance(bundle, dict):
        entries = bundle.get("guardrails") or []
        return [str(g.get("name")) for g in entries if isinstance(g, dict) and g.get("name")]
    names = [g.name for g in getattr(bundle, "guardrails", []) if getattr(g, "name", None)]
    return [str(n) for n in names]


def failed_in_output(returned: Any) -> list[str]:
    """The guardrail kinds an export's returned fail output says failed ([] if it is not one).

    Two generated shapes: per kind (``{"moderation": {"failed": true, …}, "pii": …}``) and a
    list (``{"failed": true, "failures": [{"guardrail_name": "Moderation", …}]}``).
    """
    if not isinstance(returned, dict) or not returned:
        return []
    if set(returned) <= set(FAIL_OUTPUT_KINDS) and all(
        isinstance(v, dict) and "failed" in v for v in returned.values()
    ):
        return [FAIL_OUTPUT_KINDS[k] for k, v in returned.items() if v.get("failed") is True]
    failures = returned.get("failures")
    if returned.get("failed") is True and isinstance(failures, list):
        names = [f.get("guardrail_name") for f in failures if isinstance(f, dict)]
        return [str(n) for n in names if n] or ["guardrail"]
    return []


def refusal_text(template: str | None, names: list[str]) -> str:
    """The refusal shown for ``names`` (deduplicated), from the workflow's ``guardrail_message``."""
    kinds = list(dict.fromkeys(names)) or ["guardrail"]
    which = kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " and " + kinds[-1]
    return (template or DEFAULT_REFUSAL).replace("{guardrail}", which)
