"""``doctor`` and ``check`` on agent workflows, as the real CLI in a directory laid out by
``migrate``: a guardrail's missing spaCy model is named with its install command before any
message; every endpoint the workflow uses is called with the key; ``--smoke`` sends one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ...support import API_KEY, SECRET, cli_command
from ...support.fake_responses import FakeResponses

EXPORTS = Path(__file__).parent / "exports"


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [*cli_command(), *args], cwd=home, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory, responses_server: FakeResponses) -> Path:
    """A directory laid out by the real ``migrate`` (once for the module: each run imports the
    guardrails stack, ~5-10 s); every test gets a copy of it (``home``)."""
    pytest.importorskip("guardrails", reason="pip install 'chatkit-broker[guardrails]'")
    where = tmp_path_factory.mktemp("migrated")
    (where / ".env").write_text(
        f"OPENAI_API_KEY={API_KEY}\nOPENAI_BASE_URL={responses_server.base_url}\n"
        f"BROKER_JWT_SECRET={SECRET}\nBROKER_SESSION_SECRET={SECRET}\n"
        "BROKER_WORKFLOWS_FILE=workflows.toml\nBROKER_DATABASE_URL=memory\n"
    )
    shutil.copy(EXPORTS / "input_guardrails.py", where / "concierge.py")
    done = cli(where, "migrate", "concierge.py", "--no-smoke")
    assert done.returncode == 0, done.stdout + done.stderr
    return where


@pytest.fixture
def home(tmp_path: Path, migrated: Path, responses: FakeResponses) -> Path:
    """This test's copy of the migrated directory (a test may add a spaCy model to it)."""
    shutil.copytree(migrated, tmp_path / "home")
    return tmp_path / "home"


def agent_check(done: subprocess.CompletedProcess[str]) -> dict:
    report = json.loads(done.stdout)
    return next(c for c in report["checks"] if c["id"] == "agent")


def test_a_missing_guardrail_model_is_named_by_check_and_doctor_smoke(
    home: Path, responses: FakeResponses
) -> None:
    fix = "python -m spacy download en_core_web_sm"
    checked = cli(home, "check")
    assert checked.returncode == 1
    assert "problem: workflow 'concierge': the Contains PII guardrail needs spaCy's" in (
        checked.stdout
    )
    assert fix in checked.stdout
    done = cli(home, "doctor", "--smoke", "--json", "--timeout", "150")
    agent = agent_check(done)
    assert done.returncode == 1 and agent["status"] == "fail"
    (item,) = agent["data"]["workflows"]
    assert item["fix"].endswith(fix) and agent["fix"] == f"concierge: {item['fix']}"
    assert responses.requests == []  # found before any message or model call


def test_doctor_smoke_passes_a_ready_workflow_after_calling_every_endpoint_it_uses(
    home: Path, responses: FakeResponses
) -> None:
    import spacy

    spacy.blank("en").to_disk(home / "en_core_web_sm")
    assert cli(home, "check").returncode == 0
    done = cli(home, "doctor", "--smoke", "--json", "--timeout", "150")
    agent = agent_check(done)
    assert agent["status"] == "pass", agent
    (item,) = agent["data"]["workflows"]
    assert "/responses, /chat/completions, /moderations answer" in item["summary"]
    assert "a test message got: echo: Hello! This is a test message" in item["summary"]
    paths = [r.path for r in responses.requests]
    assert paths.count("/v1/moderations") == 2  # the probe, then the smoke message's guardrail
    assert {r.headers["Authorization"] for r in responses.requests} == {f"Bearer {API_KEY}"}


def test_an_endpoint_that_refuses_the_key_is_named(home: Path, responses: FakeResponses) -> None:
    import spacy

    spacy.blank("en").to_disk(home / "en_core_web_sm")
    responses.http_errors["/v1/moderations"] = 401
    agent = agent_check(cli(home, "doctor", "--json", "--timeout", "150"))
    (item,) = agent["data"]["workflows"]
    assert item["summary"] == "POST /moderations: the key was refused (HTTP 401)"
    assert "CHATKIT_OPENAI_API_KEY" in item["fix"]
