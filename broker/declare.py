"""The vocabulary every declaration shares: field types that carry their own problem text, and
the one function that turns a pydantic ``ValidationError`` into the broker's problem lines.

Settings (``broker/settings.py``) and every kind's workflow model (``backends/<kind>/workflow.py``)
declare a field once, with its bounds and the sentence an operator reads when it is wrong; this
module is where that sentence is found again from an error's ``loc``. It imports no other part
of the broker, so anything may use it.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
)

__all__ = [
    "EnvFlag",
    "Flag",
    "Says",
    "Text",
    "closest",
    "csv",
    "pairs",
    "problems_from",
    "seconds",
    "strict_whole",
    "whole",
]


@dataclass(frozen=True)
class Says:
    """Metadata on a field: what to tell the operator when its value is refused.

    ``{got}`` is replaced by the value given (never for a secret).
    """

    text: str


def whole(lo: int, hi: int | None = None) -> Any:
    """An int read from text (an environment variable), ``lo..hi``."""
    span = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
    return Annotated[int, Field(ge=lo, le=hi), Says(f" must be {span}, got {{got}}")]


def strict_whole(lo: int, hi: int | None = None, unit: str = "") -> Any:
    """An int written as a TOML integer (never a string or a boolean), ``lo..hi``."""
    span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
    unit = f" ({unit})" if unit else ""
    return Annotated[
        int, Field(ge=lo, le=hi, strict=True), Says(f"{unit} must be a whole number {span}")
    ]


def seconds(
    lo: float, hi: float, *, strict: bool = False, above: bool = False, says: str | None = None
) -> Any:
    """A finite number of seconds ``lo..hi`` (``lo < s`` when ``above``; a TOML int or float,
    never a string, when ``strict``)."""

    def number(value: Any) -> Any:
        if strict and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError("not a number")
        return value

    def finite(value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("not finite")
        return float(value)

    text = says or f" must be between {lo:g} and {hi:g} seconds, got {{got}}"
    return Annotated[
        float,
        BeforeValidator(number),
        Field(gt=lo, le=hi) if above else Field(ge=lo, le=hi),
        AfterValidator(finite),
        Says(text),
    ]


#: 1/0, true/false, yes/no, on/off in a variable
EnvFlag = Annotated[bool, Says(" must be 1 or 0")]
#: true/false in a TOML file
Flag = Annotated[StrictBool, Says(" must be true or false")]
#: a string in a TOML file (never a number)
Text = Annotated[StrictStr, Says(" must be a string")]


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


#: a comma list in one variable (``a, b,c``), empty parts dropped
csv = Annotated[tuple[str, ...], BeforeValidator(_split)]


def closest(word: str, known: Iterable[str]) -> str | None:
    """The known key a mistyped one most likely meant, if any is close."""
    found = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.6)
    return found[0] if found else None


def _says_in(annotation: Any) -> Says | None:
    """A ``Says`` inside an annotation: ``Annotated[int, …, Says]`` or that ``| None``."""
    for meta in getattr(annotation, "__metadata__", ()):
        if isinstance(meta, Says):
            return meta
    for arg in get_args(annotation):
        found = _says_in(arg) if arg is not type(None) else None
        if found is not None:
            return found
    return None


def _metadata_at(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[Says | None, bool]:
    """The ``Says`` of the field an error's ``loc`` points into, and whether it is a secret."""
    current: Any = model
    says: Says | None = None
    secret = False
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if not isinstance(part, str) or fields is None or part not in fields:
            break
        info = fields[part]
        says = next((m for m in info.metadata if isinstance(m, Says)), None)
        says = says or _says_in(info.annotation)
        secret = "Secret" in str(info.annotation)
        current = next(
            (
                a
                for a in (info.annotation, *get_args(info.annotation))
                if hasattr(a, "model_fields")
            ),
            None,
        )
    return says, secret


def problems_from(
    error: ValidationError,
    model: type[BaseModel],
    name_of: Callable[[tuple[Any, ...]], str],
    *,
    unknown: Callable[[tuple[Any, ...]], str] | None = None,
) -> list[str]:
    """One line per refused value, each starting with where it came from (``name_of(loc)``).

    A validator's own ``ValueError`` text wins, then the field's ``Says``, then pydantic's
    message. A secret's value is never repeated (and ``SecretStr`` keeps pydantic from
    showing it), so no line can carry a secret.
    """
    lines: list[str] = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        if item["type"] == "extra_forbidden" and unknown is not None:
            lines.append(unknown(loc))
            continue
        where = name_of(loc)
        says, secret = _metadata_at(model, loc)
        got = "(hidden)" if secret else repr(item.get("input"))[:80]
        ctx = item.get("ctx") or {}
        own = str(ctx["error"]) if item["type"] == "value_error" and "error" in ctx else ""
        if own and own not in ("not finite", "not a number"):
            for line in own.splitlines():
                # a message that names its key itself ("require.role must …") follows the table
                names_key = bool(loc) and isinstance(loc[0], str) and line.startswith(loc[0])
                lines.append(_join(name_of(()) if names_key else where, line.replace("{got}", got)))
        elif says is not None:
            lines.append(_join(where, says.text.replace("{got}", got)))
        elif item["type"] == "literal_error":
            expected = str(ctx.get("expected", "")).replace("'", "")
            lines.append(_join(where, f"must be {expected}"))
        elif item["type"] == "missing":
            lines.append(_join(where, "is required"))
        else:
            lines.append(_join(where, item["msg"][:1].lower() + item["msg"][1:]))
    return lines


def _join(where: str, text: str) -> str:
    """``BROKER_PORT must …`` / ``… [workflows.x]: expires_after (seconds) must …`` / ``X: …``."""
    if text.startswith(" "):
        return where + text
    if text.startswith(("must ", "is ", "uses ")):
        return f"{where} {text}"
    return f"{where}: {text}"


def pairs(value: Any) -> Any:
    """A TOML table (``{claim = value}``) as the tuple of pairs the frozen model keeps."""
    if isinstance(value, Mapping):
        return tuple(value.items())
    return value
