"""What an agent workflow runs: an ``agents.Agent``, or an Agent Builder export's
``run_workflow``, loaded from ``agent = "pkg.module:attr"`` (or ``"path/to/file.py:attr"``).

Loading happens once at start-up, so a typo, a missing dependency or the wrong kind of
attribute stops the broker with a message naming the problem instead of failing the first
chat. An export calls the non-streaming ``Runner.run``; the loader rebinds the module's
``Runner`` to ``StreamingRunner``, which runs the same call streamed and forwards it to the
chat in progress (chatkit-server.md §3.3 b), so an export streams without being edited.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import sys
import traceback
import typing
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from agents import Agent, RunConfig, Runner, RunResultStreaming, TResponseInputItem
from agents.models.multi_provider import MultiProvider
from pydantic import BaseModel

__all__ = [
    "AgentTarget",
    "ExportTarget",
    "StreamingRunner",
    "Target",
    "TargetError",
    "load_target",
]


class TargetError(Exception):
    """The ``agent`` setting cannot be used: bad spec, import error, missing or wrong attribute."""

    def __init__(self, spec: str, problem: str) -> None:
        super().__init__(f"agent {spec!r}: {problem}")
        self.spec = spec
        self.problem = problem


@dataclass(frozen=True)
class AgentTarget:
    """An Agents SDK agent: the broker runs it multi-turn, history from the thread store."""

    spec: str
    agent: Agent[Any]

    @property
    def structured(self) -> bool:
        """Whether its final output is a typed object (JSON text), not prose."""
        return has_output_type(self.agent)


@dataclass(frozen=True)
class ExportTarget:
    """An Agent Builder export: ``async def run_workflow(workflow_input: WorkflowInput)``.

    ``make_input`` builds its argument from the user's text (``WorkflowInput(input_as_text=…)``).
    """

    spec: str
    run: Callable[[Any], Awaitable[Any]]
    make_input: Callable[[str], Any]
    module: ModuleType

    structured = False


Target = AgentTarget | ExportTarget


def has_output_type(agent: Agent[Any]) -> bool:
    output_type = agent.output_type
    if output_type is None or output_type is str:
        return False
    is_plain = getattr(output_type, "is_plain_text", None)
    return not (callable(is_plain) and is_plain())


def load_target(spec: str, *, base_dir: Path | None = None) -> Target:
    """Import ``spec`` ("pkg.module:attr" or "file.py:attr") and classify what it names.

    ``base_dir`` anchors a relative file path (the directory of the config file).
    Raises ``TargetError`` naming the problem.
    """
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not all(part.isidentifier() for part in attr.split(".")):
        raise TargetError(
            spec, "expected 'package.module:attribute' or 'path/to/file.py:attribute'"
        )
    module = _import(spec, where, base_dir)
    value: Any = module
    for part in attr.split("."):
        if not hasattr(value, part):
            raise TargetError(spec, f"module {module.__name__!r} has no attribute {attr!r}")
        value = getattr(value, part)
    if isinstance(value, Agent):
        return AgentTarget(spec, value)
    if inspect.iscoroutinefunction(value):
        make_input = _input_factory(spec, value)
        _install_runner(module)
        return ExportTarget(spec, value, make_input, module)
    raise TargetError(
        spec,
        f"{attr!r} is {_kind(value)}; expected an agents.Agent or an async function such "
        "as an Agent Builder export's run_workflow(workflow_input)",
    )


def _kind(value: Any) -> str:
    if callable(value) and not isinstance(value, type):
        return "a plain (not async) function"
    return f"a {type(value).__name__}"


def _import(spec: str, where: str, base_dir: Path | None) -> ModuleType:
    is_file = where.endswith(".py") or "/" in where or "\\" in where
    try:
        if not is_file:
            return importlib.import_module(where)
        path = Path(where)
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        if not path.is_file():
            raise TargetError(spec, f"no such file: {path}")
        # One module name per file path, so two exports named workflow.py do not collide.
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        name = f"_chatkit_broker_agent_{path.stem}_{digest}"
        if name in sys.modules:
            return sys.modules[name]
        module_spec = importlib.util.spec_from_file_location(name, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module
    except TargetError:
        raise
    except ModuleNotFoundError as exc:
        missing = exc.name or str(exc)
        hint = (
            ""
            if missing == where
            else " (a dependency of it; install it into the broker's environment)"
        )
        raise TargetError(spec, f"cannot import {missing!r}{hint}") from None
    except SyntaxError as exc:
        raise TargetError(
            spec, f"syntax error in {exc.filename} line {exc.lineno}: {exc.msg}"
        ) from None
    except Exception as exc:  # anything the module raises at import time
        where = _where_raised(exc, where)
        raise TargetError(spec, f"importing it raised {type(exc).__name__}: {exc}{where}") from None


def _where_raised(exc: BaseException, where: str) -> str:
    """`` (at FILE line N)``: the deepest frame in the imported file itself, if any."""
    name = Path(where).name if where.endswith(".py") else where.rpartition(".")[2] + ".py"
    found = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename).name == name:
            found = f" (at {frame.filename} line {frame.lineno})"
    return found


def _input_factory(spec: str, fn: Callable[..., Any]) -> Callable[[str], Any]:
    """How to call ``fn`` with the user's text: a WorkflowInput model, or the bare string."""
    params = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    required = [p for p in params if p.default is p.empty]
    if len(params) < 1 or len(required) > 1:
        raise TargetError(
            spec, "the workflow function must take exactly one argument (the workflow input)"
        )
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations (exports can have invalid ones): use the raw one
        hints = {}
    annotation = hints.get(params[0].name, params[0].annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if "input_as_text" not in annotation.model_fields:
            raise TargetError(
                spec, f"its input model {annotation.__name__} has no input_as_text field"
            )
        return lambda text: annotation(input_as_text=text)
    if annotation in (str, inspect.Parameter.empty, Any):
        return lambda text: text
    raise TargetError(spec, f"cannot build its input of type {annotation!r} from the user's text")


# --- streaming an export's Runner.run calls -------------------------------------------------


class RunSink(Protocol):
    """The chat in progress that an export's runs stream into (set per request)."""

    def prepare(
        self, agent: Agent[Any], input: str | list[TResponseInputItem], run_config: RunConfig | None
    ) -> tuple[str | list[TResponseInputItem], RunConfig]: ...

    async def consume(self, agent: Agent[Any], result: RunResultStreaming) -> None: ...


#: The sink of the request being answered; None outside one (a plain ``Runner.run``).
current_sink: ContextVar[RunSink | None] = ContextVar("chatkit_broker_run_sink", default=None)


class StreamingRunner(Runner):
    """``Runner`` as seen from inside an export: ``run`` is streamed into the chat.

    Outside a broker request (say, the export's own tests) it is the real ``Runner``.
    """

    @classmethod
    async def run(cls, starting_agent: Agent[Any], input: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        sink = current_sink.get()
        if sink is None:
            return await Runner.run(starting_agent, input, **kwargs)
        input, kwargs["run_config"] = sink.prepare(starting_agent, input, kwargs.get("run_config"))
        result = Runner.run_streamed(starting_agent, input, **kwargs)
        await sink.consume(starting_agent, result)
        return result


def _install_runner(module: ModuleType) -> None:
    if getattr(module, "Runner", None) is Runner:
        module.Runner = StreamingRunner  # type: ignore[attr-defined]
    run_guardrails = getattr(module, "run_guardrails", None)
    if callable(run_guardrails) and getattr(run_guardrails, "__module__", "").startswith(
        "guardrails"
    ):  # openai-guardrails, as exports import it: tripwires noted for the refusal
        from .guardrails import instantiating, recording

        module.run_guardrails = recording(run_guardrails)  # type: ignore[attr-defined]
        for name in ("instantiate_guardrails", "load_config_bundle"):
            if callable(getattr(module, name, None)):
                setattr(module, name, instantiating(getattr(module, name)))


def with_client(
    run_config: RunConfig | dict[str, Any] | None, provider: MultiProvider, *, tracing: bool
) -> RunConfig:
    """The export's own RunConfig, with the broker's OpenAI client and tracing switch."""
    if isinstance(run_config, dict):
        run_config = RunConfig(**run_config)
    config = run_config or RunConfig()
    changes: dict[str, Any] = {}
    if type(config.model_provider) is MultiProvider:  # the default one: OpenAI from env
        changes["model_provider"] = provider
    if not tracing:
        changes["tracing_disabled"] = True
    return dataclasses.replace(config, **changes) if changes else config
