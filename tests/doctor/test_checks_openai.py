"""``broker.doctor.checks.openai`` (check 3): ``GET /models`` with the key, asked as the service
asks, and what OpenAI said about the organization and project."""

from __future__ import annotations

import pytest

from broker.doctor.checks.openai import api_message


def test_401_key_refused(doctor, doctor_env, openai):
    openai.then("unauthorized")  # GET /models
    r = doctor(doctor_env)
    assert r.code == 1
    assert "OpenAI refused the key (HTTP 401" in r.line("✖ 3. Key and project")
    assert "Incorrect API key provided" in r.out
    assert "fix: create a key in the project that owns your workflows" in r.out
    assert r.line("○ 4. Workflows: skipped")
    assert openai.session_requests() == []


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


def test_timeout_on_the_key_check_names_it(doctor, doctor_env, openai):
    openai.then("status", status=200, delay=5)  # GET /models answers too late
    r = doctor(doctor_env, timeout=1, json=True)
    assert r.code == 1
    assert r.elapsed < 4
    assert r.report["timed_out"] == "check 3 (GET /models)"
    assert r.err == ""  # no stray warnings or tracebacks after a cancelled request
    assert r.check("key_works")["status"] == "fail"
    assert "ran out during check 3" in r.check("key_works")["summary"]
    assert r.check("workflows")["status"] == "skip"
    assert r.check("auth")["status"] == "pass"  # needs no network: still checked
    assert openai.session_requests() == []


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


def test_a_models_answer_arriving_in_pieces_is_read_whole(doctor, doctor_env, openai):
    """One ``read(n)`` returns the first piece only, and ``{`` alone is not the API's JSON."""
    openai.then("trickle", chunk=1, interval=0.05)  # GET /models: "{}", a byte at a time
    r = doctor(doctor_env, json=True)
    works = r.check("key_works")
    assert works["status"] == "pass", works
    assert works["data"]["http_status"] == 200


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b'{"error": {"message": "Incorrect API key provided."}}', "Incorrect API key provided."),
        (b'{"error": {"message": "' + b"x" * 400 + b'"}}', "x" * 300),
        (b"", "(no error message)"),
        (b"<html>bad gateway</html>", "b'<html>bad gateway</html>'"),
        (b'{"error": "nope"}', """b'{"error": "nope"}'"""),
    ],
)
def test_api_message_reads_openais_error_body(body, said):
    assert api_message(body) == said
