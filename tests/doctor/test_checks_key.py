"""``broker.doctor.checks.key`` (check 2): the key in effect, where it came from, what shadows it."""

from __future__ import annotations

from tests.support import API_KEY, WF_SALES
from tests.support.doctor import OTHER_KEY


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
    r = doctor(env, json=True, dotenv={"OPENAI_API_KEY": API_KEY})
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
    r = doctor(env, json=True, dotenv={"OPENAI_API_KEY": API_KEY})
    assert r.code == 1
    assert r.check("config")["status"] == "fail"
    key = r.check("key")
    assert key["status"] == "fail"
    assert "sets OPENAI_API_KEY to an empty value" in key["summary"]
    assert key["fix"].startswith("run 'unset OPENAI_API_KEY'")
    assert openai.requests == []


def test_empty_chatkit_variable_hiding_its_dotenv_value_is_a_warning(doctor, doctor_env):
    """The shell's empty CHATKIT_OPENAI_API_KEY hides .env's, so OPENAI_API_KEY is used."""
    env = doctor_env | {"CHATKIT_OPENAI_API_KEY": ""}
    r = doctor(env, json=True, dotenv={"CHATKIT_OPENAI_API_KEY": OTHER_KEY})
    assert r.code == 0
    key = r.check("key")
    assert key["status"] == "warn"
    assert key["data"]["variable"] == "OPENAI_API_KEY"
    assert key["details"] == [
        "The shell sets CHATKIT_OPENAI_API_KEY to an empty value, which hides the "
        "CHATKIT_OPENAI_API_KEY in .env (sk-proj-…wxyz); OPENAI_API_KEY is used instead."
    ]
    assert key["fix"] == "run 'unset CHATKIT_OPENAI_API_KEY' so the .env value is used"
