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
    lines = [f"py-spy: {total} samples. Self time by package (share{unit}):"]
    lines += [fmt(n, name) for name, n in by_component.most_common(top)]
    lines.append(f"Inclusive time of the service's own functions (share{unit}):")
    lines += [fmt(n, name) for name, n in inclusive.most_common(top)]
    return "\n".join(lines)
