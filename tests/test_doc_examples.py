"""Every code example in the README and the docs site is exercised, so none can rot.

Each fenced block is checked by its language: ``json``, ``toml`` and ``yaml`` must parse, ``sh``
and ``bash`` must be valid shell (``bash -n``), ``python`` must compile, ``js`` must be valid
JavaScript (``node --check``, when node is installed). A block can ask for more with an HTML
comment on the line before it (invisible on GitHub and in the docs site):

- ``<!-- test: check -->`` on a ``toml`` block: it is a workflows file, and the broker's
  configuration loader (what ``chatkit-broker check`` runs) must accept it; on a ``sh`` block of
  ``NAME=value`` lines: those variables must pass the same check.
- ``<!-- test: run -->`` on a ``sh`` block: the commands run, in order, in a fresh folder with the
  broker's ``.venv/bin`` first on ``PATH``, and must exit 0.

To cover a new page, nothing is needed: every ``*.md`` under ``docs/`` is read. To make an
example run, put the marker before it.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.config import ConfigError, load_settings

from .support import need

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(
    r"(?:^<!-- test: (?P<mark>[a-z]+) -->\n)?^(?P<indent> *)```(?P<lang>[a-z]*)\n(?P<body>.*?)^(?P=indent)```$",
    re.M | re.S,
)
# What a starter configuration needs beside the example, so the example alone is judged.
BASE_ENV = {
    "OPENAI_API_KEY": "sk-proj-doc-examples-0000",
    "BROKER_JWT_SECRET": "doc-examples-secret-doc-examples-0123",
    "BROKER_SESSION_SECRET": "doc-examples-session-doc-examples-0123",
}


@dataclass(frozen=True)
class Example:
    path: Path
    line: int
    lang: str
    mark: str | None
    body: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}:{self.lang}"


def examples() -> list[Example]:
    found = []
    for path in FILES:
        text = path.read_text()
        for m in FENCE.finditer(text):
            indent = len(m.group("indent"))
            body = "\n".join(line[indent:] for line in m.group("body").splitlines())
            line = text.count("\n", 0, m.start("lang")) + 1
            found.append(Example(path, line, m.group("lang"), m.group("mark"), body))
    return found


EXAMPLES = examples()


def of(*langs: str, mark: str | None = None) -> list[Example]:
    return [e for e in EXAMPLES if e.lang in langs and (mark is None or e.mark == mark)]


def test_examples_are_found():
    """The collector itself: if the fence pattern broke, every test below would pass vacuously."""
    assert len(of("json")) >= 10 and len(of("sh", "bash")) >= 20
    assert of("toml", mark="check") and of("sh", mark="run") and of("sh", mark="check")


@pytest.mark.parametrize("example", of("json"), ids=str)
def test_json_examples_parse(example: Example):
    json.loads(example.body)


@pytest.mark.parametrize("example", of("toml"), ids=str)
def test_toml_examples_parse(example: Example):
    tomllib.loads(example.body)


@pytest.mark.parametrize("example", of("yaml"), ids=str)
def test_yaml_examples_parse(example: Example):
    yaml = pytest.importorskip("yaml")  # PyYAML comes with mkdocs (the docs extra)
    assert yaml.safe_load(example.body)


@pytest.mark.parametrize("example", of("sh", "bash"), ids=str)
def test_shell_examples_are_valid_shell(example: Example):
    r = subprocess.run(["bash", "-n"], input=example.body, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("example", of("python"), ids=str)
def test_python_examples_compile(example: Example):
    # top-level await is allowed: the examples are bodies of a request handler
    compile(example.body, str(example), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


@pytest.mark.parametrize("example", of("js"), ids=str)
def test_js_examples_are_valid_javascript(example: Example, tmp_path: Path):
    need(shutil.which("node") is not None, "node is not installed")
    module = tmp_path / "example.mjs"  # a module: the examples import and await at top level
    module.write_text(example.body)
    r = subprocess.run(["node", "--check", str(module)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _check(env: dict[str, str], cwd: Path) -> None:
    old = Path.cwd()
    os.chdir(cwd)  # agent paths in a workflows file are relative to the working directory
    try:
        load_settings(env)
    except ConfigError as exc:
        pytest.fail("check refuses the example:\n  " + "\n  ".join(exc.problems))
    finally:
        os.chdir(old)


@pytest.mark.parametrize("example", of("toml", mark="check"), ids=str)
def test_workflow_file_examples_pass_check(example: Example, tmp_path: Path):
    (tmp_path / "workflows.toml").write_text(example.body)
    for table in tomllib.loads(example.body).get("workflows", {}).values():
        target = str(table.get("agent", ""))
        if ".py:" in target:  # a file the example names: the starter agent stands in for it
            from broker.init import AGENT_PY

            (tmp_path / target.split(":")[0]).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / target.split(":")[0]).write_text(
                AGENT_PY.replace("agent = Agent(", f"{target.split(':')[1]} = Agent(")
            )
    _check({**BASE_ENV, "BROKER_WORKFLOWS_FILE": str(tmp_path / "workflows.toml")}, tmp_path)


@pytest.mark.parametrize("example", of("sh", mark="check"), ids=str)
def test_environment_examples_pass_check(example: Example, tmp_path: Path):
    env = dict(BASE_ENV, BROKER_WORKFLOWS="support=wf_doc_example")
    for line in example.body.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", name), f"not NAME=value: {line!r}"
            env[name] = value
    _check(env, tmp_path)


@pytest.mark.parametrize("example", of("sh", mark="run"), ids=str)
def test_runnable_shell_examples_run(example: Example, tmp_path: Path):
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    r = subprocess.run(
        ["bash", "-euo", "pipefail"],
        input=example.body,
        cwd=tmp_path,
        env={"PATH": path, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, f"{example}\n{r.stdout}\n{r.stderr}"
