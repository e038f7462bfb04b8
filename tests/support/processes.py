"""Real processes for tests: ``chatkit-broker serve`` and a private ``redis-server``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from .env import free_port

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# How long a starting ``serve`` may take to answer /healthz. Generous on purpose: waiting costs
# nothing when it starts at once, a process that exits fails at once (its log shown), and on a
# machine whose cores are busy with other work importing the agents stack alone took over 60 s.
START_TIMEOUT = 180.0


@dataclass
class BrokerProcess:
    """A real ``chatkit-broker serve`` process on a free port; its stderr goes to ``log_path``."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> int:
        """Stop the process and hand its log to the suite's log audit (tests/support/log_audit)."""
        from . import log_audit

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        log_audit.collect_file(self.log_path)
        return self.proc.returncode


def base_env() -> dict[str, str]:
    """PATH and HOME, and PYTHONPATH when set (a worktree's code run by the shared venv's
    ``chatkit-broker`` script, as the contributors' brief runs tests)."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def cli_command() -> list[str]:
    exe = shutil.which("chatkit-broker", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "broker.cli"]


def start_broker(
    env: dict[str, str], cwd: Path, *args: str, port: int | None = None
) -> BrokerProcess:
    """Spawn ``chatkit-broker serve`` on a free port with exactly ``env`` (plus PATH and HOME),
    its stderr in a log file in ``cwd``; the one starter behind ``run_broker`` (per test) and
    ``adversarial.broker_process`` (per module). The environment's secrets go to the log audit."""
    from . import log_audit

    port = port or free_port()
    log_path = cwd / f"broker-{port}.log"
    full_env = {**base_env(), **env}
    log_audit.add_env(full_env)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*cli_command(), "serve", "--port", str(port), *args],
            env=full_env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    return BrokerProcess(f"http://127.0.0.1:{port}", proc, log_path)


def wait_until_serving(bp: BrokerProcess, timeout: float = START_TIMEOUT) -> None:
    """Poll /healthz until the process answers (or fail with its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if bp.proc.poll() is not None:
            raise AssertionError(f"broker exited with {bp.proc.returncode}:\n{bp.logs()}")
        try:
            if httpx.get(bp.url + "/healthz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(f"broker did not start within {timeout}s:\n{bp.logs()}")


def redis_reachable(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


class RedisServer:
    """A private ``redis-server`` on a free port that a test may kill and restart."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = f"--port {self.port} --bind 127.0.0.1 --appendonly no --dir {self.workdir}"
        self.proc = subprocess.Popen(
            ["redis-server", *args.split(), "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not redis_reachable(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
