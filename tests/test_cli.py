"""The command line, run as a user runs it: real processes, real ports, real output.

``check`` and ``token`` run in-process (``broker.cli.main`` with exactly the given environment
and working directory, its exit code and its stdout/stderr captured): they only read the
environment and print, so the process adds nothing but ~1.5 s of imports each. The entry point
itself (the installed ``chatkit-broker`` script, its exit codes and streams) stays proved by the
subprocess runs below: ``serve`` usage errors, a token minted through the script, the servers."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from pathlib import Path

import httpx
import jwt

from broker import cli

from .support import API_KEY, ROOT, SECRET, WF_SUPPORT, cli_command, free_port
from .support.mint import mint_sync


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli_command(), *args],
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


def cli_in_process(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``run_cli`` without the process: the same environment (exactly ``env`` plus PATH), the
    same working directory, the exit code ``main`` returns or raises, both streams."""
    saved, here = dict(os.environ), Path.cwd()
    out, err = io.StringIO(), io.StringIO()
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", **env})
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(list(args))
            except SystemExit as exc:
                if isinstance(exc.code, str):
                    print(exc.code, file=err)
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.chdir(here)
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def test_check_lists_every_problem_and_exits_2(tmp_path):
    r = cli_in_process(
        "check",
        env={
            "BROKER_WORKFLOWS": "Bad=wf_1,ok=nope",
            "BROKER_JWT_SECRET": "short",
            "BROKER_PORT": "x",
        },
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    for needle in ("OPENAI_API_KEY", "'Bad'", "'ok' must name", "BROKER_JWT_SECRET", "BROKER_PORT"):
        assert needle in r.stderr, needle
    assert r.stderr.count("\n  - ") >= 5


def test_check_names_one_mistake_per_kind_with_its_table_and_key(tmp_path):
    """A .env and a workflows file with a mistake in each kind's table and one in a variable:
    every mistake is printed, each with where it came from, and no secret."""
    key = "sk-proj-" + "q" * 40
    (tmp_path / ".env").write_text(
        f"OPENAI_API_KEY={key}\nBROKER_JWT_SECRET={SECRET}\n"
        f"BROKER_SESSION_SECRET={SECRET}\nBROKER_WORKFLOWS_FILE=workflows.toml\n"
        "BROKER_RATE_LIMIT=30 per fortnight\n"
    )
    (tmp_path / "workflows.toml").write_text(
        f'[workflows.legacy]\nid = "{WF_SUPPORT}"\nexpires_after = 6000\n'
        '[workflows.docs]\nserver = "https://chat.internal/chatkit"\nidle_timout = 30\n'
        '[workflows.coach]\nagent = "myapp.coach:agent"\nmax_messages_per_minute = "5"\n'
    )
    r = cli_in_process("check", env={}, cwd=tmp_path)
    assert r.returncode == 2, r.stdout
    for needle in (
        "BROKER_RATE_LIMIT must look like '30/minute'",
        "[workflows.legacy]: expires_after (seconds) must be a whole number 1..600",
        "[workflows.docs]: unknown option 'idle_timout' (did you mean 'idle_timeout'?)",
        "[workflows.coach]: max_messages_per_minute must be a whole number >= 1",
    ):
        assert needle in r.stderr, needle
    assert key not in r.stderr + r.stdout and SECRET not in r.stderr + r.stdout


def test_check_summary_masks_secrets(tmp_path, base_env):
    (tmp_path / ".env").write_text(f"CHATKIT_OPENAI_API_KEY={API_KEY}\n")
    env = {k: v for k, v in base_env.items() if k != "OPENAI_API_KEY"}
    r = cli_in_process("check", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert API_KEY not in r.stdout and SECRET not in r.stdout
    assert "sk-proj-…XYZ"[-3:] in r.stdout and "from CHATKIT_OPENAI_API_KEY (.env)" in r.stdout
    assert f"support: hosted {WF_SUPPORT}" in r.stdout
    assert "BROKER_JWT_AUDIENCE is not set" in r.stdout


def test_token_command_signs_with_the_secret(tmp_path):
    env = {"BROKER_JWT_SECRET": SECRET, "BROKER_JWT_AUDIENCE": "authenticated"}
    r = cli_in_process(
        "token",
        "--sub",
        "me",
        "--ttl",
        "120",
        "--claim",
        "role=pro",
        "--claim",
        "n=3",
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    claims = jwt.decode(r.stdout.strip(), SECRET, algorithms=["HS256"], audience="authenticated")
    assert claims["sub"] == "me" and claims["role"] == "pro" and claims["n"] == 3
    assert claims["exp"] - claims["iat"] == 120
    missing = cli_in_process("token", "--sub", "me", env={}, cwd=tmp_path)
    assert missing.returncode == 2 and "BROKER_JWT_SECRET" in missing.stderr


def test_serve_usage_errors(tmp_path):
    r = run_cli("serve", "--mock", "--reload", "--workers", "2", env={}, cwd=tmp_path)
    assert r.returncode == 2 and "--reload" in r.stderr
    r = run_cli(
        "serve", "--mock", "--host", "0.0.0.0", "--port", str(free_port()), env={}, cwd=tmp_path
    )
    assert r.returncode == 2 and "not a loopback address" in r.stderr
    r = run_cli("serve", env={}, cwd=tmp_path)
    assert r.returncode == 2 and "OPENAI_API_KEY" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("frobnicate", env={}, cwd=tmp_path)
    assert r.returncode == 2


def test_live_server_mints_with_a_cli_token(run_broker, base_env, openai, tmp_path):
    tok = run_cli("token", "--sub", "dana", env=base_env, cwd=tmp_path).stdout.strip()
    bp = run_broker(base_env)
    r = httpx.post(
        bp.url + "/api/chatkit/session",
        json={"workflow": "support"},
        headers={"Authorization": f"Bearer {tok}"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["client_secret"].startswith("ek_")
    assert openai.session_requests()[0].body["user"] == "dana"


def test_mock_server_from_zero_config(run_broker):
    bp = run_broker({}, "--mock")
    r = httpx.post(bp.url + "/api/chatkit/session", json={"workflow": "topic-generation"})
    assert r.status_code == 200 and r.json()["mock"] is True
    assert r.headers["x-chatkit-broker-mode"] == "mock"
    assert "MOCK MODE" in bp.logs()


def test_logs_of_every_failure_path_hold_no_secret(run_broker, base_env, openai, token):
    """Run a real server through success and each failure path, then read its whole log."""
    bp = run_broker(base_env | {"BROKER_UPSTREAM_TIMEOUT": "1", "BROKER_LOG_LEVEL": "debug"})
    good, other = token("erin"), token("erin", key="y" * 40)
    secrets_seen = []

    def mint(tok: str | None, workflow: str = "support") -> httpx.Response:
        r = mint_sync(bp.url, tok, workflow)
        if r.status_code == 200:
            secrets_seen.append(r.json()["client_secret"])
        return r

    assert mint(good).status_code == 200
    assert mint(other).status_code == 401
    assert mint(None).status_code == 401
    assert mint(good, "nope").status_code == 403
    for kind, status in [
        ("unauthorized", 502),
        ("workflow_not_found", 502),
        ("not_json", 502),
        ("no_secret", 502),
        ("reset", 503),
        ("hang", 504),
    ]:
        openai.for_workflow(WF_SUPPORT, kind)
        assert mint(good).status_code == status, kind
    openai.by_workflow.clear()
    assert mint(good).status_code == 200
    bp.stop()
    log = bp.logs()
    assert "upstream create 'support'" in log and "answered 401" in log  # the failures were logged…
    for secret in (API_KEY, SECRET, good, other, *secrets_seen, "Bearer ey"):
        assert secret not in log  # …without any secret
    assert "Traceback" not in log


def test_serve_refuses_to_start_when_the_agent_database_is_down(tmp_path):
    """Issue: a database that is down at start is a clear error and exit 2, not a broker that
    answers 503 to every chat."""
    key = "k" * 40
    r = run_cli(
        "serve",
        "--port",
        str(free_port()),
        env={
            "OPENAI_API_KEY": API_KEY,
            "BROKER_JWT_SECRET": SECRET,
            "BROKER_SESSION_SECRET": key,
            "BROKER_WORKFLOWS": "coach=examples.agent.support_agent:agent",
            "BROKER_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/nothing",
            "PYTHONPATH": str(ROOT),
        },
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert "cannot start" in r.stderr and "cannot be reached" in r.stderr
    assert "Traceback" not in r.stderr


def test_check_warns_that_hosted_workflows_stopped_running(tmp_path) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "OPENAI_API_KEY": API_KEY,
        "BROKER_JWT_SECRET": SECRET,
        "BROKER_WORKFLOWS": f"support={WF_SUPPORT}",
    }
    done = cli_in_process("check", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (warning,) = [line for line in done.stdout.splitlines() if "2026-11-30" in line]
    assert warning.startswith("warning: workflow 'support' (wf_")
    assert "chatkit-broker migrate EXPORT.py --name support" in warning


def test_serve_warns_at_start_up_that_hosted_workflows_stopped_running(run_broker, base_env):
    bp = run_broker(base_env)
    logs = bp.logs()
    for name in ("support", "sales"):
        assert f"workflow '{name}' (wf_" in logs
    assert logs.count("they stopped running on 2026-11-30") == 2
    assert logs.count("chatkit-broker migrate EXPORT.py --name") == 2
