"""A first run, as a new user makes it: ``chatkit-broker init`` in an empty folder, the key put
in the ``.env`` it wrote, ``check``, ``serve`` and a message answered by the agent (against the
fake Responses API); and ``serve`` on a busy port saying what to do instead of ``[Errno 98]``."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from pathlib import Path

import httpx
import pytest
from dotenv import dotenv_values

from .support import cli_command, free_port, log_audit
from .support.fake_responses import FakeResponsesServer
from .support.processes import BrokerProcess, wait_until_serving

KEY = "sk-proj-first-run-0123456789abcdef"


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*cli_command(), *args],
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def put_key(folder: Path) -> None:
    """The one edit a user makes: the OpenAI key on the line init left for it."""
    env_file = folder / ".env"
    text = env_file.read_text()
    assert "\nCHATKIT_OPENAI_API_KEY=\n" in text
    env_file.write_text(
        text.replace("\nCHATKIT_OPENAI_API_KEY=\n", f"\nCHATKIT_OPENAI_API_KEY={KEY}\n")
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    r = run_cli("init", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    log_audit.add_env(dotenv_values(tmp_path / ".env"))  # its fresh secrets must never be logged
    return tmp_path


def test_init_writes_a_starter_project_with_fresh_secrets(project: Path, tmp_path_factory):
    for name in (".env", "workflows.toml", "workflows/assistant.py", "assertion-key.pem"):
        assert (project / name).is_file(), name
    env = dotenv_values(project / ".env")
    assert len(env["BROKER_JWT_SECRET"].encode()) >= 32
    assert len(env["BROKER_SESSION_SECRET"].encode()) >= 32
    assert env["BROKER_ASSERTION_KEY"] == "@assertion-key.pem"
    assert "BEGIN PRIVATE KEY" in (project / "assertion-key.pem").read_text()
    for secret_file in (".env", "assertion-key.pem"):
        assert stat.S_IMODE((project / secret_file).stat().st_mode) == 0o600
    # fresh: a second project gets other secrets
    other = tmp_path_factory.mktemp("other")
    assert run_cli("init", cwd=other).returncode == 0
    again = dotenv_values(other / ".env")
    assert again["BROKER_JWT_SECRET"] != env["BROKER_JWT_SECRET"]
    assert again["BROKER_SESSION_SECRET"] != env["BROKER_SESSION_SECRET"]
    assert (other / "assertion-key.pem").read_text() != (project / "assertion-key.pem").read_text()


def test_init_says_the_next_commands_and_check_names_the_missing_key(tmp_path: Path):
    r = run_cli("init", cwd=tmp_path)
    for command in ("chatkit-broker check", "chatkit-broker serve", "chatkit-broker token"):
        assert command in r.stdout
    log_audit.add_env(dotenv_values(tmp_path / ".env"))
    before = run_cli("check", cwd=tmp_path)
    assert before.returncode == 2
    assert "OPENAI_API_KEY" in before.stderr and "Traceback" not in before.stderr


def test_init_refuses_to_overwrite_and_writes_nothing(tmp_path: Path):
    (tmp_path / ".env").write_text("MINE=1\n")
    r = run_cli("init", cwd=tmp_path)
    assert r.returncode == 2
    assert ".env" in r.stderr and "not overwriting" in r.stderr
    assert (tmp_path / ".env").read_text() == "MINE=1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env"]


def test_init_then_check_then_serve_answers_a_message(project: Path):
    put_key(project)
    r = run_cli("check", cwd=project)
    assert r.returncode == 0, r.stderr
    assert "assistant: agent workflows/assistant.py:agent" in r.stdout
    assert KEY not in r.stdout

    server = FakeResponsesServer()
    fake = server.start()
    port = free_port()
    log_path = project / "broker.log"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(project),
        "OPENAI_BASE_URL": fake.url + "/v1",  # the fake stands in for OpenAI; the key is in .env
    }
    try:
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [*cli_command(), "serve", "--port", str(port)],
                env=env,
                cwd=project,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        bp = BrokerProcess(f"http://127.0.0.1:{port}", proc, log_path)
        try:
            wait_until_serving(bp)
            token = run_cli("token", "--sub", "alice", cwd=project).stdout.strip()
            headers = {"Authorization": f"Bearer {token}"}
            workflows = httpx.get(f"{bp.url}/api/chatkit/workflows", headers=headers, timeout=10)
            assert workflows.status_code == 200, workflows.text
            assert [w["name"] for w in workflows.json()["workflows"]] == ["assistant"]
            run = httpx.post(
                f"{bp.url}/api/workflows/assistant/runs",
                headers=headers,
                json={"input": "hello from a first run"},
                timeout=30,
            )
            assert run.status_code == 200, run.text
            assert "hello from a first run" in run.json()["output_text"]  # the fake echoes

            # the session secret a browser gets: good for its own workflow's endpoints only
            # (docs/security.md says which)
            minted = httpx.post(
                f"{bp.url}/api/chatkit/session",
                headers=headers,
                json={"workflow": "assistant"},
                timeout=10,
            )
            assert minted.status_code == 200, minted.text
            secret = {"Authorization": f"Bearer {minted.json()['client_secret']}"}
            assert secret["Authorization"].startswith("Bearer cks_")
            threads = httpx.get(
                f"{bp.url}/api/threads?workflow=assistant", headers=secret, timeout=10
            )
            assert threads.status_code == 200, threads.text
            assert [t["id"] for t in threads.json()["data"]] == [run.json()["thread_id"]]
            again = httpx.post(
                f"{bp.url}/api/workflows/assistant/runs",
                headers=secret,
                json={"input": "and with the session secret"},
                timeout=30,
            )
            assert again.status_code == 200, again.text
            listing = httpx.get(f"{bp.url}/api/chatkit/workflows", headers=secret, timeout=10)
            assert listing.status_code == 401
            assert "only good at its own workflow" in listing.json()["error"]["message"]
        finally:
            bp.stop()
    finally:
        server.stop()
    assert fake.requests, "the agent never called the model"
    assert fake.requests[-1].headers.get("Authorization") == f"Bearer {KEY}"
    assert (project / "chatkit-broker.sqlite3").is_file()  # the thread was kept


def test_serve_on_a_busy_port_says_which_and_how_to_pick_another(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run_cli("serve", "--mock", "--port", str(port), cwd=tmp_path)
    assert r.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in r.stderr
    assert f"--port {port + 1}" in r.stderr and f"BROKER_PORT={port + 1}" in r.stderr
    assert "Errno" not in r.stderr and "Traceback" not in r.stderr


def test_the_starter_assertion_key_signs_for_a_gateway_once_one_is_added(project: Path):
    """The commented gateway in the starter workflows file works as soon as it is uncommented:
    the assertion key init wrote is the one the broker signs with (not a throw-away)."""
    put_key(project)
    workflows = project / "workflows.toml"
    text = workflows.read_text()
    assert "# [workflows.helpdesk]\n# server = " in text
    workflows.write_text(
        text.replace("# [workflows.helpdesk]\n# server = ", "[workflows.helpdesk]\nserver = ")
    )
    r = run_cli("check", cwd=project)
    assert r.returncode == 0, r.stderr
    assert "helpdesk: gateway http://127.0.0.1:8001/chatkit" in r.stdout
    assert "gateway assertions: ES256, key " in r.stdout and "(BROKER_ASSERTION_KEY)" in r.stdout
    assert "made at start-up" not in r.stdout
