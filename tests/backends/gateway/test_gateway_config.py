"""The gateway's settings: each variable validated, every problem reported at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.assertion import generate_private_key_pem
from broker.config import ConfigError, load_settings

BASE = {
    "BROKER_WORKFLOWS": "helpdesk=https://chat.internal/chatkit",
    "BROKER_JWT_SECRET": "j" * 40,
    "BROKER_SESSION_SECRET": "s" * 40,
}


def settings(**env: str) -> Any:
    return load_settings({**BASE, **env})


def problems(**env: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings({**BASE, **env})
    return caught.value.problems


def test_a_gateway_alone_needs_no_openai_key_and_warns_about_an_ephemeral_key() -> None:
    s = settings()
    (wf,) = s.workflows
    assert wf.kind == "gateway" and wf.server == "https://chat.internal/chatkit"
    assert any("BROKER_ASSERTION_KEY is not set" in w for w in s.warnings)
    assert s.public_url is None


def test_a_configured_key_silences_the_warning_and_is_kept_out_of_repr(tmp_path: Path) -> None:
    pem = generate_private_key_pem()
    (tmp_path / "k.pem").write_text(pem)
    s = settings(
        BROKER_ASSERTION_KEY=f"@{tmp_path / 'k.pem'}", BROKER_PUBLIC_URL="https://b.example/"
    )
    assert not any("BROKER_ASSERTION_KEY" in w for w in s.warnings)
    assert s.public_url == "https://b.example"
    assert "PRIVATE" not in repr(s) and "k.pem" not in repr(s)


def test_every_gateway_problem_is_reported_at_once(tmp_path: Path) -> None:
    (tmp_path / "wf.toml").write_text(
        '[workflows.secretive]\nserver = "https://x.example/chatkit"\nassertion = "hs256"\n'
    )
    found = problems(
        BROKER_WORKFLOWS_FILE=str(tmp_path / "wf.toml"),
        BROKER_ASSERTION_KEY="not a pem",
        BROKER_ASSERTION_PREVIOUS_KEYS="@/nonexistent.pem",
        BROKER_PUBLIC_URL="ftp://broker",
        BROKER_GATEWAY_STRIP_HEADERS="X-Ok,Bad Header",
    )
    text = "\n".join(found)
    assert "BROKER_ASSERTION_KEY: not an unencrypted PEM private key" in text
    assert "BROKER_ASSERTION_PREVIOUS_KEYS: key 1: cannot read" in text
    assert "BROKER_ASSERTION_SECRET is required: workflow(s) secretive" in text
    assert "BROKER_PUBLIC_URL must be" in text
    assert "'Bad Header' is not a header name" in text
    assert "not a pem" not in text  # never echoes key material


def test_a_short_assertion_secret_is_refused() -> None:
    assert any(
        "BROKER_ASSERTION_SECRET is shorter" in p for p in problems(BROKER_ASSERTION_SECRET="short")
    )


def test_strip_headers_accept_names_and_prefixes() -> None:
    assert settings(BROKER_GATEWAY_STRIP_HEADERS="X-Tenant, X-Acme-*").gateway_strip_headers == (
        "X-Tenant",
        "X-Acme-*",
    )


def test_check_summarises_the_gateway_assertions_without_key_material(tmp_path: Path) -> None:
    import os
    import subprocess

    from tests.support import cli_command

    pem = generate_private_key_pem()
    env = {
        "PATH": os.environ.get("PATH", ""),
        **BASE,
        "BROKER_ASSERTION_KEY": pem,
        "BROKER_PUBLIC_URL": "https://broker.example",
    }
    out = subprocess.run(
        [*cli_command(), "check"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "gateway assertions: ES256, key " in out.stdout
    assert "keys at https://broker.example/.well-known/jwks.json" in out.stdout
    assert "helpdesk: audience helpdesk, es256" in out.stdout
    assert "PRIVATE KEY" not in out.stdout + out.stderr
    assert pem.splitlines()[1] not in out.stdout + out.stderr


def test_forward_headers_name_plain_headers_never_identity_ones(tmp_path: Path) -> None:
    (tmp_path / "ok.toml").write_text(
        '[workflows.w]\nserver = "https://x.example/chatkit"\nforward_headers = ["X-Widget"]\n'
    )
    loaded = settings(BROKER_WORKFLOWS_FILE=str(tmp_path / "ok.toml")).workflows
    (wf,) = [w for w in loaded if w.name == "w"]
    assert wf.forward_headers == ("X-Widget",)
    (tmp_path / "bad.toml").write_text(
        '[workflows.w]\nserver = "https://x.example/chatkit"\nforward_headers = '
        '["X-Consumer-Username", "X_Widget", "Cookie", "x-forwarded-user", "ChatKit-Broker-X"]\n'
    )
    text = "\n".join(problems(BROKER_WORKFLOWS_FILE=str(tmp_path / "bad.toml")))
    assert "'X-Consumer-Username' could pass for the caller's identity" in text
    assert "'X_Widget' is not a header name" in text
    assert "'Cookie' is set by the broker" in text
    assert "'x-forwarded-user' could pass" in text and "'ChatKit-Broker-X' could pass" in text
