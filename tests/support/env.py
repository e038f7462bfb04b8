"""Constants and small helpers every test module shares: the test secrets, the CI rule."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
IN_CI = bool(os.environ.get("CI"))
SECRET = "test-secret-that-is-at-least-32-bytes-long!"
API_KEY = "sk-proj-TESTKEYtestkey0123456789abcdefXYZ"
WF_SUPPORT = "wf_" + "a1" * 24
WF_SALES = "wf_" + "b2" * 24


def need(condition: bool, reason: str) -> None:
    """Skip a test whose real component is missing — except in CI, where it must run."""
    if not condition:
        if IN_CI:
            pytest.fail(f"CI must run this test, but: {reason}")
        pytest.skip(reason)


def overridden(env: dict[str, str], **overrides: str | None) -> dict[str, str]:
    """A copy of ``env`` with ``overrides`` applied; an override of None deletes the variable."""
    out = dict(env)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def hosted_env(base_url: str, **overrides: str | None) -> dict[str, str]:
    """A valid hosted configuration against the fake OpenAI at ``base_url`` (its ``/v1``), as
    an explicit mapping: the one env builder behind ``base_env`` and ``adversarial.live_env``."""
    env = {
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": base_url,
        "BROKER_WORKFLOWS": f"support={WF_SUPPORT},sales={WF_SALES}",
        "BROKER_JWT_SECRET": SECRET,
        "BROKER_UPSTREAM_TIMEOUT": "3",
        "BROKER_LOG_FORMAT": "json",
    }
    return overridden(env, **overrides)


def auth(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
