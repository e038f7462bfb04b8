"""Loading ``agent = "…"``: agents and exports are told apart, and every way a spec can be
wrong is a TargetError that names the problem (the broker turns it into a config error)."""

from __future__ import annotations

from pathlib import Path

import pytest
from agents import Runner

from broker.backends.agent.targets import (
    AgentTarget,
    ExportTarget,
    StreamingRunner,
    TargetError,
    load_target,
)

ROOT = Path(__file__).resolve().parents[3]


def test_an_agent_module_loads_as_an_agent() -> None:
    target = load_target("examples.agent.support_agent:agent")
    assert isinstance(target, AgentTarget)
    assert target.agent.name == "Support" and not target.structured


def test_an_export_loads_by_module_or_by_file_and_its_runner_is_rebound() -> None:
    by_module = load_target("examples.agent.builder_export:run_workflow")
    by_file = load_target("examples/agent/builder_export.py:run_workflow", base_dir=ROOT)
    for target in (by_module, by_file):
        assert isinstance(target, ExportTarget)
        assert target.module.Runner is StreamingRunner
        assert target.make_input("hello").input_as_text == "hello"
    assert Runner is not StreamingRunner  # only the export's own name was rebound


@pytest.mark.parametrize(
    ("source", "spec", "problem"),
    [
        (None, "no_colon_here", "expected 'package.module:attribute'"),
        (None, "examples.agent.support_agent:", "expected 'package.module:attribute'"),
        (None, "examples.agent.nope:agent", "cannot import 'examples.agent.nope'"),
        (None, "examples.agent.support_agent:missing", "has no attribute 'missing'"),
        (
            None,
            "examples.agent.support_agent:opening_hours",
            "is a FunctionTool; expected an agents.Agent",
        ),
        (
            "import not_a_real_dependency_xyz\n",
            "mod.py:agent",
            "cannot import 'not_a_real_dependency_xyz' (a dependency",
        ),
        (
            "x = 1\nraise RuntimeError('no key')\n",
            "mod.py:agent",
            "importing it raised RuntimeError: no key (at ",
        ),
        ("def f(:\n", "mod.py:f", "syntax error in"),
        (
            "def run_workflow(x):\n    return x\n",
            "mod.py:run_workflow",
            "a plain (not async) function",
        ),
        (
            "async def run_workflow(a, b):\n    pass\n",
            "mod.py:run_workflow",
            "exactly one argument",
        ),
        (
            "from pydantic import BaseModel\nclass In(BaseModel):\n    question: str\n"
            "async def run_workflow(i: In):\n    pass\n",
            "mod.py:run_workflow",
            "In has no input_as_text field",
        ),
        ("agent = 42\n", "mod.py:agent", "is a int"),
        (None, "missing_file.py:agent", "no such file"),
    ],
)
def test_a_bad_spec_is_a_target_error_naming_the_problem(
    tmp_path: Path, source, spec, problem
) -> None:
    if source is not None:
        (tmp_path / "mod.py").write_text(source)
    with pytest.raises(TargetError) as info:
        load_target(spec, base_dir=tmp_path)
    assert problem in str(info.value)
    assert str(info.value).startswith(f"agent {spec!r}: ")
    if "no key" in problem:  # the line it raised at, in the file itself
        assert str(info.value).endswith(f"{tmp_path / 'mod.py'} line 2)")


def test_an_export_taking_a_plain_string_gets_the_text(tmp_path: Path) -> None:
    (tmp_path / "plain.py").write_text("async def main(text: str):\n    return text\n")
    target = load_target("plain.py:main", base_dir=tmp_path)
    assert isinstance(target, ExportTarget) and target.make_input("hi") == "hi"
