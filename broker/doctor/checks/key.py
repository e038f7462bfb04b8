"""Check 2: which API key is in effect, where it came from, and whether the shell shadows ``.env``.

The commonest cause of a hosted 404 is a stray shell ``OPENAI_API_KEY`` overriding the one in
``.env``; what this check finds is handed on as ``KeyFacts`` so the workflows check can name it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...backends import KINDS
from ...logs import mask
from ...settings import API_KEY_VARIABLES
from ..context import DoctorContext
from ..report import Check, Status

API_KEYS_URL = "https://platform.openai.com/api-keys"
# kinds whose backend calls OpenAI with the key (a gateway calls the user's own server)
KEY_USERS = frozenset(kind for kind, spec in KINDS.items() if spec.calls_openai)


@dataclass(frozen=True)
class KeyFacts:
    """What later checks need to know about the key: whether there is one, and any stray one."""

    usable: bool  # a key is in effect and the check did not fail
    label: str = "?"  # "sk-proj-…abcd, OPENAI_API_KEY from .env"
    stray_variable: str | None = None  # the shell variable overriding a different .env key
    stray_note: str | None = None  # that finding, as a sentence for the 404 explanation


async def check(ctx: DoctorContext) -> tuple[Check, KeyFacts]:
    check = Check("key", "API key")
    variable, key = ctx.key
    shell, dotenv = ctx.shell, ctx.dotenv
    origin = None
    if variable is not None:
        origin = "environment" if variable in shell else ".env"
    data: dict[str, str | None] = {
        "masked": mask(key) if key else None,
        "variable": variable,
        "origin": origin,
        "dotenv_masked": None,
    }
    check.data = data
    s = ctx.settings
    unusable = KeyFacts(usable=False)

    before = API_KEY_VARIABLES[: API_KEY_VARIABLES.index(variable) if variable else None]
    hidden = [
        v for v in before if v in shell and not shell[v].strip() and (dotenv.get(v) or "").strip()
    ]
    if key is None:
        if hidden:
            v = hidden[0]
            return check.set(
                Status.FAIL,
                f"the shell sets {v} to an empty value, which hides the key in .env "
                "(.env never overrides the environment)",
                f"run 'unset {v}' in this shell, then start the broker again",
            ), unusable
        if s is not None and s.mock:
            return check.set(Status.SKIP, "none (mock mode makes no OpenAI calls)"), unusable
        if s is not None and not any(wf.kind in KEY_USERS for wf in s.workflows):
            return check.set(
                Status.SKIP, "none (no workflow calls OpenAI: gateway workflows only)"
            ), unusable
        return check.set(
            Status.FAIL,
            "no API key is set",
            "put CHATKIT_OPENAI_API_KEY=sk-… in .env: a key of the project that owns your "
            f"workflows ({API_KEYS_URL})",
        ), unusable

    where = "the shell environment" if origin == "environment" else ".env"
    summary = f"{mask(key)} from {variable} ({where})"
    label = f"{mask(key)}, {variable} from {where}"
    if hidden:
        v = hidden[0]
        check.details.append(
            f"The shell sets {v} to an empty value, which hides the {v} in .env "
            f"({mask(dotenv[v].strip())}); {variable} is used instead."
        )
        check.set(Status.WARN, summary, f"run 'unset {v}' so the .env value is used")
        return check, KeyFacts(usable=True, label=label)
    in_dotenv = (dotenv.get(variable) or "").strip()
    if origin == "environment" and in_dotenv and in_dotenv != key:
        data["dotenv_masked"] = mask(in_dotenv)
        note = (
            f"check 2 found the shell's {variable} ({mask(key)}) overriding the one in "
            f".env ({mask(in_dotenv)}): that is the most likely cause"
        )
        check.details.append(
            f"The shell's {variable} ({mask(key)}) is the key in effect: it differs from "
            f"the one in .env ({mask(in_dotenv)}), and .env never overrides the environment."
        )
        fix = f"run 'unset {variable}' so the .env key is used"
        if variable == "OPENAI_API_KEY":
            fix += ", or put the right key in CHATKIT_OPENAI_API_KEY (it always wins)"
        check.set(Status.WARN, summary, fix)
        return check, KeyFacts(usable=True, label=label, stray_variable=variable, stray_note=note)
    if variable == "CHATKIT_OPENAI_API_KEY":
        other = (ctx.env.get("OPENAI_API_KEY") or "").strip()
        if other and other != key:
            check.details.append(
                f"OPENAI_API_KEY ({mask(other)}) is set too and ignored: "
                "CHATKIT_OPENAI_API_KEY wins."
            )
    return check.set(Status.PASS, summary), KeyFacts(usable=True, label=label)
