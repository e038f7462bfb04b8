"""Runs wrk with post.lua and parses the JSON line its done() prints."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import procs

LUA = Path(__file__).with_name("post.lua")


@dataclass
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non200: int
    socket_errors: int
    timeouts: int
    statuses: dict[str, int]
    sample: str | None
    raw: dict

    @property
    def errors(self) -> int:
        return self.non200 + self.socket_errors


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run_wrk(
    url: str,
    *,
    connections: int,
    duration: float,
    threads: int,
    tokens_file: Path,
    log_path: Path,
    body: str = '{"workflow":"bench"}',
    timeout_s: float = 10.0,
) -> WrkResult:
    threads = max(1, min(threads, connections))
    argv = [
        wrk_path() or "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={timeout_s:g}s",
        "-s",
        str(LUA),
        url,
        "--",
        str(tokens_file),
        body,
    ]
    child = procs.Child("wrk", argv, log_path)
    # wrk's own output goes to a log; only its BENCH_JSON line is parsed
    log_path.write_bytes(b"")
    child.start()
    try:
        assert child.proc is not None
        child.proc.wait(duration + timeout_s + 30)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"wrk did not finish: {child.log_tail()}") from exc
    finally:
        child.stop(grace=2)
    text = log_path.read_text(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(
            f"wrk printed no summary (exit {child.proc.returncode}):\n{text[-3000:]}"
        )
    raw = json.loads(line[len("BENCH_JSON ") :])
    se = raw["socket_errors"]
    lat = raw["latency_ms"]
    return WrkResult(
        requests=raw["requests"],
        rps=raw["rps"],
        p50_ms=lat["p50"],
        p90_ms=lat["p90"],
        p99_ms=lat["p99"],
        max_ms=lat["max"],
        non200=raw["non200"],
        socket_errors=se["connect"] + se["read"] + se["write"] + se["timeout"],
        timeouts=se["timeout"],
        statuses=raw["statuses"],
        sample=raw["sample"],
        raw=raw,
    )
