"""The doctor's report: statuses, checks, the report itself, and how it is printed.

Kept apart from the checks so that what a check *finds* and how it is *shown* (terminal text,
``--json``, a terminal that cannot print ✔) change independently. ``scrub`` is the last line of
defence: the finished text is searched for every secret the run knew of before it is printed.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..logs import mask, redact

SCHEMA = "chatkit-broker-doctor/1"


class Status(StrEnum):
    """How a check came out; the values are the ``status`` strings of the JSON report."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"

    @property
    def symbol(self) -> str:
        return _SYMBOLS[self]


_SYMBOLS = {Status.PASS: "✔", Status.WARN: "⚠", Status.FAIL: "✖", Status.SKIP: "○"}


@dataclass
class Check:
    """One line of the report (or, under ``items``, one workflow of the workflows check).

    A check fills it in as it learns; ``secrets`` are values it met that must never be printed
    (a minted client secret), kept out of ``as_dict`` and handed to ``scrub``.
    """

    id: str
    title: str
    status: Status = Status.PASS
    summary: str = ""
    details: list[str] = field(default_factory=list)
    fix: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    items: list[Check] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set, repr=False)

    def set(self, status: Status, summary: str, fix: str | None = None) -> Check:
        self.status, self.summary, self.fix = status, summary, fix
        return self

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "status": str(self.status),
            "summary": self.summary,
            "details": list(self.details),
            "fix": self.fix,
            "data": self.data,
        }


@dataclass(frozen=True)
class Report:
    """Every check in order, how long the run took and which check ran out of time, if any."""

    checks: tuple[Check, ...]
    elapsed: float
    timeout: float
    timed_out: str | None = None

    @property
    def ok(self) -> bool:
        return not any(c.status is Status.FAIL for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    @property
    def secrets(self) -> set[str]:
        """What the checks met and must not be printed (their items' included)."""
        found: set[str] = set()
        for check in self.checks:
            found |= check.secrets
            for item in check.items:
                found |= item.secrets
        return found

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "elapsed_s": round(self.elapsed, 3),
            "timeout_s": self.timeout,
            "timed_out": self.timed_out,
            "checks": [c.as_dict() for c in self.checks],
        }


# --- text -----------------------------------------------------------------------------------------


def _wrap(text: str, indent: int, width: int, hang: int = 2) -> list[str]:
    return textwrap.wrap(
        text,
        width=max(width, indent + 40),
        initial_indent=" " * indent,
        subsequent_indent=" " * (indent + hang),
        break_long_words=False,
        break_on_hyphens=False,
    ) or [""]


def render_width(environ: Mapping[str, str] = os.environ) -> int:
    """``COLUMNS`` when set, else the terminal's width, at most 100 (and 100 when piped)."""
    if environ.get("COLUMNS", "").isdigit():
        return max(60, int(environ["COLUMNS"]))
    return max(60, min(100, shutil.get_terminal_size((100, 24)).columns))


def render_text(report: Report, width: int = 100) -> str:
    """The terminal report: one ✔/⚠/✖ line per check, its details, and a fix where needed."""
    lines = ["chatkit-broker doctor", ""]

    def block(c: Check, head: str, at: int, indent: int) -> None:
        lines.extend(_wrap(f"{head}{c.title}: {c.summary}", at, width, indent - at))
        for d in c.details:
            lines.extend(_wrap(d, indent, width))
        if c.fix and c.status is not Status.PASS:
            lines.extend(_wrap(f"fix: {c.fix}", indent, width, 5))

    for n, check in enumerate(report.checks, 1):
        if check.items:
            head = f"{check.status.symbol} {n}. {check.title}: {check.summary}"
            lines.extend(_wrap(head, 0, width, 5))
            for item in check.items:
                block(item, f"{item.status.symbol} ", 5, 7)
        else:
            block(check, f"{check.status.symbol} {n}. ", 0, 5)
    lines.append("")
    failed = _numbered(report.checks, Status.FAIL)
    warned = _numbered(report.checks, Status.WARN)
    took = f"{report.elapsed:.1f} s"
    if failed:
        s = "s" if len(failed) != 1 else ""
        lines.append(f"✖ {len(failed)} check{s} failed ({', '.join(failed)}); exit 1. Took {took}.")
    elif warned:
        lines.append(f"✔ No check failed; warnings in {', '.join(warned)}. Took {took}.")
    else:
        lines.append(f"✔ All checks passed. Took {took}.")
    if report.timed_out:
        lines.append(
            f"  The --timeout budget of {report.timeout:g} s ran out during {report.timed_out}."
        )
    return "\n".join(lines)


def _numbered(checks: Iterable[Check], status: Status) -> list[str]:
    return [f"{n}. {c.title}" for n, c in enumerate(checks, 1) if c.status is status]


def render_json(report: Report) -> str:
    return json.dumps(report.as_dict(), indent=2, ensure_ascii=False)


_ASCII = str.maketrans({"✔": "+", "⚠": "!", "✖": "x", "○": "-", "…": "...", "—": "-", "→": "->"})


def for_stream(text: str, encoding: str | None, *, as_json: bool) -> str:
    """The report as the output stream can encode it (a latin-1 or ASCII terminal, say).

    JSON falls back to ``\\u`` escapes, which are still the same JSON; text to ASCII symbols.
    """
    try:
        text.encode(encoding or "utf-8")
        return text
    except (UnicodeEncodeError, LookupError):
        pass
    if as_json:
        return text.encode("ascii", "backslashreplace").decode("ascii")
    return text.translate(_ASCII).encode("ascii", "replace").decode("ascii")


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Last line of defence: no full key, JWT or client secret leaves this command."""
    for secret in sorted({x for x in secrets if len(x) >= 8}, key=len, reverse=True):
        text = text.replace(secret, mask(secret))
    return redact(text)
