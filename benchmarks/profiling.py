"""`--profile`: py-spy samples the server during a measured run; a summary is printed.

py-spy (PyPI) attaches with ptrace, so it needs root or CAP_SYS_PTRACE. It records the
"raw" (collapsed stack) format; `summarize` turns it into shares of the CPU samples (self
time per package, inclusive time of the service's functions); share x CPU µs/req is
that part's cost per request.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from pathlib import Path

from . import procs

_LINE = re.compile(r":\d+\)")


def pyspy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start(pid: int, duration: float, out: Path, log: Path) -> procs.Child:
    argv = [
        pyspy() or "py-spy",
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--duration",
        str(max(1, round(duration))),
        "--rate",
        "200",
        "--format",
        "raw",
        "--output",
        str(out),
    ]
    return procs.Child("py-spy", argv, log).start()


def _component(frame: str) -> str:
    """`func (path:line)` -> the package, or the file for the broker's own modules."""
    path = frame[frame.rfind("(") + 1 : -1] if frame.endswith(")") else frame
    parts = path.split("/")
    if parts[0] == "broker" or len(parts) == 1:
        return path
    return parts[0]


# Each sample goes to the first bucket whose marker is in its stack (the broker's and the
# floors' request paths); what matches none is the event loop and aiohttp's I/O callbacks.
BUCKETS = (
    ("JWT verification (Verifier.verify)", ("Verifier.verify",)),
    ("rate-limit checks", ("RateLimits._hit", "LocalCounters.hit")),
    ("access log", ("Logger._log", "JSONFormatter", "StreamHandler", "AccessLog.request")),
    ("upstream call: aiohttp post + read (+ JSON parse)", ("HostedSessions._attempt", "_endpoint")),
    ("mint bookkeeping: deadline, retry loop, body JSON, registry", ("SessionService.mint",)),
    ("endpoint: auth header, JSON body, allowlist, JSONResponse", ("create_session",)),
    ("ASGI layers: middleware, Starlette, response send", ("run_asgi",)),
    ("HTTP server: uvicorn's httptools protocol", ("uvicorn/protocols", "broker/server.py")),
)
OTHER = "event loop, aiohttp I/O callbacks, other"


def buckets(raw: Path) -> dict[str, float]:
    """Share of the samples per part of the request path (see BUCKETS)."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            name = next((b for b, marks in BUCKETS if any(m in stack for m in marks)), OTHER)
            counts[name] += int(count)
    total = sum(counts.values()) or 1
    return {name: n / total for name, n in counts.most_common()}


def summarize(raw: Path, top: int = 18, cpu_us_per_req: float | None = None) -> str:
    """Where the server's CPU went: self time per package (the broker's modules per file),
    and inclusive time of the broker's own functions, as shares of the samples (and as µs
    per request when the run's CPU µs/req is given)."""
    inclusive: Counter[str] = Counter()
    by_component: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        by_component[_component(frames[-1])] += n
        for frame in set(frames):
            if "(broker/" in frame or "(benchmarks/" in frame:
                inclusive[frame] += n
    if not total:
        return "py-spy recorded no samples"

    def fmt(n: int, name: str) -> str:
        share = n / total
        per_req = f" {share * cpu_us_per_req:6.0f} µs" if cpu_us_per_req else ""
        return f"  {100 * share:5.1f}%{per_req}  {name}"

    unit = " and µs per request" if cpu_us_per_req else ""
    lines = [f"py-spy: {total} samples. By part of the request path (share{unit}):"]
    lines += [fmt(round(share * total), name) for name, share in buckets(raw).items()]
    lines.append(f"Self time by package (share{unit}):")
    lines += [fmt(n, name) for name, n in by_component.most_common(top)]
    lines.append(f"Inclusive time of the service's own functions (share{unit}):")
    lines += [fmt(n, name) for name, n in inclusive.most_common(top)]
    return "\n".join(lines)
