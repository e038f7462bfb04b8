"""``broker.doctor.checks.config`` (check 1): the service's own validation, as a check."""

from __future__ import annotations


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
    assert "✔ No check failed; warnings in 1. Configuration, 4. Workflows." in r.out


def test_mock_mode_skips_the_openai_checks(doctor, openai):
    r = doctor({"BROKER_MOCK": "1"})
    assert r.code == 0
    assert r.line("✔ 1. Configuration: valid (mock mode")
    for n in (2, 3, 4):
        assert r.line(f"○ {n}.")
    assert openai.requests == []
