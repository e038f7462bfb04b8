"""The two OpenAI endpoints an Agent Builder export's guardrails call, faked beside
``/v1/responses`` (fake_responses.py) so guardrail exports run with no network.

openai-guardrails 0.3.6 calls them through the export's module-level ``AsyncOpenAI()``:

- ``POST /v1/chat/completions`` for its LLM checks (Jailbreak, NSFW Text, Custom Prompt Check,
  …), non-streamed, ``response_format`` a strict ``json_schema`` of ``flagged``, ``confidence``
  (and ``reason``); it reads ``choices[0].message.content`` as that JSON.
- ``POST /v1/moderations`` (``model="omni-moderation-latest"``, ``input`` a string) for
  Moderation; it reads ``results[0].categories``.

Both answer in openai-python's wire shapes (``ChatCompletion``, ``ModerationCreateResponse``;
tests/support/test_fake_responses.py validates them). What is flagged is decided by phrases
(``Rules``), so a test says "this message trips Moderation" in plain words.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MODERATION_CATEGORIES",
    "Rules",
    "chat_completion",
    "fill_schema",
    "moderation",
]

MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)


@dataclass
class Rules:
    """Which inputs the fake flags: phrase (lower case) -> moderation categories, and the
    phrases any LLM check (Jailbreak and the others) calls a hit."""

    moderation: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {
            "kill": ("violence", "violence/graphic", "illicit/violent", "harassment/threatening"),
            "hate you all": ("hate", "hate/threatening", "harassment"),
        }
    )
    llm_flags: tuple[str, ...] = ("ignore all previous instructions", "ignore your instructions")


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    out: list[str] = []
    for part in value if isinstance(value, list) else []:
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, dict) and isinstance(part.get("text"), str):
            out.append(part["text"])
    return out


def moderation(body: dict[str, Any], rules: Rules) -> dict[str, Any]:
    """A ``ModerationCreateResponse`` for ``body`` (one result per input text)."""
    results = []
    for text in _texts(body.get("input")) or [""]:
        lowered = text.lower()
        hit = {c for phrase, cats in rules.moderation.items() if phrase in lowered for c in cats}
        results.append(
            {
                "flagged": bool(hit),
                "categories": {c: c in hit for c in MODERATION_CATEGORIES},
                "category_scores": {c: 0.97 if c in hit else 0.001 for c in MODERATION_CATEGORIES},
                "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES},
            }
        )
    return {
        "id": "modr-" + secrets.token_hex(12),
        "model": str(body.get("model") or "omni-moderation-latest"),
        "results": results,
    }


def fill_schema(schema: dict[str, Any], *, flagged: bool, text: str) -> Any:
    """A value of ``schema`` (JSON Schema as OpenAI's strict mode takes it): booleans are
    ``flagged``, numbers the matching confidence, strings ``text`` (or an enum's first)."""
    defs = schema.get("$defs") or schema.get("definitions") or {}

    def fill(node: dict[str, Any]) -> Any:
        if "$ref" in node:
            return fill(defs.get(node["$ref"].rsplit("/", 1)[-1], {}))
        if "enum" in node:
            return node["enum"][0]
        if "const" in node:
            return node["const"]
        for key in ("anyOf", "oneOf", "allOf"):
            if key in node:
                options = [o for o in node[key] if o.get("type") != "null"] or node[key]
                return fill(options[0])
        kind = node.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind == "object":
            return {name: fill(prop) for name, prop in (node.get("properties") or {}).items()}
        if kind == "array":
            return []
        if kind == "boolean":
            return flagged
        if kind in ("number", "integer"):
            return (0.95 if flagged else 0.05) if kind == "number" else int(flagged)
        if kind == "null":
            return None
        return text

    return fill(schema)


def chat_completion(body: dict[str, Any], rules: Rules) -> dict[str, Any]:
    """A non-streamed ``ChatCompletion``: JSON of the asked-for schema, or an echo."""
    messages = body.get("messages") or []
    said = [
        "".join(_texts(m.get("content")))
        for m in messages
        if isinstance(m, dict) and m.get("role") == "user"
    ]
    last = said[-1] if said else ""
    flagged = any(phrase in last.lower() for phrase in rules.llm_flags)
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        reason = "the input matches a flagged phrase" if flagged else "nothing to flag"
        content = json.dumps(fill_schema(schema, flagged=flagged, text=reason))
    elif response_format.get("type") == "json_object":
        content = json.dumps({"flagged": flagged, "confidence": 0.95 if flagged else 0.05})
    else:
        content = f"echo: {last}"
    return {
        "id": "chatcmpl-" + secrets.token_hex(12),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(body.get("model") or "gpt-fake"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28},
    }
