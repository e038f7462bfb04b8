"""The declaration (broker/settings.py): every variable it validates refuses a bad value with a
problem naming that variable, accepts a good one, and never repeats a secret."""

from __future__ import annotations

import pytest

from broker.config import ConfigError, load_settings
from broker.settings import Environment, changed, default_of, is_secret

LONG = "k" * 40

# variable -> (a value it refuses, a value it accepts, how the accepted value reads back)
CASES: dict[str, tuple[str, str, object]] = {
    "BROKER_MOCK": ("maybe", "0", ("mock", False)),
    "OPENAI_BASE_URL": ("ftp://x", "http://127.0.0.1:9/v1/", ("openai_base_url", "http://127.0.0.1:9/v1")),
    "BROKER_MOCK_STEP": ("1.5", "0", ("mock_step", 0.0)),
    "BROKER_UPSTREAM_TIMEOUT": ("0", "2.5", ("upstream_timeout", 2.5)),
    "BROKER_UPSTREAM_RETRIES": ("3", "0", ("upstream_retries", 0)),
    "BROKER_JWT_SECRET": ("short-secret", LONG, None),
    "BROKER_JWT_JWKS_URL": ("file:///etc/keys", "https://id.example.com/jwks.json", None),
    "BROKER_JWT_ALGORITHMS": ("none", "HS256", None),
    "BROKER_JWT_LEEWAY": ("601", "0", None),
    "BROKER_JWT_MAX_AGE": ("59", "60", None),
    "BROKER_JWKS_TIMEOUT": ("31", "0.1", None),
    "BROKER_JWKS_COOLDOWN": ("0.5", "3600", None),
    "BROKER_JWKS_MAX_AGE": ("nan", "10", None),
    "BROKER_SESSION_SECRET": ("too-short", f"{LONG},{LONG}2", None),
    "BROKER_DATABASE_URL": ("mysql://db/x", "memory", None),
    "BROKER_AGENT_TRACING": ("sometimes", "1", None),
    "BROKER_RUN_TIMEOUT": ("0.5", "3600", None),
    "BROKER_RUN_LEASE": ("2", "3", None),
    "BROKER_RUN_QUEUE": ("redis", "in-process", ("run_queue", "in-process")),
    "BROKER_TRANSCRIBE_MAX_SECONDS": ("1501", "30", ("transcribe_max_seconds", 30.0)),
    "BROKER_FILES_STORAGE": ("gs://bucket", "s3://bucket/files", ("files_storage", "s3://bucket/files")),
    "BROKER_ASSERTION_KEY": ("not a pem", None, None),
    "BROKER_ASSERTION_PREVIOUS_KEYS": ("not a pem", None, None),
    "BROKER_ASSERTION_SECRET": ("short", LONG, None),
    "BROKER_PUBLIC_URL": ("chat.example.com", "https://chat.example.com/", ("public_url", "https://chat.example.com")),
    "BROKER_GATEWAY_STRIP_HEADERS": ("X Bad", "X-Internal-*,Cookie2", ("gateway_strip_headers", ("X-Internal-*", "Cookie2"))),
    "BROKER_PORT": ("0", "65535", ("port", 65535)),
    "BROKER_ALLOWED_ORIGINS": ("app.example.com", "https://app.example.com/", ("allowed_origins", ("https://app.example.com",))),
    "BROKER_TRUSTED_PROXIES": ("*", "10.0.0.0/8", ("trusted_proxies", ("10.0.0.0/8",))),
    "BROKER_RATE_LIMIT": ("30/fortnight", "5 per 2 hours", ("rate_limit", "5 per 2 hours")),
    "BROKER_IP_RATE_LIMIT": ("0/minute", "1/second", ("ip_rate_limit", "1/second")),
    "BROKER_REDIS_URL": ("http://redis", None, None),
    "BROKER_REDIS_PREFIX": ("has space", "app:1.", ("redis_prefix", "app:1.")),
    "BROKER_CHATKIT_JS_URL": ("javascript:alert(1)", "https://cdn.example.com/ck.js", None),
    "BROKER_TEST_PAGE": ("2", "off", ("test_page", False)),
    "BROKER_LOG_FORMAT": ("xml", "JSON", ("log_format", "json")),
    "BROKER_LOG_LEVEL": ("loud", "Warning", ("log_level", "warning")),
}  # fmt: skip


@pytest.mark.parametrize(("variable", "bad", "good", "reads"), [(k, *v) for k, v in CASES.items()])
def test_each_variable_refuses_a_bad_value_by_name(base_env, variable, bad, good, reads):
    with pytest.raises(ConfigError) as info:
        load_settings(base_env | {variable: bad})
    mine = [p for p in info.value.problems if p.startswith(variable)]
    assert mine, info.value.problems
    field = next(n for n in Environment.model_fields if variable in Environment.variables(n))
    if is_secret(Environment.model_fields[field]) and len(bad) > 5:
        assert all(bad not in p for p in info.value.problems)
    if good is not None:
        s = load_settings(base_env | {variable: good})
        if reads is not None:
            assert getattr(s, reads[0]) == reads[1]


