"""What can be known about an agent workflow before its first message fails.

An export can import and still fail on every message: its guardrails need openai-guardrails
and, for Contains PII, spaCy's ``en_core_web_sm``; its guardrails call Chat Completions and
Moderations besides the Responses API. ``guardrail_findings`` checks the first without a
network (``check`` runs it), ``probe_endpoints`` calls each endpoint the workflow uses with
the configured key, and ``smoke`` sends one message through the real engine.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .guardrails import SPACY_FIX, SPACY_MODEL, GuardrailBroken, fix_for
from .targets import AgentTarget, ExportTarget, Target

__all__ = [
    "Finding",
    "endpoints_of",
    "guardrail_configs",
    "guardrail_findings",
    "probe_endpoints",
    "smoke",
]

#: openai-guardrails' guardrails that call a model through Chat Completions
LLM_GUARDRAILS = frozenset(
    {
        "Jailbreak",
        "NSFW Text",
        "Custom Prompt Check",
        "Hallucination Detection",
        "Prompt Injection Detection",
        "Off Topic Prompts",
    }
)
DEFAULT_LLM_MODEL = "gpt-4.1-mini"


@dataclass(frozen=True)
class Finding:
    """One problem: what is wrong, and the command or change that fixes it."""

    problem: str
    fix: str


def guardrail_configs(module: ModuleType | None) -> list[dict[str, Any]]:
    """Every guardrail an export configures: the entries of its module-level
    ``{"guardrails": [{"name": …, "config": …}, …]}`` dicts."""
    found: list[dict[str, Any]] = []
    for value in vars(module).values() if module is not None else ():
        if isinstance(value, dict) and isinstance(value.get("guardrails"), list):
            found += [g for g in value["guardrails"] if isinstance(g, dict) and g.get("name")]
    return found


def _bundles(module: ModuleType | None) -> Iterator[dict[str, Any]]:
    for value in vars(module).values() if module is not None else ():
        if isinstance(value, dict) and isinstance(value.get("guardrails"), list):
            yield value


def spacy_model_present(cwd: Path | None = None) -> bool:
    """Whether openai-guardrails' PII check finds its model (a package, or a directory of
    that name in the working directory, as it looks)."""
    try:
        import spacy
    except ImportError:
        return False
    return bool(spacy.util.is_package(SPACY_MODEL)) or ((cwd or Path.cwd()) / SPACY_MODEL).exists()


def guardrail_findings(target: Target, cwd: Path | None = None) -> list[Finding]:
    """Each guardrail instantiated as the export will at its first message: a missing package,
    model or bad config named with its fix. No network."""
    module = target.module if isinstance(target, ExportTarget) else None
    bundles = list(_bundles(module))
    if not any(b["guardrails"] for b in bundles):
        return []
    try:
        from guardrails.runtime import instantiate_guardrails, load_config_bundle
    except ImportError:
        return [
            Finding(
                "its guardrails need the openai-guardrails package, which is not installed",
                "pip install 'chatkit-broker[guardrails]'",
            )
        ]
    names = {g["name"] for g in guardrail_configs(module)}
    findings = []
    if "Contains PII" in names and not spacy_model_present(cwd):
        findings.append(
            Finding(
                f"the Contains PII guardrail needs spaCy's {SPACY_MODEL} model, which is not "
                "installed (every message would fail)",
                SPACY_FIX,
            )
        )
        return findings  # instantiating it would only say the same
    for bundle in bundles:
        try:
            instantiate_guardrails(load_config_bundle(bundle))
        except Exception as exc:  # the library's own validation, said as it says it
            cause = exc.__cause__ if isinstance(exc, GuardrailBroken) else exc
            findings.append(
                Finding(
                    f"a guardrail cannot be set up: {type(cause).__name__}: {cause}",
                    fix_for(cause or exc) or "correct the guardrail's config in the export",
                )
            )
    return findings


def endpoints_of(target: Target) -> dict[str, str]:
    """The OpenAI endpoints the workflow calls -> the model each is probed with."""
    models = _agent_models(target)
    used = {"responses": models[0] if models else DEFAULT_LLM_MODEL}
    module = target.module if isinstance(target, ExportTarget) else None
    for guardrail in guardrail_configs(module):
        name = guardrail.get("name")
        if name == "Moderation":
            used["moderations"] = "omni-moderation-latest"
        elif name in LLM_GUARDRAILS:
            config = guardrail.get("config") or {}
            used.setdefault("chat/completions", str(config.get("model") or DEFAULT_LLM_MODEL))
    return used


def _agent_models(target: Target) -> list[str]:
    from agents import Agent

    agents = (
        [target.agent]
        if isinstance(target, AgentTarget)
        else [v for v in vars(target.module).values() if isinstance(v, Agent)]
    )
    return [a.model for a in agents if isinstance(a.model, str) and a.model]


async def probe_endpoints(
    endpoints: dict[str, str], *, api_key: str, base_url: str, timeout: float
) -> list[Finding]:
    """One small request to each endpoint with the broker's key; what failed, with its fix."""
    import openai
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout)
    findings = []
    try:
        for endpoint, model in endpoints.items():
            try:
                if endpoint == "responses":
                    await client.responses.create(model=model, input="ping", max_output_tokens=16)
                elif endpoint == "moderations":
                    await client.moderations.create(model=model, input="ping")
                else:
                    await client.chat.completions.create(
                        model=model, messages=[{"role": "user", "content": "ping"}], max_tokens=1
                    )
            except openai.AuthenticationError:
                findings.append(
                    Finding(
                        f"POST /{endpoint}: the key was refused (HTTP 401)",
                        "put a valid key of the project in CHATKIT_OPENAI_API_KEY",
                    )
                )
            except openai.NotFoundError:
                findings.append(
                    Finding(
                        f"POST /{endpoint}: model {model!r} or the endpoint was not found (404)",
                        f"use a model the key's project has, or check OPENAI_BASE_URL ({base_url})",
                    )
                )
            except openai.APIStatusError as exc:
                findings.append(
                    Finding(
                        f"POST /{endpoint}: HTTP {exc.status_code}",
                        "see the message; check the key's permissions for this endpoint",
                    )
                )
            except (openai.APIConnectionError, openai.APITimeoutError):
                findings.append(
                    Finding(
                        f"POST /{endpoint}: {base_url} did not answer",
                        "check OPENAI_BASE_URL and the network",
                    )
                )
    finally:
        await client.close()
    return findings


