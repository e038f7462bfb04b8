"""Configuration parsing: explicit mappings in, a frozen Settings or every problem out."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from broker.config import (
    ConfigError,
    load_settings,
    parse_rate,
    read_environment,
)

from .support import API_KEY, SECRET, WF_SALES, WF_SUPPORT


def problems_of(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    return info.value.problems


def test_minimal_live_config(base_env):
    s = load_settings(base_env)
    assert s.mock is False
    assert s.openai_api_key == API_KEY and s.openai_api_key_source == "OPENAI_API_KEY"
    assert [w.name for w in s.workflows] == ["support", "sales"]
    assert s.workflow("support").id == WF_SUPPORT and s.workflow(WF_SALES).name == "sales"
    assert s.workflow("nope") is None
    assert s.jwt.hmac_algorithms == ("HS256",) and s.jwt.asymmetric_algorithms == ()
    assert (s.host, s.port, s.rate_limit, s.upstream_retries) == ("127.0.0.1", 8000, "30/minute", 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.mock = True  # type: ignore[misc]
    assert API_KEY not in repr(s) and SECRET not in repr(s)


def test_chatkit_key_wins_over_openai_key(base_env):
    s = load_settings(base_env | {"CHATKIT_OPENAI_API_KEY": "sk-proj-chatkitkey000000000000"})
    assert s.openai_api_key == "sk-proj-chatkitkey000000000000"
    assert s.openai_api_key_source == "CHATKIT_OPENAI_API_KEY"


def test_every_problem_is_listed_at_once():
    problems = problems_of(
        {
            "BROKER_WORKFLOWS": "Bad Name=wf_x,ok=notanid,noequals",
            "BROKER_JWT_SECRET": "short",
            "BROKER_PORT": "99999",
            "BROKER_RATE_LIMIT": "lots",
            "BROKER_UPSTREAM_TIMEOUT": "-1",
            "BROKER_LOG_FORMAT": "xml",
            "BROKER_ALLOWED_ORIGINS": "https://ok.example.com,not-an-origin",
            "BROKER_JWT_ALGORITHMS": "none,HS256",
        }
    )
    text = "\n".join(problems)
    for needle in (
        "OPENAI_API_KEY",
        "'Bad Name'",
        "'ok' must name a hosted workflow (wf_…), a ChatKit server",
        "'noequals' must be name=wf_",
        "BROKER_JWT_SECRET is shorter than 32 bytes",
        "BROKER_PORT",
        "BROKER_RATE_LIMIT",
        "BROKER_UPSTREAM_TIMEOUT",
        "BROKER_LOG_FORMAT",
        "'not-an-origin'",
        "'none' is not a supported algorithm",
    ):
        assert needle in text, needle


def test_live_needs_workflows_and_a_key_source():
    problems = problems_of({"OPENAI_API_KEY": API_KEY})
    assert any("allowlist at least one workflow" in p for p in problems)
    assert any(
        "BROKER_JWT_SECRET, BROKER_JWT_PUBLIC_KEY or BROKER_JWT_JWKS_URL" in p for p in problems
    )


def test_mock_mode_needs_nothing_and_offers_demo_workflows():
    s = load_settings({"BROKER_MOCK": "1"})
    assert s.mock and s.openai_api_key is None
    assert [w.name for w in s.workflows] == ["topic-generation", "post-writer"]


def test_mock_mode_refuses_non_loopback_bind():
    problems = problems_of({"BROKER_MOCK": "1", "BROKER_HOST": "0.0.0.0"})
    assert any("mock mode only listens on" in p for p in problems)
    for host in ("127.0.0.1", "localhost", "::1"):
        assert load_settings({"BROKER_MOCK": "1", "BROKER_HOST": host}).host == host


def test_port_env_is_honoured(base_env):
    assert load_settings(base_env | {"PORT": "5055"}).port == 5055
    assert load_settings(base_env | {"PORT": "5055", "BROKER_PORT": "6066"}).port == 6066


def test_workflow_file_is_validated_against_api_limits(base_env, tmp_path: Path):
    f = tmp_path / "wf.toml"
    variables = ", ".join(f"v{i} = {i}" for i in range(65))
    f.write_text(
        f"""
[workflows.bad]
id = "{WF_SALES}"
version = "latest"
expires_after = 601
max_requests_per_minute = 0
file_upload = {{ enabled = true, max_file_size = 513, max_files = 0 }}
history = {{ recent_threads = 0 }}
state_variables = {{ {variables} }}
colour = "red"