def test_every_validated_variable_has_a_case():
    """A new variable with a rule gets a row above (free text, like an issuer, needs none)."""
    free_text = {
        "BROKER_WORKFLOWS",  # its own tests: test_config.py
        "BROKER_WORKFLOWS_FILE",
        "CHATKIT_OPENAI_API_KEY",
        "OPENAI_API_KEY",
        "OPENAI_ORGANIZATION",
        "OPENAI_PROJECT",
        "BROKER_JWT_PUBLIC_KEY",  # test_config.py: the PEM decides the algorithms
        "BROKER_JWT_AUDIENCE",
        "BROKER_JWT_ISSUER",
        "BROKER_JWT_USER_CLAIM",
        "BROKER_CHATKIT_DOMAIN_KEY",
        "BROKER_HOST",
        "PORT",
        "BROKER_TRANSCRIBE_MODEL",
    }
    declared = {v for n in Environment.model_fields for v in Environment.variables(n)}
    assert sorted(declared - free_text - set(CASES)) == []


def test_a_secret_is_never_in_a_problem_or_the_summary(base_env):
    secret = "s" * 20  # too short: refused, and the refusal must not repeat it
    env = base_env | {
        "BROKER_JWT_SECRET": secret,
        "BROKER_ASSERTION_SECRET": secret,
        "BROKER_SESSION_SECRET": f"{LONG},{secret}",
        "BROKER_REDIS_URL": f"http://user:{secret}@redis",
    }
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert len(info.value.problems) == 4
    assert all(secret not in p for p in info.value.problems), info.value.problems
    s = load_settings(base_env | {"BROKER_SESSION_SECRET": LONG, "BROKER_PORT": "9000"})
    lines = changed(s.environment)
    assert "BROKER_PORT=9000" in lines
    assert "BROKER_SESSION_SECRET=(secret, 1 value, not shown)" in lines
    assert all(LONG not in line for line in lines)
    assert not any(line.startswith("BROKER_RATE_LIMIT") for line in lines)  # at its default
    # the variable a value came from is the one named (base_env sets OPENAI_API_KEY, not PORT)
    s = load_settings(base_env | {"PORT": "9001"})
    assert "PORT=9001" in changed(s.environment)
    assert "OPENAI_API_KEY=(secret, 1 value, not shown)" in changed(s.environment)


def test_defaults_are_the_declarations(base_env):
    s = load_settings(base_env)
    assert (s.rate_limit, s.ip_rate_limit, s.port) == (
        default_of("rate_limit"),
        default_of("ip_rate_limit"),
        default_of("port"),
    )
    assert s.agent is not None and s.agent.run_timeout == default_of("run_timeout")


def test_blank_counts_as_unset_and_the_first_alias_wins(base_env):
    s = load_settings(base_env | {"BROKER_PORT": "  ", "PORT": "7000", "BROKER_RATE_LIMIT": ""})
    assert s.port == 7000 and s.rate_limit == default_of("rate_limit")
    text = "\n".join(_problems(base_env | {"BROKER_PORT": "x", "PORT": "7000"}))
    assert "BROKER_PORT must be between 1 and 65535, got 'x'" in text
    text = "\n".join(_problems(base_env | {"PORT": "99999"}))
    assert text.startswith("PORT must be between 1 and 65535")


def test_the_loader_reads_only_the_mapping_it_is_given(monkeypatch):
    monkeypatch.setenv("BROKER_MOCK", "1")
    with pytest.raises(ConfigError):
        load_settings({})  # the process's BROKER_MOCK=1 is not seen


def _problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    return info.value.problems


def test_a_declared_variable_reads_from_settings_with_no_other_change(base_env):
    """Settings has no field for BROKER_WORKFLOWS_FILE or BROKER_AGENT_TRACING's raw value:
    they read straight from the declaration (how a newly declared setting is read)."""
    s = load_settings(base_env | {"BROKER_JWT_ISSUER": "https://id.example.com"})
    assert s.workflows_file is None and s.agent_tracing is False
    assert s.database_url is None  # unset; a SecretStr when set
    s = load_settings(base_env | {"BROKER_DATABASE_URL": "memory"})
    assert s.database_url.get_secret_value() == "memory" and "memory" not in repr(s)
    from broker.settings import Settings

    assert Settings().run_timeout == default_of("run_timeout")  # built by hand: the default
    with pytest.raises(AttributeError):
        _ = s.no_such_setting