async def smoke(target: Target, *, api_key: str, base_url: str, timeout: float) -> str:
    """One message through the engine as a user would send it, in a thread that is not stored.

    Returns the reply's first line; raises ``RuntimeError`` with what the user would see.
    """
    from openai import AsyncOpenAI

    from ...errors import BrokerError
    from .engine import AgentServer
    from .options import MEMORY_URL
    from .runs import run
    from .store import Caller, SQLStore

    store = SQLStore(MEMORY_URL)
    await store.start()
    client = AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0)
    said = _Heard()
    agent_log = logging.getLogger("broker.agent")
    agent_log.addHandler(said)
    try:
        server = AgentServer(store, target, openai_client=client)
        try:
            answer = await run(
                server,
                Caller("chatkit-broker-doctor", "smoke"),
                "Hello! This is a test message from chatkit-broker.",
                timeout=timeout,
            )
        except BrokerError as exc:
            # the engine's log line has the cause (and a known fix); the user sees exc.message
            cause = said.lines[-1] if said.lines else ""
            raise RuntimeError(f"{exc.message}" + (f" [{cause}]" if cause else "")) from None
        if answer.refusal is not None:
            return f"refused by {', '.join(answer.refusal['guardrails'])}: {answer.output_text}"
        said = answer.output_text.strip()
        return said.splitlines()[0][:200] if said else "(an empty reply)"
    finally:
        agent_log.removeHandler(said)
        await client.close()
        await store.close()


class _Heard(logging.Handler):
    """The engine's warnings during a smoke message (they name the cause a user never sees)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
