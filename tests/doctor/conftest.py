"""Fixtures for the doctor tests: a live configuration without warnings, and runners."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import API_KEY, SECRET, cli_command
from tests.support.doctor import OTHER_KEY, DoctorRun, cli, in_process
from tests.support.fake_openai import FakeOpenAI


def _secrets(openai: FakeOpenAI, dotenv: dict[str, str] | None, forbidden: tuple[str, ...]):
    found = {API_KEY, OTHER_KEY, SECRET, *forbidden}
    found |= {s["client_secret"] for s in openai.sessions.values()}
    return found | {v for v in (dotenv or {}).values() if v.startswith("sk-")}


@pytest.fixture
def doctor_env(base_env: dict[str, str]) -> dict[str, str]:
    """The conftest live configuration, with an audience so that no config warning shows."""
    return base_env | {"BROKER_JWT_AUDIENCE": "authenticated"}


@pytest.fixture
def doctor(
    openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> Iterator[Callable[..., DoctorRun]]:
    """``doctor(env, dotenv=None, json=False, timeout=20, token=None, forbidden=(), …)``, in-process.

    ``env`` is the shell's environment, ``dotenv`` the ``.env`` file's values; see
    ``tests.support.doctor.in_process`` for the rest.
    """
    saved_headers = dict(openai.models_headers)

    def run(
        env: dict[str, str],
        *,
        dotenv: dict[str, str] | None = None,
        forbidden: tuple[str, ...] = (),
        **options,
    ) -> DoctorRun:
        result = in_process(env, dotenv=dotenv, records=caplog.records, **options)
        return result.assert_no_secret(_secrets(openai, dotenv, forbidden))

    yield run
    openai.models_headers = saved_headers


@pytest.fixture
def doctor_cli(openai: FakeOpenAI, tmp_path: Path) -> Callable[..., DoctorRun]:
    """``doctor_cli(env, *args, dotenv=None, stdin=None)``: the real CLI in a fresh directory."""
    counter = iter(range(1000))

    def run(
        env: dict[str, str],
        *args: str,
        dotenv: dict[str, str] | None = None,
        stdin: str | None = None,
        forbidden: tuple[str, ...] = (),
    ) -> DoctorRun:
        cwd = tmp_path / f"run{next(counter)}"
        result = cli(cli_command(), cwd, env, *args, dotenv=dotenv, stdin=stdin)
        return result.assert_no_secret(_secrets(openai, dotenv, forbidden))

    return run
