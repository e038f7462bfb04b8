"""``chatkit-broker migrate``: run as the real CLI in a fresh directory, as a team would, on
exports of this project's own writing (tests/backends/agent/exports/)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.migrate import MARK, apply_fixes, report
from broker.migrate import migrate as migrate_run
from tests.support import API_KEY, cli_command
from tests.support.fake_responses import FakeResponses, FakeResponsesServer, text

EXPORTS = Path(__file__).parent / "backends" / "agent" / "exports"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeResponses]:
    server = FakeResponsesServer()
    yield server.start()
    server.stop()


def migrate(
    home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [*cli_command(), "migrate", *args],
        cwd=home,
        env=base | (env or {}),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_file_that_is_not_an_export_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("print('hello')\n")
    done = migrate(tmp_path, "app.py")
    assert done.returncode == 2
    assert "is not an Agent Builder export" in done.stderr and "Nothing was changed" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.py"]


def test_run_twice_edits_once_and_registers_once(tmp_path: Path) -> None:
    shutil.copy(EXPORTS / "input_guardrails.py", tmp_path / "hotel.py")
    env = {"OPENAI_API_KEY": API_KEY}
    first = migrate(tmp_path, "hotel.py", "--no-smoke", env=env)
    assert first.returncode == 0 and "workflow 'hotel' imports" in first.stdout, first.stdout
    copy = (tmp_path / "workflows" / "hotel.py").read_text()
    # the second run in-process: what makes a rerun harmless (the copy and the workflows file
    # read back, the fixes found done, the report) is all migrate() and report(), the code the
    # command runs; only the CLI's import check of the copy is left out, and that copy is the
    # one the first (real) run imported, byte for byte (asserted below). Saves a second import
    # of the guardrails stack (spaCy, presidio): ~10 s on 2 cores.
    again = migrate_run(tmp_path / "hotel.py", name=None, env=env, cwd=tmp_path)
    second = "\n".join(report(again, dotenv_has_file=False))
    assert "guardrail helpers read fields of guardrails that are not configured" in first.stdout
    assert '+        return getattr(r, "info", None)' in first.stdout  # the diff
    assert "no known exporter defect to fix" in second and "+++" not in second
    assert "exists (an earlier run)" in second
    assert (tmp_path / "workflows" / "hotel.py").read_text() == copy
    assert copy.count(MARK) == 2
    assert (tmp_path / "hotel.py").read_text() == (EXPORTS / "input_guardrails.py").read_text()
    workflows = tomllib.loads((tmp_path / "workflows.toml").read_text())["workflows"]
    assert workflows == {"hotel": {"agent": "workflows/hotel.py:run_workflow"}}
    assert "already has workflow 'hotel'" in second


def test_an_approval_node_and_json_schema_annotations_are_fixed_and_named(tmp_path: Path) -> None:
    (tmp_path / "approvals.py").write_text((EXPORTS / "approval_and_tools.py").read_text())
    done = migrate(tmp_path, "approvals.py", "--no-smoke", env={"OPENAI_API_KEY": API_KEY})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "approval_request() used by a user-approval node but not defined" in done.stdout
    assert "function-tool annotations in JSON Schema types" in done.stdout
    fixed = (tmp_path / "workflows" / "approvals.py").read_text()
    assert "def lookup_part(sku: str | None, quantity: int):" in fixed
    assert "def approval_request(message: str):" in fixed
    assert "workflow 'approvals' imports" in done.stdout
    needs = done.stdout.split("needs you:")[1]
    assert "approval node" in needs and "tool lookup_part(): a stub" in needs
    assert "state: the workflow's `state` starts afresh with every message" in needs
    assert apply_fixes(fixed) == (fixed, [])  # nothing left to fix


def test_hosted_tools_are_listed_as_needing_the_team(tmp_path: Path) -> None:
    shutil.copy(EXPORTS / "hosted_tools.py", tmp_path / "research.py")
    done = migrate(tmp_path, "research.py", "--no-smoke", env={"OPENAI_API_KEY": API_KEY})
    assert done.returncode == 0, done.stdout + done.stderr
    needs = done.stdout.split("needs you:")[1]
    for tool in ("web search", "file search", "code interpreter", "hosted MCP"):
        assert f"hosted tool: {tool}" in needs


def test_with_a_key_it_ends_with_one_unstored_test_message(
    tmp_path: Path, fake: FakeResponses
) -> None:
    fake.reset()
    shutil.copy(EXPORTS / "single_agent.py", tmp_path / "helpdesk.py")
    (tmp_path / ".env").write_text(f"OPENAI_API_KEY={API_KEY}\nOPENAI_BASE_URL={fake.base_url}\n")
    fake.script(text("Hi, this is the helpdesk."))
    done = migrate(tmp_path, "helpdesk.py", "--name", "desk")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith(
        "test message answered (not stored): Hi, this is the helpdesk."
    )
    assert fake.requests[-1].headers["Authorization"] == f"Bearer {API_KEY}"  # from .env
    assert not list(tmp_path.glob("*.sqlite3"))  # no thread database was made
    assert "set BROKER_WORKFLOWS_FILE=workflows.toml" in done.stdout


def test_an_export_that_does_not_import_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(
        "from agents import Agent, Runner\n\n"
        "SETTINGS = {}\n"
        "TIMEOUT = SETTINGS['timeout']\n\n"
        "async def run_workflow(workflow_input):\n"
        "    return None\n"
    )
    done = migrate(tmp_path, "broken.py", "--no-smoke")
    assert done.returncode == 1
    line = next(x for x in done.stdout.splitlines() if "does not import" in x)
    assert "workflow 'broken'" in line and "KeyError" in line
    assert "workflows/broken.py line 4" in line
