"""`python -m benchmarks`: the broker against its floors, end to end, loopback only.

For every case (upstream kind, connections, workers) and every round, each target is
started fresh, checked with one real request, warmed up, then driven by wrk; the
targets' order rotates from round to round. Reported per case and target: median
req/s and latency percentiles over the rounds, the worst error count, the peak RSS of
the server's process tree and its CPU time per request, and broker / floor (b).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import agentpath, gateway, jwtbench, loadgen, procs, profiling, streams, upstreams

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
SESSION_PATH = "/api/chatkit/session"
WORKFLOW = "bench"
N_USERS = 200  # tokens rotated by wrk in the ordinary cases
# More distinct tokens than the broker's verified-token cache holds (broker/auth.py, 4,096):
# rotated in order, none is still cached when it comes round again, so every mint verifies.
N_COLD_USERS = 20_000
SLOW_DELAY_MS = 50.0


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    app: str | None  # benchmarks.floors:<app>; None = the broker
    needs: str | None = None  # a module that must be importable


TARGETS = {
    t.key: t
    for t in (
        Target("a", "floor (a): constant JSON", "const_app"),
        Target("b", "floor (b): aiohttp upstream call", "aiohttp_app"),
        Target("b-httpx", "floor (b) with httpx.AsyncClient", "httpx_app", "httpx"),
        Target(
            "b-httpx-aiohttp",
            "floor (b) with httpx + httpx-aiohttp transport",
            "httpx_aiohttp_app",
            "httpx_aiohttp",
        ),
        Target("broker", "broker", None, "broker.cli"),
    )
}


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    upstream: str  # "nginx" (zero latency) | "slow" (injected delay)
    connections: int
    workers: int
    targets: tuple[str, ...]
    users: int = N_USERS  # distinct tokens rotated by wrk


CLIENTS = ("b-httpx", "b-httpx-aiohttp")
CASES = {
    c.key: c
    for c in (
        Case("zero-c16", "0 ms upstream, 16 conns", "nginx", 16, 1, ("a", "b", "broker")),
        Case(
            "zero-c128", "0 ms upstream, 128 conns", "nginx", 128, 1, ("a", "b", *CLIENTS, "broker")
        ),
        Case(
            "cold-c128",
            f"0 ms upstream, 128 conns, {N_COLD_USERS:,} tokens (none cached)",
            "nginx",
            128,
            1,
            ("b", "broker"),
            N_COLD_USERS,
        ),
        Case("slow-c128", "50 ms upstream, 128 conns", "slow", 128, 1, ("a", "b", "broker")),
        Case(
            "slow-c512", "50 ms upstream, 512 conns", "slow", 512, 1, ("a", "b", *CLIENTS, "broker")
        ),
        Case(
            "workers2-c128",
            "0 ms upstream, 128 conns, --workers 2",
            "nginx",
            128,
            2,
            ("a", "b", "broker"),
        ),
    )
}
# micro-benchmark; JWKS-mode broker makes no JWKS call on the hot path; CPU per stream event;
# the gateway's time to the first event; the agent path beside a bare chatkit-python server
EXTRAS = ("jwt", "jwks", "streams", "gateway", "agent")
# issue 24's targets, checked by check_targets
MINT_RATIO = 0.7  # x floor (b), nginx upstream at 128 conns and 50 ms upstream at 512
MINT_RSS_MB = 80.0  # peak RSS of the one-worker broker at 512 conns
GATEWAY_ADDED_MS = gateway.FIRST_EVENT_TARGET_MS


def _on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# ----------------------------------------------------------------------- set-up


def ensure_tools(allow_install: bool) -> None:
    """Install Debian's wrk and nginx-light when missing (apt-get, as root or via sudo -n)."""
    missing = [
        pkg
        for binary, pkg in (("wrk", "wrk"), ("nginx", "nginx-light"))
        if not (shutil.which(binary) or Path("/usr/sbin", binary).exists())
    ]
    if not missing:
        return
    if not allow_install:
        sys.exit(
            f"missing {', '.join(missing)}; install them: apt-get install -y {' '.join(missing)}"
        )
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if prefix and not shutil.which("sudo"):
        sys.exit(
            f"missing {', '.join(missing)} and not root: apt-get install -y {' '.join(missing)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"# installing {' '.join(missing)} with apt-get", flush=True)
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", *missing]):
        res = subprocess.run(prefix + cmd, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")


def available(target: Target) -> str | None:
    """None when the target can run, else why not."""
    if target.needs:
        try:
            found = importlib.util.find_spec(target.needs) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            dist = {"broker.cli": "chatkit-broker", "httpx_aiohttp": "httpx-aiohttp"}.get(
                target.needs, target.needs
            )
            return f"{dist} is not installed"
    if target.key == "broker" and not broker_exe():
        return "the chatkit-broker command is not installed"
    return None


def broker_exe() -> str | None:
    beside = Path(sys.executable).with_name("chatkit-broker")
    return str(beside) if beside.exists() else shutil.which("chatkit-broker")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in (
        "uvicorn",
        "uvloop",
        "httptools",
        "starlette",
        "aiohttp",
        "httpx",
        "httpx-aiohttp",
        "pyjwt",
        "cryptography",
        "chatkit-broker",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    for name, argv in (("wrk", ["wrk", "--version"]), ("nginx", ["nginx", "-v"])):
        exe = shutil.which(argv[0]) or f"/usr/sbin/{argv[0]}"
        with contextlib.suppress(OSError):
            res = subprocess.run([exe, *argv[1:]], capture_output=True, text=True)
            out[name] = (res.stdout + res.stderr).strip().splitlines()[0]
    return out


def machine() -> dict[str, object]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_gb": round(mem_gb, 1),
        "kernel": platform.release(),
    }


# --------------------------------------------------------------------- the bench


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    upstream_urls: dict[str, str] = field(default_factory=dict)
    upstream_pids: list[int] = field(default_factory=list)
    tokens_files: dict[int, Path] = field(default_factory=dict)  # users -> file
    hs_secret: str = jwtbench.HS_SECRET
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seq: int = 0
    stamp: str = ""
    wait_left: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per case and extra

    # --- upstreams

    def start_upstreams(self, kinds: set[str]) -> None:
        nofile = procs.raise_nofile()[0]
        if "nginx" in kinds:
            port = procs.free_port()
            workdir = self.tmp / "nginx"
            workdir.mkdir()
            conf = upstreams.nginx_config(workdir, port, nofile)
            child = procs.Child(
                "nginx", upstreams.nginx_argv(workdir, conf), workdir / "stdout.log"
            )
            child.start()
            procs.wait_http_ok(f"http://127.0.0.1:{port}/healthz", child)
            self.upstream_urls["nginx"] = f"http://127.0.0.1:{port}/v1"
            self.upstream_pids.append(child.pid)
        if "slow" in kinds:
            port = procs.free_port()
            argv = [
                sys.executable,
                "-m",
                "benchmarks.upstreams",
                "--port",
                str(port),
                "--delay-ms",
                str(SLOW_DELAY_MS),
            ]
            child = procs.Child("slow-upstream", argv, self.tmp / "slow-upstream.log")
            child.start(env=self.python_env(), cwd=ROOT)
            procs.wait_http_ok(f"http://127.0.0.1:{port}/healthz", child)
            self.upstream_urls["slow"] = f"http://127.0.0.1:{port}/v1"
            self.upstream_pids.append(child.pid)

    # --- tokens

    def make_tokens(self, users: int, use_cli: bool) -> Path:
        """`users` HS256 tokens (sub user0, user1, ..., ttl 3600), one per line.

        Minted by `chatkit-broker token --sub userN --ttl 3600`'s own code (broker.cli.main,
        called in one subprocess rather than one interpreter start per token); with no broker
        installed, by PyJWT with the same claims.
        """
        path = self.tmp / f"tokens-hs256-{users}.txt"
        if use_cli:
            code = (
                "import sys\nfrom broker.cli import main\n"
                f"for i in range({users}):\n"
                "    rc = main(['token', '--sub', f'user{i}', '--ttl', '3600'])\n"
                "    if rc: sys.exit(rc)\n"
            )
            res = subprocess.run(
                [sys.executable, "-c", code],
                env=self.broker_env("nginx"),
                cwd=self.tmp,
                capture_output=True,
                text=True,
                timeout=300,
            )
            lines = res.stdout.split()
            if res.returncode != 0 or len(lines) != users:
                raise RuntimeError(
                    f"chatkit-broker token failed ({res.returncode}): {res.stderr[-500:]}"
                )
        else:
            import jwt

            lines = [
                jwt.encode(jwtbench.claims(f"user{i}", 3600), self.hs_secret, algorithm="HS256")
                for i in range(users)
            ]
        path.write_text("\n".join(lines) + "\n")
        return path

    # --- servers

    def python_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = clean_env()
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.update(extra or {})
        return env

    def broker_env(self, upstream: str, jwt_env: dict[str, str] | None = None) -> dict[str, str]:
        env = clean_env()
        env.update(
            {
                # (port 9, discard, when no upstream runs: token minting needs none)
                "OPENAI_BASE_URL": self.upstream_urls.get(upstream, "http://127.0.0.1:9/v1"),
                "OPENAI_API_KEY": "sk-bench-" + "0" * 32,
                "BROKER_WORKFLOWS": f"{WORKFLOW}={upstreams.WORKFLOW_ID}",
                "BROKER_RATE_LIMIT": "1000000/minute",
                "BROKER_IP_RATE_LIMIT": "100000000/minute",
                "BROKER_LOG_FORMAT": "json",
                **(jwt_env if jwt_env is not None else {"BROKER_JWT_SECRET": self.hs_secret}),
            }
        )
        return env

    def start_target(
        self, target: Target, case: Case, jwt_env: dict[str, str] | None = None
    ) -> tuple[procs.Child, str]:
        port = procs.free_port()
        self.seq += 1
        log = self.tmp / f"{self.seq:03d}-{case.key}-{target.key}.log"
        if target.app is None:
            argv = [broker_exe() or "chatkit-broker", "serve", "--port", str(port)]
            if case.workers > 1:
                argv += ["--workers", str(case.workers)]
            env = self.broker_env(case.upstream, jwt_env)
            cwd = self.tmp  # no stray .env from the checkout is loaded
        else:
            argv = [
                sys.executable,
                "-m",
                "uvicorn",
                f"benchmarks.floors:{target.app}",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
                # as `chatkit-broker serve` runs uvicorn (broker/cli.py)
                "--no-server-header",
                "--no-proxy-headers",
                "--timeout-keep-alive",
                "10",
                "--workers",
                str(case.workers),
            ]
            env = self.python_env(
                {"BENCH_UPSTREAM_URL": self.upstream_urls[case.upstream] + "/chatkit/sessions"}
            )
            cwd = ROOT
        child = procs.Child(f"{target.key}@{case.key}", argv, log).start(env=env, cwd=cwd)
        base = f"http://127.0.0.1:{port}"
        procs.wait_http_ok(base + "/healthz", child)
        return child, base

    def probe(self, base: str, target: Target, token: str) -> None:
        """One real request; raise unless it is a 200 with the expected shape."""
        req = urllib.request.Request(
            base + SESSION_PATH,
            data=json.dumps({"workflow": WORKFLOW}).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with procs.http_open(req, timeout=15) as resp:
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        if status != 200:
            raise RuntimeError(f"probe answered {status}: {body[:300]!r}")
        data = json.loads(body)
        want = (
            {"client_secret", "expires_at", "session_id", "workflow", "mock"}
            if target.key in ("broker", "a")
            else {"client_secret", "expires_at", "id", "object"}
        )
        if not want <= data.keys():
            raise RuntimeError(f"probe body lacks {sorted(want - data.keys())}: {body[:300]!r}")
        if target.key == "broker" and (
            data["mock"] is not False or data["workflow"]["name"] != WORKFLOW
        ):
            raise RuntimeError(f"unexpected broker answer: {data}")

    def measure(self, case: Case, target: Target, rnd: int) -> dict:
        a = self.args
        row: dict = {
            "round": rnd,
            "case": case.key,
            "target": target.key,
            "connections": case.connections,
            "workers": case.workers,
            "upstream": case.upstream,
        }
        print(f"  round {rnd + 1} {case.key:<14} {target.key:<16}", end=" ", flush=True)
        child = None
        row["other_load_before"] = round(self.wait_quiet(), 2)
        try:
            child, base = self.start_target(target, case)
            tokens = self.tokens_files[case.users]
            self.probe(base, target, tokens.read_text().split("\n", 1)[0])
            wrk_log = self.tmp / f"{self.seq:03d}-wrk.log"
            common = {
                "connections": case.connections,
                "threads": a.threads,
                "tokens_file": tokens,
                "log_path": wrk_log,
            }
            with procs.Sampler(child.pid) as sampler:
                if a.warmup > 0:
                    warm = loadgen.run_wrk(base + SESSION_PATH, duration=a.warmup, **common)
                    row["warmup_rps"] = round(warm.rps, 1)
                spy = None
                if target.key in a.profile:
                    raw = RESULTS / f"profile-{self.stamp}-{case.key}-{target.key}-r{rnd + 1}.txt"
                    spy = profiling.start(child.pid, a.duration, raw, self.tmp / "py-spy.log")
                cpu0, other0 = sampler.cpu(), self.other_cpu()
                res = loadgen.run_wrk(base + SESSION_PATH, duration=a.duration, **common)
                cpu1, other1 = sampler.cpu(), self.other_cpu()
                if spy is not None:
                    assert spy.proc is not None
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        spy.proc.wait(15)
                    spy.stop()
                    row["profile_raw"] = str(raw)
            # CPU used on this machine by processes that are not part of the benchmark
            foreign = (other1 - other0 - (cpu1 - cpu0)) / res.raw["duration_s"]
            row.update(
                {
                    "rps": round(res.rps, 1),
                    "requests": res.requests,
                    "p50_ms": res.p50_ms,
                    "p90_ms": res.p90_ms,
                    "p99_ms": res.p99_ms,
                    "max_ms": res.max_ms,
                    "non200": res.non200,
                    "socket_errors": res.socket_errors,
                    "timeouts": res.timeouts,
                    "statuses": res.statuses,
                    "error_sample": res.sample,
                    "peak_rss_mb": round(sampler.peak_tree_rss / 2**20, 1),
                    "peak_proc_hwm_mb": round(sampler.peak_proc_hwm / 2**20, 1),
                    "processes": len(sampler.pids()),
                    "cpu_us_per_req": round((cpu1 - cpu0) / max(res.requests, 1) * 1e6, 1),
                    "foreign_cpu_cores": round(max(foreign, 0.0), 2),
                }
            )
            print(
                f"{res.rps:9.0f} req/s  p99 {res.p99_ms:8.1f} ms  errors {res.errors:<6} "
                f"rss {row['peak_rss_mb']:.0f} MB"
                + (f"  (other load: {foreign:.2f} cores)" if foreign > 0.1 else ""),
                flush=True,
            )
            if res.requests == 0:  # nothing answered within the run: wrk counts no error
                row["stalled"] = True
            if "profile_raw" in row and Path(row["profile_raw"]).exists():
                row["profile"] = profiling.summarize(
                    Path(row["profile_raw"]), cpu_us_per_req=row["cpu_us_per_req"]
                )
            if not child.alive():
                row["error"] = f"server exited during the run:\n{child.log_tail()}"
        except (RuntimeError, OSError, ValueError) as exc:
            row["error"] = str(exc)
            print(f"FAILED: {str(exc).splitlines()[0][:200]}", flush=True)
        finally:
            if child is not None:
                child.stop()
        self.rows.append(row)
        return row

    def wait_quiet(self) -> float:
        """Before a run, wait (within the run's total budget) while other processes on the
        machine keep more than 0.25 CPU cores busy; return the last load seen."""
        load = 0.0
        while True:
            o0, t0 = self.other_cpu(), time.monotonic()
            time.sleep(0.5)
            load = (self.other_cpu() - o0) / (time.monotonic() - t0)
            if load < 0.25 or self.wait_left <= 0:
                return load
            self.wait_left -= 0.5

    def other_cpu(self) -> float:
        """Machine CPU time minus the upstreams', the runner's and finished wrk runs'."""
        ours = procs.cpu_seconds([p for u in self.upstream_pids for p in procs.process_tree(u)])
        return procs.machine_busy_seconds() - ours - procs.own_cpu_seconds()

    def run_cases(self, cases: list[Case], targets: list[str]) -> None:
        for rnd in range(self.args.rounds):
            for case in cases:
                order = [t for t in case.targets if t in targets]
                if not order:
                    continue
                shift = rnd % len(order)
                started = time.monotonic()
                for key in order[shift:] + order[:shift]:
                    self.measure(case, TARGETS[key], rnd)
                took = time.monotonic() - started
                self.seconds[case.key] = self.seconds.get(case.key, 0.0) + took


def clean_env() -> dict[str, str]:
    """The runner's environment minus anything that would configure the broker or proxies."""
    drop = ("OPENAI_", "CHATKIT_", "BROKER_", "PORT")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        env.pop(k, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


# ----------------------------------------------------------------------- report


def summarize(rows: list[dict]) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["case"], r["target"]), []).append(r)
    out = []
    for case in CASES.values():
        floor_b = None
        case_rows = []
        for key in TARGETS:
            runs = groups.get((case.key, key))
            if not runs:
                continue
            ok = [r for r in runs if "rps" in r]
            s: dict = {
                "case": case.key,
                "target": key,
                "rounds": len(ok),
                "failed": len(runs) - len(ok),
            }
            if ok:
                s.update(
                    {
                        "rps": statistics.median(r["rps"] for r in ok),
                        "p50_ms": statistics.median(r["p50_ms"] for r in ok),
                        "p90_ms": statistics.median(r["p90_ms"] for r in ok),
                        "p99_ms": statistics.median(r["p99_ms"] for r in ok),
                        "errors_max": max(r["non200"] + r["socket_errors"] for r in ok),
                        "peak_rss_mb": max(r["peak_rss_mb"] for r in ok),
                        "cpu_us_per_req": statistics.median(r["cpu_us_per_req"] for r in ok),
                        "foreign_cpu_cores_max": max(r["foreign_cpu_cores"] for r in ok),
                        "stalled_rounds": sum(1 for r in ok if r.get("stalled")),
                    }
                )
                if key == "b":
                    floor_b = s["rps"]
            errs = [r["error"] for r in runs if "error" in r]
            if errs:
                s["error"] = errs[0]
            case_rows.append(s)
        for s in case_rows:
            if floor_b and "rps" in s and s["target"] != "a":
                s["ratio_b"] = s["rps"] / floor_b
        out.extend(case_rows)
    return out


def markdown_table(summary: list[dict]) -> str:
    lines = [
        "| case | target | req/s | p50 ms | p90 ms | p99 ms | errors | peak RSS MB | CPU µs/req | x floor (b) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summary:
        case = CASES[s["case"]].title
        name = {
            "a": "floor (a) const",
            "b": "floor (b) aiohttp",
            "b-httpx": "(b) httpx",
            "b-httpx-aiohttp": "(b) httpx + httpx-aiohttp",
            "broker": "**broker**",
        }[s["target"]]
        if "rps" not in s:
            err = s.get("error", "no result").splitlines()[0][:80]
            lines.append(f"| {case} | {name} | failed: {err} | | | | | | | |")
            continue
        errors = str(s["errors_max"])
        if s["stalled_rounds"]:
            errors += f" ({s['stalled_rounds']} run(s) with no answer at all)"
        ratio = f"{s['ratio_b']:.2f}" if "ratio_b" in s else ""
        if s["target"] == "broker" and ratio:
            ratio = f"**{ratio}**"
        lines.append(
            f"| {case} | {name} | {s['rps']:,.0f} | {s['p50_ms']:.1f} | {s['p90_ms']:.1f} | "
            f"{s['p99_ms']:.1f} | {errors} | {s['peak_rss_mb']:.0f} | "
            f"{s['cpu_us_per_req']:.0f} | {ratio} |"
        )
    return "\n".join(lines)


def check_targets(
    summary: list[dict], extras: dict | None = None
) -> list[tuple[str, bool | None, str]]:
    """Issue 24's targets, each (name, passed or None when not measured, detail): the mint at
    ≥ 0.7 x floor (b) with the nginx upstream at 128 conns and with the 50 ms upstream at 512,
    peak RSS < 80 MB at 512 conns, and the gateway's median added time to the first event
    < 1 ms over direct."""
    get = {(s["case"], s["target"]): s for s in summary}
    out: list[tuple[str, bool | None, str]] = []

    def broker(case: str) -> dict | None:
        s = get.get((case, "broker"))
        return s if s and "ratio_b" in s else None

    for case, name in (
        ("zero-c128", f"mint, nginx upstream, 128 conns: ≥ {MINT_RATIO} x floor (b)"),
        ("slow-c512", f"mint, 50 ms upstream, 512 conns: ≥ {MINT_RATIO} x floor (b)"),
    ):
        s = broker(case)
        if s is None:
            out.append((name, None, "not measured"))
            continue
        detail = f"{s['ratio_b']:.2f} x ({s['cpu_us_per_req']:.0f} µs CPU per mint"
        b = get.get((case, "b"))
        if b and "cpu_us_per_req" in b:
            detail += f", floor (b) {b['cpu_us_per_req']:.0f}"
        detail += f"), {s['errors_max']} errors, p99 {s['p99_ms']:.0f} ms"
        out.append((name, s["ratio_b"] >= MINT_RATIO, detail))
    name = f"mint, peak RSS at 512 conns, one worker: < {MINT_RSS_MB:.0f} MB"
    s = broker("slow-c512")
    if s is None:
        out.append((name, None, "not measured"))
    else:
        out.append((name, s["peak_rss_mb"] < MINT_RSS_MB, f"{s['peak_rss_mb']:.1f} MB"))
    name = f"gateway: median added time to the first event < {GATEWAY_ADDED_MS:g} ms over direct"
    first = (extras or {}).get("gateway")
    if not first:
        out.append((name, None, "not measured"))
    else:
        p50 = first["p50_ms"]
        out.append(
            (
                name,
                first["added_ms"] < GATEWAY_ADDED_MS,
                f"+{first['added_ms']:.2f} ms (direct {p50['direct']:.2f}, broker "
                f"{p50['broker']:.2f}, bare relay {p50['relay']:.2f} ms)",
            )
        )
    return out


def report(saved: dict) -> str:
    """The Markdown tables of a saved results file (re-summarized from its raw rows)."""
    for r in saved["rows"]:
        if r.get("requests") == 0:
            r["stalled"] = True
    summary = summarize(saved["rows"])
    m, v = saved["machine"], saved["versions"]
    opts = saved["options"]
    lines = [
        f"Run {saved['started']}: {m['cpus']} CPUs ({m['cpu_model']}), kernel {m['kernel']}; "
        f"Python {v['python']}, uvicorn {v.get('uvicorn')}, uvloop {v.get('uvloop')}, "
        f"starlette {v.get('starlette')}, aiohttp {v.get('aiohttp')}, httpx {v.get('httpx')}, "
        f"PyJWT {v.get('pyjwt')}; {v.get('nginx')}; {v.get('wrk')}. "
        f"{opts['rounds']} round(s) of {opts['duration']:g} s (+ {opts['warmup']:g} s warm-up), "
        f"medians; errors and RSS are the worst round.",
    ]
    if summary:
        lines += ["", markdown_table(summary)]
    checks = [
        (n, ok, d) for n, ok, d in check_targets(summary, saved.get("extras")) if ok is not None
    ]
    for key in EXTRAS:
        if key in saved.get("extras", {}):
            lines += ["", saved["extras"][key]["markdown"]]
    if checks:
        lines += ["", "Issue 24's targets:", ""]
    for name, ok, detail in checks:
        lines.append(f"- {'PASS' if ok else 'MISS'} {name}: {detail}")
    seconds = saved.get("seconds") or {}
    if seconds:
        took = ", ".join(f"{key} {value / 60:.1f} min" for key, value in seconds.items())
        lines += ["", f"Time per part: {took}."]
    return "\n".join(lines)


# ------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark chatkit-broker against its floors (wrk, loopback only).",
    )
    ap.add_argument("--quick", action="store_true", help="1 round, 3 s runs, 1 s warm-up")
    ap.add_argument(
        "--only",
        default="",
        help=f"comma-separated cases/extras to run: {', '.join([*CASES, *EXTRAS])} (default: all)",
    )
    ap.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated targets (default: {','.join(TARGETS)})",
    )
    ap.add_argument("--rounds", type=int, help="rounds per case (default 3; --quick 1)")
    ap.add_argument(
        "--duration", type=float, help="seconds per measured run (default 8; --quick 3)"
    )
    ap.add_argument(
        "--warmup", type=float, help="seconds of warm-up per run (default 2; --quick 1)"
    )
    ap.add_argument(
        "--max-wait",
        type=float,
        default=30.0,
        help="seconds in all (default 30) to wait before runs for other processes on the "
        "machine to go quiet (< 0.25 cores busy)",
    )
    ap.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    ap.add_argument(
        "--no-install", action="store_true", help="never apt-get install wrk/nginx-light"
    )
    ap.add_argument(
        "--profile",
        nargs="?",
        const="broker",
        default="",
        metavar="TARGETS",
        help="record each measured run of these targets (default: broker) with py-spy; "
        "the figures of profiled runs are slightly lower",
    )
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir with all logs")
    ap.add_argument("--list", action="store_true", help="list cases and targets, then exit")
    ap.add_argument(
        "--report", metavar="JSON", help="print the tables of a saved results file and exit"
    )
    args = ap.parse_args(argv)
    args.profile = [t for t in args.profile.split(",") if t]
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (3.0 if args.quick else 8.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return 0
    if args.list:
        for c in CASES.values():
            print(f"{c.key:<14} {c.title}: {', '.join(c.targets)}")
        print(
            "extras:        jwt (verification micro-benchmark), jwks (JWKS mode: no fetch on the "
            "hot path), streams (CPU per relayed event and per stream: gateway, agent), "
            "gateway (time to the first event: direct, broker, bare relay side by side), "
            "agent (the agent path beside a bare chatkit-python server: turns/s, first delta, "
            "CPU per turn)"
        )
        return 0
    selected = [s for s in args.only.split(",") if s] or [*CASES, *EXTRAS]
    unknown = [s for s in selected if s not in CASES and s not in EXTRAS]
    targets = [t for t in args.targets.split(",") if t]
    unknown += [t for t in targets + args.profile if t not in TARGETS]
    if unknown:
        print(f"unknown case/target: {', '.join(unknown)} (see --list)", file=sys.stderr)
        return 2
    cases = [CASES[k] for k in CASES if k in selected]

    ensure_tools(not args.no_install)
    if args.profile and not profiling.pyspy():
        print("--profile needs py-spy: pip install py-spy", file=sys.stderr)
        return 2
    # Ctrl-C even when started in the background by a shell that ignores SIGINT there
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    nofile = procs.raise_nofile()
    if nofile[0] < 4096:
        print(
            f"# warning: open-file limit is {nofile[0]}; 512-connection cases may fail",
            file=sys.stderr,
        )

    runnable = []
    notes = []
    for key in targets:
        why = available(TARGETS[key])
        if why:
            notes.append(f"{TARGETS[key].label}: skipped, {why}")
        else:
            runnable.append(key)

    n_runs = sum(len([t for t in c.targets if t in runnable]) for c in cases) * args.rounds
    est = n_runs * (args.duration + args.warmup + 3) + args.max_wait
    started = time.monotonic()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    tmp = Path(tempfile.mkdtemp(prefix="chatkit-bench-"))
    RESULTS.mkdir(exist_ok=True)
    bench = Bench(args, tmp, notes=notes, stamp=stamp, wait_left=args.max_wait)
    info = {"machine": machine(), "versions": versions()}
    print(
        f"# chatkit-broker benchmark: {len(cases)} cases, {n_runs} runs, about {est / 60:.0f} min"
        f" (+ extras); {info['machine']['cpus']} CPUs; logs in {tmp}",
        flush=True,
    )
    for n in notes:
        print(f"# note: {n}", flush=True)
    failed = False
    extras: dict = {}
    try:
        kinds = {c.upstream for c in cases}
        if "jwks" in selected and "broker" in runnable:
            kinds.add("nginx")
        bench.start_upstreams(kinds)
        for users in sorted({c.users for c in cases}):
            bench.tokens_files[users] = bench.make_tokens(users, use_cli="broker" in runnable)
        if "jwt" in selected:
            extras["jwt"] = jwtbench.run(quick=args.quick, with_broker="broker" in runnable)
        if "jwks" in selected and "broker" in runnable:
            extras["jwks"] = jwtbench.jwks_hot_path(bench)
        extra_runs = (
            ("streams", lambda: streams.run(quick=args.quick)),
            ("gateway", lambda: gateway.first_event(quick=args.quick)),
            ("agent", lambda: agentpath.run(quick=args.quick)),
        )
        for key, run_extra in extra_runs:
            if key in selected and "broker" in runnable:
                print(f"# {key} ...", flush=True)
                part_started = time.monotonic()
                extras[key] = run_extra()
                bench.seconds[key] = time.monotonic() - part_started
                print(f"# {key}: {bench.seconds[key] / 60:.1f} min", flush=True)
        bench.run_cases(cases, runnable)
    except KeyboardInterrupt:
        print("\n# interrupted: stopping every process started", file=sys.stderr)
        failed = True
    finally:
        procs.stop_all()

    summary = summarize(bench.rows)
    table = markdown_table(summary)
    checks = [c for c in check_targets(summary, extras) if c[1] is not None]
    elapsed = time.monotonic() - started
    busy = max((s.get("foreign_cpu_cores_max", 0.0) for s in summary), default=0.0)
    if busy > 0.15:
        notes.append(
            f"other processes used up to {busy:.2f} CPU cores during measured runs: "
            "these figures are disturbed; rerun on a quiet machine"
        )
    out = RESULTS / f"bench-{stamp}.json"
    payload = {
        "started": stamp,
        "elapsed_s": round(elapsed, 1),
        "options": {k: v for k, v in vars(args).items() if k not in ("list", "report")},
        **info,
        "summary": summary,
        "targets": [{"name": n, "passed": ok, "detail": d} for n, ok, d in checks],
        "extras": extras,
        "notes": notes,
        "seconds": {k: round(v, 1) for k, v in bench.seconds.items()},
        "rows": bench.rows,
        "markdown": table,
    }
    out.write_text(json.dumps(payload, indent=2, default=str))
    (RESULTS / "latest.json").write_text(out.read_text())

    print(f"\n## Results ({elapsed / 60:.1f} min)\n")
    print(report(payload))
    for r in bench.rows:
        if "profile" in r:
            print(f"\n### profile: {r['case']} {r['target']} round {r['round'] + 1}\n")
            print(r["profile"])
    for n in notes:
        print(f"- note: {n}")
    print(f"\n# results: {out}")
    if args.keep_tmp or failed:
        print(f"# logs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        return 130
    return 1 if any("error" in r for r in bench.rows) else 0
