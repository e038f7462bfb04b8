"""``chatkit-broker doctor``: the real CLI in a subprocess, against the fake OpenAI (issue #6).

Each test runs the command as an operator would: an exact environment, a working directory
with its own ``.env`` when the case needs one. Every run also asserts that no full API key,
JWT or client secret appears anywhere in what the command printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .support import API_KEY, SECRET, WF_SALES, WF_SUPPORT, app_client, auth, cli_command
from .support.fake_openai import FakeOpenAI

OTHER_KEY = "sk-proj-STRAYotherPROJECTkey000000000000wxyz"


@dataclass
class Run:
    code: int
    out: str
    err: str
    elapsed: float

    @property
    def report(self) -> dict[str, Any]:
        return json.loads(self.out)

    def check(self, check_id: str) -> dict[str, Any]:
        return next(c for c in self.report["checks"] if c["id"] == check_id)

    def line(self, start: str) -> str:
        """The first output line starting (after indentation) with ``start``."""
        for line in self.out.splitlines():
            if line.strip().startswith(start):
                return line.strip()
        raise AssertionError(f"no line starting with {start!r} in:\n{self.out}")


@pytest.fixture
def doctor_env(base_env: dict[str, str]) -> dict[str, str]:
    """The conftest live configuration, with an audience so that no config warning shows."""
    return base_env | {"BROKER_JWT_AUDIENCE": "authenticated"}


@pytest.fixture
def doctor(openai: FakeOpenAI, tmp_path: Path) -> Iterator[Callable[..., Run]]:
    """``doctor(env, *args, dotenv=None, stdin=None)`` runs the real CLI in a fresh directory."""
    saved_headers = dict(openai.models_headers)
    counter = iter(range(1000))

    def run(
        env: dict[str, str],
        *args: str,
        dotenv: dict[str, str] | None = None,
        stdin: str | None = None,
        forbidden: tuple[str, ...] = (),
    ) -> Run:
        cwd = tmp_path / f"run{next(counter)}"
        cwd.mkdir()
        if dotenv is not None:
            (cwd / ".env").write_text("".join(f"{k}={v}\n" for k, v in dotenv.items()))
        full_env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(tmp_path),
            "COLUMNS": "400",  # one line per item, so tests can find them; wrapping has its own test
            **env,
        }
        started = time.monotonic()
        proc = subprocess.run(
            [*cli_command(), "doctor", *args],
            env=full_env,
            cwd=cwd,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        result = Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
        secrets = {API_KEY, OTHER_KEY, SECRET, *forbidden}
        secrets |= {s["client_secret"] for s in openai.sessions.values()}
        secrets |= {v for v in (dotenv or {}).values() if v.startswith("sk-")}
        for secret in secrets:
            assert secret not in result.out + result.err, "a secret was printed"
        return result

    yield run
    openai.models_headers = saved_headers


def minted_ids(openai: FakeOpenAI) -> set[str]:
    return {sid for sid, s in openai.sessions.items() if s["user"] == "doctor-check"}


def cancelled_ids(openai: FakeOpenAI) -> set[str]:
    return {r.path.split("/")[-2] for r in openai.cancel_requests()}


# --- the whole report ---------------------------------------------------------------------------


def test_all_good(doctor, doctor_env, openai):
    r = doctor(doctor_env)
    assert r.code == 0, r.out + r.err
    heads = [line for line in r.out.splitlines() if line[:1] in "✔⚠✖○" and line[2:3].isdigit()]
    assert [h[:2] for h in heads] == ["✔ "] * 6, r.out
    assert [h[2:4] for h in heads] == ["1.", "2.", "3.", "4.", "5.", "6."]
    assert "sk-proj-…fXYZ" in r.line("✔ 2. API key")
    assert "from OPENAI_API_KEY (the shell environment)" in r.out
    assert "organization org-fake, project proj_fake" in r.line("✔ 3.")
    assert "2 of 2 minted and cancelled" in r.line("✔ 4.")
    assert "minted (a session lasts 600 s) and cancelled" in r.line(f"✔ support ({WF_SUPPORT})")
    assert r.line("✔ All checks passed")
    assert r.err == ""

    # what went upstream: one GET /models, then per workflow one mint and its cancel, in order
    paths = [(q.method, q.path) for q in openai.requests]
    assert paths[0] == ("GET", "/v1/models")
    assert [p for p in paths if p[1] == "/v1/chatkit/sessions"] == [
        ("POST", "/v1/chatkit/sessions")
    ] * 2
    assert [q.body["workflow"]["id"] for q in openai.session_requests()] == [WF_SUPPORT, WF_SALES]
    assert {q.body["user"] for q in openai.session_requests()} == {"doctor-check"}
    for q in openai.requests:
        assert q.headers["Authorization"] == f"Bearer {API_KEY}"
    assert len(minted_ids(openai)) == 2
    assert cancelled_ids(openai) == minted_ids(openai)
    assert {s["status"] for s in openai.sessions.values()} == {"cancelled"}


def test_404_for_one_workflow_of_two(doctor, doctor_env, openai):
    openai.models_headers = {"openai-organization": "org-acme", "openai-project": "proj_marketing"}
    openai.for_workflow(WF_SALES, "workflow_not_found")
    r = doctor(doctor_env)
    assert r.code == 1
    assert r.line("✖ 4. Workflows").endswith("1 of 2 failed")
    assert r.line(f"✔ support ({WF_SUPPORT})")
    assert "OpenAI says this workflow was not found (HTTP 404)" in r.line(f"✖ sales ({WF_SALES})")
    flat = " ".join(r.out.split())
    assert f"\"Workflow with id '{WF_SALES}' not found.\"" in flat
    assert "An API key only sees the workflows of its own project" in flat
    assert "belongs to project proj_marketing" in flat
    assert "(sk-proj-…fXYZ, OPENAI_API_KEY from the shell environment)" in flat
    assert "The same key minted the other workflow(s)" in flat
    assert (
        f"fix: in Agent Builder open {WF_SALES}: check that it is published and lives in "
        "project proj_marketing (one broker key serves one project)"
    ) in flat
    assert "✖ 1 check failed (4. Workflows); exit 1." in r.out
    # only the support session was minted, and it was cancelled
    assert len(minted_ids(openai)) == 1
    assert cancelled_ids(openai) == minted_ids(openai)


def test_404_on_every_workflow_names_the_usual_causes(doctor, doctor_env, openai):
    openai.for_workflow(WF_SUPPORT, "workflow_not_found")
    openai.for_workflow(WF_SALES, "workflow_not_found")
    r = doctor(doctor_env, "--json")
    assert r.code == 1
    entries = r.check("workflows")["data"]["workflows"]
    assert [e["status"] for e in entries] == ["fail", "fail"]
    assert [e["http_status"] for e in entries] == [404, 404]
    assert "another project than the workflow" in " ".join(entries[0]["details"])
    # since 2026-11-30 the likeliest cause is the shutdown itself: say so, and where to go
    details = " ".join(entries[0]["details"])
    assert "OpenAI shut Agent Builder down" in details
    assert "gateway workflow" in details and "agent workflow" in details
    assert "proj_fake" in " ".join(entries[0]["details"])
    assert entries[0]["fix"].startswith(f"in Agent Builder open {WF_SUPPORT}: publish it")
    assert "CHATKIT_OPENAI_API_KEY" in entries[0]["fix"]
    assert openai.cancel_requests() == []


def test_401_key_refused(doctor, doctor_env, openai):
    openai.then("unauthorized")  # GET /models
    r = doctor(doctor_env)
    assert r.code == 1
    assert "OpenAI refused the key (HTTP 401" in r.line("✖ 3. Key and project")
    assert "Incorrect API key provided" in r.out
    assert "fix: create a key in the project that owns your workflows" in r.out
    assert r.line("○ 4. Workflows: skipped")
    assert openai.session_requests() == []


def test_403_on_mint_is_a_key_problem(doctor, doctor_env, openai):
    openai.for_workflow(WF_SUPPORT, "forbidden")
    r = doctor(doctor_env)
    assert r.code == 1
    assert "the key was refused for ChatKit" in r.line(f"✖ support ({WF_SUPPORT})")
    assert "HTTP 403" in r.out
    assert r.line(f"✔ sales ({WF_SALES})")
    assert cancelled_ids(openai) == minted_ids(openai) and len(minted_ids(openai)) == 1


def test_400_shows_the_apis_message_which_the_service_never_forwards(doctor, doctor_env, openai):
    message = "Invalid 'expires_after.seconds': integer above maximum value."
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()
    openai.for_workflow(WF_SALES, "status", status=400, body=body)
    r = doctor(doctor_env)
    assert r.code == 1
    assert "OpenAI rejected the session request" in r.line(f"✖ sales ({WF_SALES})")
    assert message in " ".join(r.out.split())


async def test_the_service_still_never_forwards_a_400_body(make_settings, openai, token):
    message = "Invalid 'expires_after.seconds': integer above maximum value."
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()
    openai.for_workflow(WF_SUPPORT, "status", status=400, body=body)
    async with app_client(make_settings()) as c:
        r = await c.post(
            "/api/chatkit/session", json={"workflow": "support"}, headers=auth(token())
        )
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_error"
    assert "expires_after" not in r.text and "maximum" not in r.text


def test_org_and_project_compared_with_the_configured_ones(doctor, doctor_env, openai):
    env = doctor_env | {"OPENAI_ORGANIZATION": "org-other", "OPENAI_PROJECT": "proj_other"}
    r = doctor(env)
    assert r.code == 0  # a warning, not a failure
    assert r.line("⚠ 3. Key and project")
    assert "OPENAI_PROJECT is proj_other but the API answered for project proj_fake" in r.out
    assert "OPENAI_ORGANIZATION is org-other but the API answered for organization" in r.out
    models = openai.requests[0]
    assert models.headers["OpenAI-Organization"] == "org-other"
    assert models.headers["OpenAI-Project"] == "proj_other"


def test_text_report_fits_100_columns_when_piped(doctor, doctor_env, openai):
    openai.for_workflow(WF_SALES, "workflow_not_found")
    r = doctor(doctor_env)
    wide = max(len(line) for line in r.out.splitlines())
    narrow = doctor(doctor_env | {"COLUMNS": ""})
    assert wide > 100
    assert max(len(line) for line in narrow.out.splitlines()) <= 100
    assert " ".join(narrow.out.split()).count("fix: in Agent Builder open") == 1


# --- time bound -----------------------------------------------------------------------------------


def test_timeout_on_the_key_check_names_it(doctor, doctor_env, openai):
    openai.then("status", status=200, delay=5)  # GET /models answers too late
    r = doctor(doctor_env, "--timeout", "1", "--json")
    assert r.code == 1
    assert r.elapsed < 4
    assert r.report["timed_out"] == "check 3 (GET /models)"
    assert r.err == ""  # no stray warnings or tracebacks after a cancelled request
    assert r.check("key_works")["status"] == "fail"
    assert "ran out during check 3" in r.check("key_works")["summary"]
    assert r.check("workflows")["status"] == "skip"
    assert r.check("auth")["status"] == "pass"  # needs no network: still checked
    assert openai.session_requests() == []


def test_timeout_on_a_workflow_names_it_and_cancels_what_was_minted(doctor, doctor_env, openai):
    # answers too late (and then without a session, so nothing is created behind the test's back)
    openai.for_workflow(WF_SALES, "status", status=200, delay=5)
    r = doctor(doctor_env, "--timeout", "1.5")
    assert r.code == 1
    assert r.elapsed < 4.5
    assert r.line(f"✔ support ({WF_SUPPORT})")
    line = " ".join(r.out.split())
    assert f"✖ sales ({WF_SALES}): timed out: the --timeout budget of 1.5 s ran out" in line
    assert "The --timeout budget of 1.5 s ran out during check 4 (workflow sales)." in line
    assert r.err == ""
    support = [q for q in openai.session_requests() if q.body["workflow"]["id"] == WF_SUPPORT]
    assert len(support) == 1
    [support_session] = [s for s in openai.sessions.values() if s["workflow"]["id"] == WF_SUPPORT]
    assert cancelled_ids(openai) == {support_session["id"]}


def test_upstream_timeout_shorter_than_the_budget(doctor, doctor_env, openai):
    openai.for_workflow(WF_SUPPORT, "status", status=200, delay=3)
    env = doctor_env | {"BROKER_UPSTREAM_TIMEOUT": "0.5", "BROKER_UPSTREAM_RETRIES": "0"}
    r = doctor(env, "--json")
    assert r.code == 1
    assert r.report["timed_out"] is None
    support, sales = r.check("workflows")["data"]["workflows"]
    assert support["status"] == "fail" and "BROKER_UPSTREAM_TIMEOUT" in support["summary"]
    assert sales["status"] == "pass" and sales["cancelled"] is True


# --- which key --------------------------------------------------------------------------------------


def test_stray_shell_key_overriding_dotenv(doctor, doctor_env, openai):
    env = {k: v for k, v in doctor_env.items() if k != "OPENAI_API_KEY"}
    openai.for_workflow(WF_SALES, "workflow_not_found")
    r = doctor(env | {"OPENAI_API_KEY": OTHER_KEY}, dotenv={"OPENAI_API_KEY": API_KEY})
    assert r.code == 1
    head = r.line("⚠ 2. API key")
    assert "sk-proj-…wxyz from OPENAI_API_KEY (the shell environment)" in head
    flat = " ".join(r.out.split())
    assert "differs from the one in .env (sk-proj-…fXYZ)" in flat
    assert "fix: run 'unset OPENAI_API_KEY' so the .env key is used" in flat
    # the 404 explanation points back at it
    assert "Check 2 found the shell's OPENAI_API_KEY (sk-proj-…wxyz) overriding" in flat
    assert "fix: run 'unset OPENAI_API_KEY'" in flat
    assert openai.requests[0].headers["Authorization"] == f"Bearer {OTHER_KEY}"


def test_key_from_dotenv_and_chatkit_key_winning(doctor, doctor_env):
    env = {k: v for k, v in doctor_env.items() if k != "OPENAI_API_KEY"}
    r = doctor(env, "--json", dotenv={"OPENAI_API_KEY": API_KEY})
    assert r.code == 0
    assert r.check("key")["data"] == {
        "masked": "sk-proj-…fXYZ",
        "variable": "OPENAI_API_KEY",
        "origin": ".env",
        "dotenv_masked": None,
    }
    r = doctor(env | {"OPENAI_API_KEY": OTHER_KEY}, dotenv={"CHATKIT_OPENAI_API_KEY": API_KEY})
    assert r.code == 0
    assert "sk-proj-…fXYZ from CHATKIT_OPENAI_API_KEY (.env)" in r.line("✔ 2. API key")
    assert "OPENAI_API_KEY (sk-proj-…wxyz) is set too and ignored" in " ".join(r.out.split())


def test_empty_shell_variable_hiding_the_dotenv_key(doctor, doctor_env, openai):
    env = doctor_env | {"OPENAI_API_KEY": ""}
    r = doctor(env, "--json", dotenv={"OPENAI_API_KEY": API_KEY})
    assert r.code == 1
    assert r.check("config")["status"] == "fail"
    key = r.check("key")
    assert key["status"] == "fail"
    assert "sets OPENAI_API_KEY to an empty value" in key["summary"]
    assert key["fix"].startswith("run 'unset OPENAI_API_KEY'")
    assert openai.requests == []


# --- configuration and usage --------------------------------------------------------------------------


def test_invalid_config_is_a_failed_check(doctor, doctor_env, openai):
    env = doctor_env | {"BROKER_WORKFLOWS": "Support=wf_x", "BROKER_RATE_LIMIT": "lots"}
    r = doctor(env)
    assert r.code == 1
    assert r.line("✖ 1. Configuration: invalid (2 problems)")
    assert "BROKER_WORKFLOWS: workflow name 'Support' must be" in r.out
    assert "BROKER_RATE_LIMIT must look like" in r.out
    for n in (3, 4, 5, 6):
        assert r.line(f"○ {n}.")
    assert "Traceback" not in r.err
    assert openai.requests == []


def test_config_warning_is_a_warning(doctor, base_env):
    r = doctor(base_env)  # no BROKER_JWT_AUDIENCE
    assert r.code == 0
    assert r.line("⚠ 1. Configuration")
    assert "BROKER_JWT_AUDIENCE is not set" in r.out
    assert "✔ No check failed; warnings in 1. Configuration." in r.out


def test_mock_mode_skips_the_openai_checks(doctor, openai):
    r = doctor({"BROKER_MOCK": "1"})
    assert r.code == 0
    assert r.line("✔ 1. Configuration: valid (mock mode")
    for n in (2, 3, 4):
        assert r.line(f"○ {n}.")
    assert openai.requests == []


@pytest.mark.parametrize(
    "args",
    [
        ("--timeout", "0"),
        ("--timeout", "nope"),
        ("--timeout", "601"),
        ("--bogus",),
        ("--token", ""),
    ],
)
def test_bad_usage_exits_2(doctor, doctor_env, openai, args):
    r = doctor(doctor_env, *args)
    assert r.code == 2
    assert openai.requests == []


# --- sign-in tokens -------------------------------------------------------------------------------------


def _jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    data = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
    return data | {"kid": kid, "use": "sig", "alg": alg}


def test_jwks_listing_and_a_token_verified_through_it(doctor, doctor_env, openai):
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    openai.jwks = {
        "keys": [
            _jwk(ec_key, "ec-1", "ES256"),
            _jwk(rsa_key, "rsa-1", "RS256"),
            {"kty": "oct", "kid": "hmac-1", "k": "c2VjcmV0"},
        ]
    }
    env = {k: v for k, v in doctor_env.items() if k != "BROKER_JWT_SECRET"}
    env["BROKER_JWT_JWKS_URL"] = openai.url + "/jwks.json"
    now = int(time.time())
    tok = jwt.encode(
        {"sub": "carol", "aud": "authenticated", "exp": now + 600, "iat": now},
        ec_key,
        algorithm="ES256",
        headers={"kid": "ec-1"},
    )
    r = doctor(env, "--token", tok, forbidden=(tok,))
    assert r.code == 0, r.out
    assert "JWKS" in r.line("✔ 5. Sign-in tokens")
    assert "JWKS key 'ec-1': EC P-256, ES256" in r.out
    assert "JWKS key 'rsa-1': RSA, RS256" in r.out
    assert (
        "JWKS key 'hmac-1': oct, ignored (symmetric keys are never taken from a JWKS)"
        in " ".join(r.out.split())
    )
    assert "--token verified: ChatKit user 'carol' (claim sub)" in r.out

    r = doctor(env, "--json")
    assert r.check("auth")["data"]["jwks_keys"] == [
        {"kid": "ec-1", "kty": "EC", "algorithms": ["ES256"], "usable": True},
        {"kid": "rsa-1", "kty": "RSA", "algorithms": ["RS256"], "usable": True},
        {"kid": "hmac-1", "kty": "oct", "algorithms": [], "usable": False},
    ]


def test_jwks_down_fails_the_auth_check(doctor, doctor_env, openai):
    openai.jwks_up = False
    env = {k: v for k, v in doctor_env.items() if k != "BROKER_JWT_SECRET"}
    env["BROKER_JWT_JWKS_URL"] = openai.url + "/jwks.json"
    r = doctor(env)
    assert r.code == 1
    assert r.line("✖ 5. Sign-in tokens")
    assert "could not be fetched (HTTP 503)" in r.out
    assert "fix: check BROKER_JWT_JWKS_URL" in r.out


def test_token_valid_prints_claims_never_the_token(doctor, doctor_env, token):
    tok = token("alice", aud="authenticated", role="pro")
    r = doctor(doctor_env, "--token", tok, forbidden=(tok,))
    assert r.code == 0
    assert "HMAC secret; --token verified" in r.line("✔ 5. Sign-in tokens")
    assert "HMAC secret (BROKER_JWT_SECRET): 43 bytes" in r.out
    assert "--token verified: ChatKit user 'alice' (claim sub), expires in 5 min" in r.out
    assert '"role": "pro"' in r.out
    assert "may use workflows: support, sales" in r.out

    r = doctor(doctor_env, "--json", "--token", "-", stdin=tok + "\n", forbidden=(tok,))
    data = r.check("auth")["data"]["token"]
    assert data["valid"] is True and data["user"] == "alice"
    assert data["claims"]["role"] == "pro"


def test_token_expired_is_refused_as_the_service_would(doctor, doctor_env, token):
    tok = token("alice", aud="authenticated", ttl=-120)
    r = doctor(doctor_env, "--token", tok, forbidden=(tok,))
    assert r.code == 1
    assert "--token refused" in r.line("✖ 5. Sign-in tokens")
    assert "--token refused: The token has expired; sign in again to get a fresh one." in r.out

    tok = token("alice", aud="somebody-else")
    r = doctor(doctor_env, "--token", tok, forbidden=(tok,))
    assert r.code == 1
    assert "audience ('aud') is not the one this broker accepts" in r.out


# --- domains ----------------------------------------------------------------------------------------------


def test_domains_listed_with_the_allowlist_reminder(doctor, doctor_env):
    env = doctor_env | {
        "BROKER_ALLOWED_ORIGINS": "https://app.example.com,http://localhost:5173,https://*.example.org"
    }
    r = doctor(env, "--json")
    domains = r.check("domains")
    assert domains["status"] == "warn"  # the wildcard matches nothing
    assert domains["data"]["origins"] == [
        {"origin": "https://app.example.com", "needs_allowlist": True},
        {"origin": "http://localhost:5173", "needs_allowlist": False},
        {"origin": "https://*.example.org", "needs_allowlist": True},
    ]
    text = " ".join(domains["details"])
    assert "app.example.com must be on OpenAI's domain allowlist" in text
    assert "http://localhost:5173: localhost, needs no allowlist entry" in text
    assert "security/domain-allowlist" in text

    r = doctor(doctor_env | {"BROKER_ALLOWED_ORIGINS": "https://app.example.com"})
    assert "1 public hostname to put on OpenAI's domain allowlist: app.example.com" in r.line(
        "✔ 6. Domains"
    )


# --- the machine-readable report --------------------------------------------------------------------------


CHECK_KEYS = {"id", "title", "status", "summary", "details", "fix", "data"}
DATA_KEYS = {
    "config": {"valid", "mode", "problems", "warnings"},
    "key": {"masked", "variable", "origin", "dotenv_masked"},
    "key_works": {"base_url", "http_status", "organization", "project", "request_id"},
    "workflows": {"workflows"},
    "auth": {"methods", "algorithms", "secret_bytes", "jwks_url", "jwks_keys", "token"},
    "domains": {"origins"},
}
WORKFLOW_KEYS = {
    "name", "id", "status", "summary", "details", "fix", "http_status", "request_id",
    "session_id", "expires_in_s", "cancelled",
}  # fmt: skip
TOKEN_KEYS = {"valid", "verified", "user", "claims", "error", "workflows"}


def _assert_schema(report: dict[str, Any]) -> None:
    assert set(report) == {
        "schema",
        "ok",
        "exit_code",
        "elapsed_s",
        "timeout_s",
        "timed_out",
        "checks",
    }
    assert report["schema"] == "chatkit-broker-doctor/1"
    assert [c["id"] for c in report["checks"]] == list(DATA_KEYS)
    for c in report["checks"]:
        assert set(c) == CHECK_KEYS
        assert c["status"] in {"pass", "warn", "fail", "skip"}
        assert set(c["data"]) == DATA_KEYS[c["id"]], c["id"]
    for wf in report["checks"][3]["data"]["workflows"]:
        assert set(wf) == WORKFLOW_KEYS
    tok = report["checks"][4]["data"]["token"]
    assert tok is None or set(tok) == TOKEN_KEYS


def test_json_schema_is_stable(doctor, doctor_env, openai, token):
    tok = token("alice", aud="authenticated")
    good = doctor(doctor_env, "--json", "--token", tok, forbidden=(tok,))
    assert good.code == 0
    _assert_schema(good.report)
    assert good.report["ok"] is True and good.report["exit_code"] == 0
    assert good.report["timed_out"] is None and good.report["timeout_s"] == 20.0
    support, sales = good.check("workflows")["data"]["workflows"]
    assert support["status"] == "pass" and support["cancelled"] is True
    assert support["session_id"].startswith("cksess_") and support["expires_in_s"] == 600
    assert "client_secret" not in good.out

    openai.for_workflow(WF_SALES, "workflow_not_found")
    bad = doctor(doctor_env | {"OPENAI_API_KEY": OTHER_KEY}, "--json")
    assert bad.code == 1
    _assert_schema(bad.report)
    assert bad.report["ok"] is False and bad.report["exit_code"] == 1
    sales = bad.check("workflows")["data"]["workflows"][1]
    assert sales["status"] == "fail" and sales["http_status"] == 404 and sales["cancelled"] is False
    assert sales["request_id"].startswith("req_")

    invalid = doctor({"BROKER_WORKFLOWS": "x"}, "--json")
    assert invalid.code == 1
    _assert_schema(invalid.report)
    assert [c["status"] for c in invalid.report["checks"]] == [
        "fail",
        "fail",
        "skip",
        "skip",
        "skip",
        "skip",
    ]


def test_openai_unreachable(doctor, doctor_env, openai):
    r = doctor(doctor_env | {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    assert r.code == 1
    assert "could not reach http://127.0.0.1:9/v1/models" in r.line("✖ 3. Key and project")
    assert "fix: check OPENAI_BASE_URL" in r.out
    assert r.line("○ 4. Workflows: skipped")


def test_base_url_without_v1(doctor, doctor_env, openai):
    r = doctor(doctor_env | {"OPENAI_BASE_URL": openai.url})
    assert r.code == 1
    assert "answered 404: this is not the OpenAI API root" in r.line("✖ 3. Key and project")
    assert "(it ends in /v1)" in r.out


def test_a_terminal_that_cannot_print_the_symbols(doctor, doctor_env):
    env = doctor_env | {"PYTHONIOENCODING": "ascii"}
    r = doctor(env)
    assert r.code == 0
    assert r.line("+ 1. Configuration") and r.line("+ 4. Workflows")
    assert "sk-proj-...fXYZ" in r.out
    j = doctor(env, "--json")
    assert j.report["checks"][1]["data"]["masked"] == "sk-proj-…fXYZ"


def test_run_doctor_leaves_no_logging_handler_behind(doctor_env, openai):
    """Each call silenced the broker's logger with a handler it never removed."""
    import logging

    from broker.doctor import run_doctor

    handlers = list(logging.getLogger("broker").handlers)
    for _ in range(3):
        code, _report = run_doctor(doctor_env, doctor_env, {}, timeout=5)
        assert code == 0
    assert logging.getLogger("broker").handlers == handlers
