"""``chatkit-broker migrate EXPORT.py [--name NAME]``: an Agent Builder export made a workflow.

Agent Builder shut down on 2026-11-30; its users keep their workflows as the "Agents SDK →
Python" export. This copies the export into the workflows folder (the original is left as it
was), fixes the defects Agent Builder's code generator is known to emit — each fix a small
edit carrying a ``# chatkit-broker migrate:`` comment, shown as a diff, and found again on a
second run so nothing is edited twice — adds the workflow to the workflows file, and lists
what only the team can do (hosted tools only OpenAI serves, packages and models to install,
approval nodes, state). With a key configured it ends with one message through the model,
in a thread that is not stored.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Fix", "Migration", "apply_fixes", "is_export", "main", "needs", "slug"]

MARK = "# chatkit-broker migrate:"
DEFAULT_FOLDER = "workflows"
DEFAULT_WORKFLOWS_FILE = "workflows.toml"
SMOKE_MESSAGE = "Hello! This is a test message from chatkit-broker migrate."


@dataclass(frozen=True)
class Fix:
    """One known generator defect: what it is, and the edit (source -> source) that fixes it."""

    name: str
    apply: Callable[[str], str]


# --- the fixes ----------------------------------------------------------------------------------


def _fix_guardrail_helpers(source: str) -> str:
    """``build_guardrail_fail_output`` reads ``.tripwire_triggered`` and ``.info`` of all eight
    guardrail kinds; those not configured are None, so every message raised AttributeError."""
    note = "unconfigured guardrails are None here, so read their fields safely"
    source = re.sub(
        r"(?m)^(?P<i>[ \t]*)def _tripwire\(r\):\n(?P<b>[ \t]+)return bool\(r\.tripwire_triggered\)$",
        lambda m: (
            f"{m['i']}def _tripwire(r):\n{m['b']}{MARK} {note}\n"
            f'{m["b"]}return bool(getattr(r, "tripwire_triggered", False))'
        ),
        source,
    )
    return re.sub(
        r"(?m)^(?P<i>[ \t]*)def _info\(r\):\n(?P<b>[ \t]+)return r\.info$",
        lambda m: (
            f'{m["i"]}def _info(r):\n{m["b"]}{MARK} {note}\n{m["b"]}return getattr(r, "info", None)'
        ),
        source,
    )


def _fix_approval_request(source: str) -> str:
    """A user-approval node calls ``approval_request(message)``, which some exports never define."""
    if "approval_request(" not in source or re.search(r"(?m)^def approval_request\(", source):
        return source
    helper = (
        f"{MARK} the user-approval node's approval_request() was not defined.\n"
        f"{MARK} The broker cannot pause a chat for approval: this approves every request.\n"
        "# Replace it with your own rule (or an Agents SDK tool that needs approval).\n"
        "def approval_request(message: str):\n"
        "  return True\n\n\n"
    )
    at = re.search(r"(?m)^class WorkflowInput\(", source) or re.search(
        r"(?m)^(# Main code entrypoint\n)?async def run_workflow\(", source
    )
    if at is None:
        return source
    return source[: at.start()] + helper + source[at.start() :]


_JSON_TYPES = {
    "string": "str",
    "integer": "int",
    "number": "float",
    "boolean": "bool",
    "null": "None",
    "array": "list",
    "object": "dict",
}
_DEF = re.compile(
    r"(?m)^(?P<i>[ \t]*)(?P<head>(?:async )?def \w+)\((?P<params>[^()]*)\)(?P<tail>.*):$"
)


def _python_params(params: str) -> str | None:
    """``item: string,null, qty: integer`` as Python (``item: str | None, qty: int``), or None
    when no annotation is a JSON Schema type name."""
    out: list[list[str]] = []  # [name, annotation parts...]
    for piece in params.split(","):
        text = piece.strip()
        if not text:
            continue
        if ":" in text:
            name, _, annotation = text.partition(":")
            out.append([name.strip(), annotation.strip()])
        elif out and len(out[-1]) > 1 and text in _JSON_TYPES:
            out[-1].append(text)  # the rest of "string,null"
        else:
            out.append([text])
    changed = False
    parts = []
    for entry in out:
        if len(entry) == 1:
            parts.append(entry[0])
            continue
        name, *types = entry
        union = len(types) > 1
        if all(t in _JSON_TYPES for t in types) and (union or types[0] != "object"):
            changed = True
            parts.append(f"{name}: {' | '.join(_JSON_TYPES[t] for t in types)}")
        else:
            parts.append(f"{name}: {', '.join(types)}")
    return ", ".join(parts) if changed else None


def _fix_tool_annotations(source: str) -> str:
    """Function-tool stubs annotated with JSON Schema types (``item: string,null``): a
    SyntaxError or NameError at import; written as Python types instead."""

    def fix(m: re.Match[str]) -> str:
        params = _python_params(m["params"])
        if params is None:
            return m[0]
        return (
            f"{m['i']}{MARK} JSON Schema types in the annotations made Python ones\n"
            f"{m['i']}{m['head']}({params}){m['tail']}:"
        )

    return _DEF.sub(fix, source)


FIXES = (
    Fix(
        "guardrail helpers read fields of guardrails that are not configured",
        _fix_guardrail_helpers,
    ),
    Fix("approval_request() used by a user-approval node but not defined", _fix_approval_request),
    Fix("function-tool annotations in JSON Schema types (string,null …)", _fix_tool_annotations),
)


def apply_fixes(source: str) -> tuple[str, list[str]]:
    """The source with every known defect fixed, and the names of the fixes that changed it."""
    applied = []
    for fix in FIXES:
        fixed = fix.apply(source)
        if fixed != source:
            applied.append(fix.name)
            source = fixed
    return source, applied


# --- what needs the team ---------------------------------------------------------------------------

_HOSTED = (
    (
        "WebSearchTool(",
        "web search (WebSearchTool) runs only on OpenAI's servers; it works "
        "while the model is OpenAI's Responses API, not through another provider",
    ),
    (
        "FileSearchTool(",
        "file search (FileSearchTool) reads OpenAI vector stores: keep them "
        "in the key's project (the ids are in the export), or replace it with a function tool "
        "over your own search",
    ),
    (
        "CodeInterpreterTool(",
        "code interpreter (CodeInterpreterTool) runs in OpenAI's "
        "containers; its file_ids must exist in the key's project",
    ),
    (
        "HostedMCPTool(",
        "hosted MCP (HostedMCPTool) is called by OpenAI's servers: the MCP "
        "server must be reachable from the internet, and its headers hold a secret (move it "
        "into an environment variable)",
    ),
    ("ImageGenerationTool(", "image generation (ImageGenerationTool) runs only on OpenAI"),
)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _spacy_model_present() -> bool:
    if not _installed("spacy"):
        return False
    import spacy

    return bool(spacy.util.is_package("en_core_web_sm")) or Path("en_core_web_sm").exists()


def needs(source: str) -> list[str]:
    """What the export needs that the broker cannot do for the team, one sentence each."""
    found = [f"hosted tool: {say}" for marker, say in _HOSTED if marker in source]
    if "guardrails.runtime" in source or "from guardrails" in source:
        if not _installed("guardrails"):
            found.append(
                "package: openai-guardrails (its guardrail nodes): "
                "pip install 'chatkit-broker[guardrails]'"
            )
        if '"Contains PII"' in source and not _spacy_model_present():
            found.append(
                "model: the Contains PII guardrail needs spaCy's en_core_web_sm: "
                "python -m spacy download en_core_web_sm"
            )
    if "approval_request(" in source:
        found.append(
            "approval node: the broker cannot pause a chat for a person's approval; "
            "approval_request() decides alone (it approves everything as exported)"
        )
    if re.search(r"(?m)^\s+state = \{\s*\n\s*\"", source) or re.search(
        r"state\[\s*\"[^\"]+\"\s*\]\s*=", source
    ):  # a set-state node, or state that starts non-empty (every export has `state = {}`)
        found.append(
            "state: the workflow's `state` starts afresh with every message (the broker keeps "
            "the chat's history, not this dict); keep what must last in your own store"
        )
    for name in _stub_tools(source):
        found.append(f"tool {name}(): a stub (its body is `pass`); write what it should do")
    return found


def _stub_tools(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    stubs = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
            "function_tool" in ast.unparse(d) for d in node.decorator_list
        ):
            body = [b for b in node.body if not isinstance(b, ast.Expr)]  # docstrings aside
            if all(isinstance(b, ast.Pass) for b in body):
                stubs.append(node.name)
    return stubs


# --- the command ----------------------------------------------------------------------------------


def is_export(source: str) -> bool:
    """Whether ``source`` is an Agent Builder "Agents SDK → Python" export."""
    return bool(re.search(r"(?m)^async def run_workflow\(", source)) and (
        "from agents import" in source
    )


def slug(stem: str) -> str:
    """A workflow name (1-64 of a-z 0-9 _ -) from a file name."""
    name = re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-_")
    return (name or "workflow")[:64]


@dataclass
class Migration:
    """What one run did: the printed report is made of it."""

    export: Path
    copy: Path
    name: str
    workflows_file: Path
    applied: list[str] = field(default_factory=list)
    diff: str = ""
    added: bool = False
    needs: list[str] = field(default_factory=list)
    kept: bool = False  # the copy existed already: fixes were checked on it


def _agent_path(copy: Path, cwd: Path) -> str:
    try:
        return f"{copy.resolve().relative_to(cwd.resolve())}:run_workflow"
    except ValueError:
        return f"{copy.resolve()}:run_workflow"


def _add_workflow(file: Path, name: str, agent: str) -> bool:
    """Append ``[workflows.NAME]`` with its agent; False when the file already has NAME."""
    text = file.read_text() if file.is_file() else ""
    try:
        existing = tomllib.loads(text).get("workflows", {})
    except tomllib.TOMLDecodeError as exc:
        raise SystemExit(f"chatkit-broker migrate: {file} is not valid TOML: {exc}") from None
    if name in existing:
        return False
    sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    file.write_text(f'{text}{sep}[workflows.{name}]\nagent = "{agent}"\n')
    return True


def migrate(export: Path, *, name: str | None, env: Mapping[str, str], cwd: Path) -> Migration:
    """Copy, fix and register ``export``; raise ``SystemExit`` (code 2) if it is not one."""
    try:
        original = export.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"chatkit-broker migrate: cannot read {export}: {exc}") from None
    if not is_export(original):
        raise SystemExit(
            f"chatkit-broker migrate: {export} is not an Agent Builder export (it has no "
            "`async def run_workflow(...)` using `from agents import …`). Nothing was changed."
        )
    name = name or slug(export.stem)
    if not re.fullmatch(r"[a-z0-9_-]{1,64}", name):
        raise SystemExit(f"chatkit-broker migrate: --name {name!r} must be 1-64 of a-z 0-9 _ -")
    raw_file = (env.get("BROKER_WORKFLOWS_FILE") or "").strip() or DEFAULT_WORKFLOWS_FILE
    workflows_file = Path(raw_file) if Path(raw_file).is_absolute() else cwd / raw_file
    copy = workflows_file.parent / DEFAULT_FOLDER / f"{name}.py"
    base = copy.read_text(encoding="utf-8") if copy.is_file() else original
    fixed, applied = apply_fixes(base)
    run = Migration(export, copy, name, workflows_file, applied, kept=copy.is_file())
    run.diff = "".join(
        difflib.unified_diff(
            base.splitlines(keepends=True),
            fixed.splitlines(keepends=True),
            fromfile=str(export if base is original else copy),
            tofile=str(copy),
        )
    )
    if not copy.is_file() or fixed != base:
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(fixed, encoding="utf-8")
    run.added = _add_workflow(workflows_file, name, _agent_path(copy, cwd))
    run.needs = needs(fixed)
    return run


def report(run: Migration, *, dotenv_has_file: bool) -> list[str]:
    lines = [f"copied {run.export} -> {run.copy} (the original is unchanged)"]
    if run.kept:
        lines = [f"{run.copy} exists (an earlier run): checked it again, the export untouched"]
    if run.applied:
        lines.append(f"fixed {len(run.applied)} known defect(s) of Agent Builder's exporter:")
        lines += [f"  - {name}" for name in run.applied]
    else:
        lines.append("no known exporter defect to fix (or fixed by an earlier run)")
    if run.diff:
        lines.append("")
        lines += run.diff.rstrip("\n").splitlines()
        lines.append("")
    if run.added:
        lines.append(f"added [workflows.{run.name}] to {run.workflows_file}")
    else:
        lines.append(f"{run.workflows_file} already has workflow {run.name!r}; left as it is")
    if not dotenv_has_file:
        lines.append(
            f"set BROKER_WORKFLOWS_FILE={run.workflows_file.name} (in .env) so the broker reads it"
        )
    if run.needs:
        lines.append("needs you:")
        lines += [f"  - {item}" for item in run.needs]
    else:
        lines.append("needs you: nothing found")
    return lines


async def smoke(spec: str, base_dir: Path, env: Mapping[str, str]) -> str:
    """One message through the workflow and the real model path; the thread is not stored.

    Returns the reply's first line; raises ``RuntimeError`` with the failure and its cause.
    """
    from .backends.agent.checks import smoke as send_one
    from .backends.agent.targets import load_target
    from .settings import DEFAULT_BASE_URL, api_key_in_effect

    return await send_one(
        load_target(spec, base_dir=base_dir),
        api_key=api_key_in_effect(env)[1] or "",
        base_url=(env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/"),
        timeout=120.0,
    )


def main(export: str, name: str | None, *, smoke_test: bool = True) -> int:
    """The CLI command; 0 done, 1 the copy does not import or the smoke message failed, 2 not
    an export (nothing changed)."""
    import asyncio

    from .config import read_dotenv, read_environment
    from .environ import export_environment
    from .settings import api_key_in_effect

    cwd = Path.cwd()
    env, _ = read_environment()
    export_environment(env)
    try:
        run = migrate(Path(export), name=name, env=env, cwd=cwd)
    except SystemExit as exc:
        print(exc.code, file=sys.stderr)
        return 2
    has_file = bool(env.get("BROKER_WORKFLOWS_FILE") or read_dotenv().get("BROKER_WORKFLOWS_FILE"))
    for line in report(run, dotenv_has_file=has_file):
        print(line)
    # the Agents SDK only now: a file that is not an export is refused without it (~1.5 s)
    from .backends.agent.targets import TargetError, load_target

    spec = _agent_path(run.copy, cwd)
    try:
        load_target(spec, base_dir=cwd)
    except TargetError as exc:
        print(f"workflow {run.name!r} does not import yet: {exc.problem}")
        if "credentials" in exc.problem.lower():
            print("  it builds an OpenAI client at import: put OPENAI_API_KEY=… in .env")
        return 1
    print(f"workflow {run.name!r} imports")
    if not smoke_test:
        return 0
    if not api_key_in_effect(env)[1]:
        print("no OpenAI key configured: skipped the test message (set OPENAI_API_KEY)")
        return 0
    import logging

    for name in ("broker", "openai.agents"):  # the line below says what failed
        logging.getLogger(name).addHandler(logging.NullHandler())
        logging.getLogger(name).propagate = False
    try:
        said = asyncio.run(smoke(spec, cwd, env))
    except Exception as exc:  # the workflow's own failure, reported as the user would see it
        print(f"test message failed: {type(exc).__name__}: {exc}")
        return 1
    print(f"test message answered (not stored): {said}")
    return 0
