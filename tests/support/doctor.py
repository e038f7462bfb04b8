"""Running ``doctor`` in tests: in-process through ``run_doctor`` with explicit mappings (the
usual way, no interpreter start-up per case), or as the real CLI in a subprocess (end to end).

Both return a ``DoctorRun`` and both assert that no full API key, JWT or client secret was
printed.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.doctor import DEFAULT_TIMEOUT, for_stream, run_doctor

from .processes import START_TIMEOUT

#: a second key, of "another project": the stray shell key of the shadowing cases
OTHER_KEY = "sk-proj-STRAYotherPROJECTkey000000000000wxyz"
#: loggers of the fake OpenAI's own server thread: what it logs is not the doctor's output
_FAKE_SIDE = ("aiohttp.server", "aiohttp.web", "aiohttp.access")


@dataclass
class DoctorRun:
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

    def assert_no_secret(self, secrets: Iterable[str]) -> DoctorRun:
        for secret in secrets:
            assert secret not in self.out + self.err, "a secret was printed"
        return self


def in_process(
    env: Mapping[str, str],
    *,
    dotenv: Mapping[str, str] | None = None,
    json: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    token: str | None = None,
    width: int = 400,
    encoding: str = "utf-8",
    records: list[logging.LogRecord] | None = None,
) -> DoctorRun:
    """``run_doctor`` as ``cmd_doctor`` calls it: ``env`` is the shell, ``dotenv`` the .env file.

    ``width`` defaults to one line per item so tests can find them (wrapping has its own test);
    ``encoding`` is the output stream's (``for_stream`` adapts the report to it). ``records``,
    the log records captured meanwhile (pytest's ``caplog.records``): WARNING and above that
    the doctor's side logged become ``err``, what the CLI would have printed on stderr.
    """
    dotenv = dict(dotenv or {})
    shell = dict(env)
    seen = len(records) if records is not None else 0
    started = time.monotonic()
    code, text = run_doctor(
        {**dotenv, **shell}, shell, dotenv, timeout=timeout, token=token, as_json=json, width=width
    )
    elapsed = time.monotonic() - started
    err = "\n".join(
        f"{r.levelname} {r.name}: {r.getMessage()}"
        for r in (records or [])[seen:]
        if r.levelno >= logging.WARNING and not r.name.startswith(_FAKE_SIDE)
    )
    return DoctorRun(code, for_stream(text, encoding, as_json=json), err, elapsed)


def cli(
    command: list[str],
    cwd: Path,
    env: Mapping[str, str],
    *args: str,
    dotenv: Mapping[str, str] | None = None,
    stdin: str | None = None,
) -> DoctorRun:
    """The real ``chatkit-broker doctor`` in ``cwd`` (with its own ``.env`` when given)."""
    cwd.mkdir(parents=True, exist_ok=True)
    if dotenv is not None:
        (cwd / ".env").write_text("".join(f"{k}={v}\n" for k, v in dotenv.items()))
    inherited = {k: os.environ[k] for k in ("PATH", "PYTHONPATH") if k in os.environ}
    full_env = {"PATH": "", **inherited, "HOME": str(cwd), **env}
    started = time.monotonic()
    proc = subprocess.run(
        [*command, "doctor", *args],
        env=full_env,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,  # a busy machine: the imports alone can take a minute
    )
    return DoctorRun(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def minted_ids(openai: Any) -> set[str]:
    """The sessions the fake OpenAI minted for doctor's throwaway user."""
    return {sid for sid, s in openai.sessions.items() if s["user"] == "doctor-check"}


def cancelled_ids(openai: Any) -> set[str]:
    """The sessions the fake OpenAI was asked to cancel."""
    return {r.path.split("/")[-2] for r in openai.cancel_requests()}
