"""Child processes for the benchmark: start, wait until ready, sample RSS/CPU, stop.

Every process is started in its own session (so it has its own process group, which
also holds e.g. uvicorn's worker processes or nginx's worker) and is recorded in a
registry; `stop_all()` ends every group still alive. Children also get
PR_SET_PDEATHSIG so they die with the runner even if it is killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_PR_SET_PDEATHSIG = 1

_live: list[Child] = []
# urllib without proxies: a proxy from the environment must never see loopback traffic
http_open = urllib.request.build_opener(urllib.request.ProxyHandler({})).open
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not after fork


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_nofile(wanted: int = 65536) -> tuple[int, int]:
    """Raise the soft open-file limit (inherited by every child) as far as allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):  # only root may raise the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted, wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Child:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        _live.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            data = self.log_path.read_bytes()[-20000:].decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(data.splitlines()[-lines:])

    def stop(self, grace: float = 8.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        # the leader may be gone while its group (e.g. uvicorn workers) lingers
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(2)
        if self in _live:
            _live.remove(self)


def stop_all() -> None:
    for child in reversed(list(_live)):
        child.stop(grace=3.0)


def wait_http_ok(url: str, child: Child, timeout: float = 30.0) -> None:
    """Poll `url` until it answers 200; fail early if the child dies."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(
                f"{child.name} exited with code {child.proc.returncode if child.proc else '?'} "
                f"before it was ready; log tail:\n{child.log_tail()}"
            )
        try:
            with http_open(url, timeout=2) as resp:
                if resp.status == 200:
                    return
                last = resp.status
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(
        f"{child.name} not ready at {url} after {timeout:.0f}s ({last}); log:\n{child.log_tail()}"
    )


# ---------------------------------------------------------------- /proc sampling


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def process_tree(pid: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _hwm_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _CLK_TCK


def machine_busy_seconds() -> float:
    """CPU time spent by the whole machine (all CPUs, not idle/iowait) since boot."""
    with open("/proc/stat", "rb") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    return (sum(vals[:8]) - vals[3] - vals[4]) / _CLK_TCK


def own_cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (e.g. finished wrk runs)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class Sampler:
    """Samples the summed RSS of a process tree every `interval` s in a thread."""

    pid: int
    interval: float = 0.2
    peak_tree_rss: int = 0
    peak_proc_hwm: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _pids: list[int] = field(default_factory=list)

    def __enter__(self) -> Sampler:
        self._pids = process_tree(self.pid)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._sample()

    def pids(self) -> list[int]:
        return list(self._pids)

    def cpu(self) -> float:
        return cpu_seconds(process_tree(self.pid))

    def _sample(self) -> None:
        pids = process_tree(self.pid)
        self._pids = pids
        self.peak_tree_rss = max(self.peak_tree_rss, sum(_rss_bytes(p) for p in pids))
        self.peak_proc_hwm = max([self.peak_proc_hwm, *(_hwm_bytes(p) for p in pids)])
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()
