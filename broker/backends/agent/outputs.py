"""What an export returns, shown as a person would expect it.

Agent Builder's end nodes return dicts of their own shape: ``{"response": "…"}``, or for an
agent with an ``output_type`` ``{"output_text": "<JSON>", "output_parsed": {…}}``. The chat
shows their text (a JSON object as ``field: value`` lines), the runs API gets the parsed object
as ``output``, and a JSON message gets a title made of its values, not its braces.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["parsed_output", "readable", "shown_text", "title_source"]

# the keys whose string value is the text an end node means to show, most telling first
TEXT_KEYS = ("response", "output_text", "text", "message", "answer", "result", "output")


def _json_object(text: str) -> dict[str, Any] | None:
    stripped = text.strip()
    if not stripped.startswith("{"):
        return None
    try:
        value = json.loads(stripped)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def readable(value: Any, indent: str = "") -> str:
    """A JSON value as plain lines: ``Field name: value``, nested ones indented."""
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            label = str(key).replace("_", " ")
            label = label[:1].upper() + label[1:]
            if isinstance(item, dict | list) and item:
                lines.append(f"{indent}{label}:")
                lines.append(readable(item, indent + "  "))
            else:
                lines.append(f"{indent}{label}: {_scalar(item)}")
        return "\n".join(lines)
    if isinstance(value, list):
        return "\n".join(
            f"{indent}- {_scalar(v)}"
            if not isinstance(v, dict | list)
            else f"{indent}-\n{readable(v, indent + '  ')}"
            for v in value
        )
    return f"{indent}{_scalar(value)}"


def _scalar(value: Any) -> str:
    if value is None or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def parsed_output(returned: Any) -> Any | None:
    """The structured output an end-node dict carries (``output_parsed``, or ``output_text``
    holding a JSON object), or None when it carries none."""
    if not isinstance(returned, dict):
        return None
    if isinstance(returned.get("output_parsed"), dict):
        return returned["output_parsed"]
    text = returned.get("output_text")
    return _json_object(text) if isinstance(text, str) else None


def shown_text(returned: Any) -> str:
    """The text the chat shows for what an export returned."""
    if returned is None:
        return ""
    if isinstance(returned, str):
        parsed = _json_object(returned)
        return readable(parsed) if parsed is not None else returned
    structured = parsed_output(returned)
    if structured is not None:
        return readable(structured)
    if isinstance(returned, dict):
        for key in TEXT_KEYS:
            if isinstance(returned.get(key), str) and returned[key].strip():
                return returned[key]
        return readable(returned)
    if isinstance(returned, list):
        return readable(returned)
    return str(returned)


def title_source(text: str) -> str:
    """The text a thread's title is made from: a JSON object's values, not its syntax."""
    parsed = _json_object(text)
    if parsed is None:
        return text
    values = [_scalar(v) for v in parsed.values() if not isinstance(v, dict | list)]
    return " · ".join(v for v in values if v != "-") or ", ".join(map(str, parsed))