[workflows.nested]
id = "{WF_SALES[:-1]}f"
state_variables = {{ deep = {{ a = 1 }} }}
require = {{ role = {{ x = 1 }} }}
"""
    )
    text = "\n".join(problems_of(base_env | {"BROKER_WORKFLOWS_FILE": str(f)}))
    for needle in (
        'version = "latest" is refused',
        "expires_after (seconds) must be a whole number 1..600",
        "max_requests_per_minute must be a whole number >= 1",
        "file_upload.max_file_size (MB) must be a whole number 1..512",
        "file_upload.max_files must be a whole number >= 1",
        "history.recent_threads must be a whole number >= 1",
        "at most 64 state_variables",
        "unknown option 'colour'",
        "state_variables.deep must be a string, number or boolean",
        "require.role must be",
    ):
        assert needle in text, needle


def test_workflow_name_clash_and_shared_id(base_env, tmp_path: Path):
    f = tmp_path / "wf.toml"
    f.write_text(f'[workflows.support]\nid = "{WF_SALES}"\n')
    text = "\n".join(problems_of(base_env | {"BROKER_WORKFLOWS_FILE": str(f)}))
    assert "defined in both" in text
    text = "\n".join(problems_of(base_env | {"BROKER_WORKFLOWS": f"a={WF_SUPPORT},b={WF_SUPPORT}"}))
    assert "share the id" in text


def test_missing_or_broken_workflow_file(base_env, tmp_path: Path):
    text = "\n".join(problems_of(base_env | {"BROKER_WORKFLOWS_FILE": str(tmp_path / "nope.toml")}))
    assert "cannot read" in text
    broken = tmp_path / "broken.toml"
    broken.write_text("[workflows.x\n")
    text = "\n".join(problems_of(base_env | {"BROKER_WORKFLOWS_FILE": str(broken)}))
    assert "not valid TOML" in text


def test_pem_key_decides_algorithms(base_env, tmp_path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    def pem(private) -> str:
        return (
            private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    env = base_env | {"BROKER_JWT_SECRET": ""}
    ec_pem = pem(ec.generate_private_key(ec.SECP256R1()))
    assert load_settings(env | {"BROKER_JWT_PUBLIC_KEY": ec_pem}).jwt.asymmetric_algorithms == (
        "ES256",
    )
    path = tmp_path / "rsa.pem"
    path.write_text(pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    s = load_settings(env | {"BROKER_JWT_PUBLIC_KEY": f"@{path}"})
    assert s.jwt.asymmetric_algorithms[0] == "RS256" and "HS256" not in s.jwt.asymmetric_algorithms
    text = "\n".join(problems_of(env | {"BROKER_JWT_PUBLIC_KEY": "not a key"}))
    assert "not a PEM public key" in text
    both = env | {"BROKER_JWT_PUBLIC_KEY": ec_pem, "BROKER_JWT_JWKS_URL": "https://x/jwks.json"}
    assert any("only one of" in p for p in problems_of(both))


def test_secret_and_jwks_together_split_algorithms(base_env):
    s = load_settings(base_env | {"BROKER_JWT_JWKS_URL": "https://x.supabase.co/jwks.json"})
    assert s.jwt.hmac_algorithms == ("HS256",)
    assert "ES256" in s.jwt.asymmetric_algorithms and "RS256" in s.jwt.asymmetric_algorithms
    s = load_settings(
        base_env | {"BROKER_JWT_JWKS_URL": "https://x/j", "BROKER_JWT_ALGORITHMS": "HS256,ES256"}
    )
    assert (s.jwt.hmac_algorithms, s.jwt.asymmetric_algorithms) == (("HS256",), ("ES256",))


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (32, ("HS256",)),
        (47, ("HS256",)),
        (48, ("HS256", "HS384")),
        (64, ("HS256", "HS384", "HS512")),
    ],
)
def test_hmac_algorithms_follow_the_secret_length(base_env, length, expected):
    assert (
        load_settings(base_env | {"BROKER_JWT_SECRET": "k" * length}).jwt.hmac_algorithms
        == expected
    )


def test_no_audience_is_a_warning(base_env):
    assert any("BROKER_JWT_AUDIENCE" in w for w in load_settings(base_env).warnings)
    assert load_settings(base_env | {"BROKER_JWT_AUDIENCE": "authenticated"}).warnings == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30/minute", (30, 60)),
        ("5 per second", (5, 1)),
        ("100/hour", (100, 3600)),
        ("2/10 minutes", (2, 600)),
    ],
)
def test_parse_rate(text, expected):
    assert parse_rate(text) == expected


def test_dotenv_is_loaded_but_environment_wins(tmp_path: Path, monkeypatch):
    (tmp_path / ".env").write_text("OPENAI_API_KEY=sk-from-dotenv\nBROKER_PORT=9001\n")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-shell")
    monkeypatch.delenv("BROKER_PORT", raising=False)
    env, from_dotenv = read_environment(tmp_path)
    assert env["OPENAI_API_KEY"] == "sk-from-shell"
    assert env["BROKER_PORT"] == "9001"
    assert "BROKER_PORT" in from_dotenv and "OPENAI_API_KEY" not in from_dotenv


# --- workflows of three kinds ---------------------------------------------------------------

SESSION_KEY = "session-key-that-is-at-least-32-bytes-long"
THREE_KINDS = f"support={WF_SUPPORT},helpdesk=https://chat.internal/chatkit,coach=myapp.coach:agent"


def test_the_kind_follows_from_the_shorthand_values_shape():
    s = load_settings({"BROKER_MOCK": "1", "BROKER_WORKFLOWS": THREE_KINDS})
    kinds = {wf.name: (wf.kind, wf.target) for wf in s.workflows}
    assert kinds == {
        "support": ("hosted", WF_SUPPORT),
        "helpdesk": ("gateway", "https://chat.internal/chatkit"),
        "coach": ("agent", "myapp.coach:agent"),
    }
    assert s.workflow("helpdesk").id is None and s.workflow("coach").server is None


def test_the_workflow_file_names_the_kind_by_its_key(tmp_path):
    wf_file = tmp_path / "wf.toml"
    wf_file.write_text(
        "[workflows.helpdesk]\n"
        'server = "https://chat.internal/chatkit"\n'
        'label = "Help desk"\n'
        'audience = "helpdesk-api"\n'
        'forward_claims = ["email", "org"]\n'
        "idle_timeout = 30\n"
        "max_messages_per_minute = 5\n"
        'require = { role = "staff" }\n'
        "[workflows.coach]\n"
        'agent = "myapp.coach:agent"\n'
        "expires_after = 300\n"
    )
    s = load_settings({"BROKER_MOCK": "1", "BROKER_WORKFLOWS_FILE": str(wf_file)})
    helpdesk, coach = s.workflow("helpdesk"), s.workflow("coach")
    assert (helpdesk.kind, helpdesk.label, helpdesk.audience) == (
        "gateway",
        "Help desk",
        "helpdesk-api",
    )
    assert helpdesk.forward_claims == ("email", "org")
    assert (helpdesk.idle_timeout, helpdesk.connect_timeout) == (30.0, 5.0)
    assert helpdesk.max_messages_per_minute == 5
    assert helpdesk.require == (("role", "staff"),)
    assert (coach.kind, coach.agent, coach.expires_after) == ("agent", "myapp.coach:agent", 300)


def test_two_kinds_or_none_in_the_file_is_an_error_naming_the_workflow(tmp_path):
    wf_file = tmp_path / "wf.toml"
    wf_file.write_text(
        "[workflows.both]\n"
        f'id = "{WF_SUPPORT}"\n'
        'server = "https://chat.internal/chatkit"\n'
        "[workflows.neither]\n"
        'label = "Nothing"\n'
        "[workflows.mixed]\n"
        'agent = "a.b:c"\n'
        'version = "3"\n'
    )
    text = "\n".join(problems_of({"BROKER_MOCK": "1", "BROKER_WORKFLOWS_FILE": str(wf_file)}))
    assert "[workflows.both]: name exactly one backend" in text and "it names id, server" in text
    assert "[workflows.neither]: name exactly one backend" in text and "names none" in text
    assert "'version' is an option of hosted workflows, not of agent ones" in text


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("nope", "must name a hosted workflow (wf_…), a ChatKit server (https://…) or an agent"),
        ("ftp://chat.internal/x", "server must be an http(s):// URL with a host"),
        ("https:///no-host", "server must be an http(s):// URL with a host"),
        ("https://user:pw@chat.internal/x", "server must be an http(s):// URL with a host"),
        ("my app:agent", "agent must be package.module:attr"),
        ("myapp.coach:", "agent must be package.module:attr"),
    ],
)
def test_a_workflow_value_of_no_known_shape_is_listed(value, needle):
    text = "\n".join(problems_of({"BROKER_MOCK": "1", "BROKER_WORKFLOWS": f"x={value}"}))
    assert needle in text


def test_custom_kinds_need_a_session_secret_in_live_mode(base_env):
    env = base_env | {"BROKER_WORKFLOWS": THREE_KINDS}
    text = "\n".join(problems_of(env))
    assert "BROKER_SESSION_SECRET is required when a gateway or agent workflow" in text
    short = "\n".join(problems_of(env | {"BROKER_SESSION_SECRET": f"{SESSION_KEY},short"}))
    assert "BROKER_SESSION_SECRET: key 2 is shorter than 32 bytes" in short
    assert SESSION_KEY not in short


def test_mock_mode_needs_no_session_secret_and_hosted_only_needs_none():
    load_settings({"BROKER_MOCK": "1", "BROKER_WORKFLOWS": THREE_KINDS})
    s = load_settings(
        {
            "OPENAI_API_KEY": API_KEY,
            "BROKER_WORKFLOWS": f"support={WF_SUPPORT}",
            "BROKER_JWT_SECRET": SECRET,
        }
    )
    assert s.session_secrets == ()
    assert s.chatkit_domain_key == "local-dev"


def test_session_secret_keys_rotate_as_a_list(base_env):
    s = load_settings(base_env | {"BROKER_SESSION_SECRET": f"{SESSION_KEY}, {SESSION_KEY}-old"})
    assert s.session_secrets == (SESSION_KEY, f"{SESSION_KEY}-old")
    assert SESSION_KEY not in repr(s)


def test_every_variable_the_code_reads_is_documented():
    """Each variable is declared once (broker/settings.py); .env.example and the configuration
    reference are generated from that declaration, so both name every one."""
    from broker.settings import Environment

    root = Path(__file__).resolve().parent.parent
    read = {v for name in Environment.model_fields for v in Environment.variables(name)}
    assert {"BROKER_SESSION_SECRET", "BROKER_WORKFLOWS", "OPENAI_API_KEY", "PORT"} <= read
    assert {"BROKER_DATABASE_URL", "BROKER_RUN_TIMEOUT"} <= read
    example = (root / ".env.example").read_text()
    reference = (root / "docs" / "reference" / "configuration.md").read_text()
    assert sorted(v for v in read if v not in example) == []
    assert sorted(v for v in read if f"`{v}`" not in reference) == []


def test_token_lifetime_and_jwks_timings_are_configurable(base_env):
    s = load_settings(
        base_env
        | {
            "BROKER_JWT_MAX_AGE": "3600",
            "BROKER_JWKS_TIMEOUT": "1.5",
            "BROKER_JWKS_COOLDOWN": "30",
            "BROKER_JWKS_MAX_AGE": "120",
        }
    )
    assert (s.jwt.max_age, s.jwt.jwks_timeout, s.jwt.jwks_cooldown, s.jwt.jwks_max_age) == (
        3600,
        1.5,
        30.0,
        120.0,
    )
    defaults = load_settings(base_env).jwt
    assert (defaults.max_age, defaults.jwks_timeout, defaults.jwks_cooldown) == (86400, 3.0, 60.0)
    text = "\n".join(
        problems_of(base_env | {"BROKER_JWT_MAX_AGE": "5", "BROKER_JWKS_TIMEOUT": "0"})
    )
    assert "BROKER_JWT_MAX_AGE must be between 60" in text and "BROKER_JWKS_TIMEOUT" in text


def test_an_agent_workflow_names_its_own_guardrail_refusal(base_env, tmp_path: Path):
    f = tmp_path / "wf.toml"
    f.write_text(
        "[workflows.desk]\n"
        'agent = "examples.agent.support_agent:agent"\n'
        'guardrail_message = "  We cannot discuss that ({guardrail}).  "\n'
        "[workflows.hosted]\n"
        f'id = "{WF_SALES}"\n'
        'guardrail_message = "no"\n'
    )
    text = "\n".join(problems_of(base_env | {"BROKER_WORKFLOWS_FILE": str(f)}))
    assert "[workflows.hosted]: 'guardrail_message' is an option of agent workflows" in text
    f.write_text(f.read_text().split("[workflows.hosted]")[0])
    env = base_env | {"BROKER_WORKFLOWS_FILE": str(f), "BROKER_SESSION_SECRET": "s" * 32}
    (desk,) = [wf for wf in load_settings(env).workflows if wf.name == "desk"]
    assert desk.guardrail_message == "We cannot discuss that ({guardrail})."
