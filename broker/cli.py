"""``chatkit-broker``: serve, check, token, doctor and init. Exit codes: 0 ok, 1 check failed, 2 usage/config."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from .backends.agent.usage_report import add_parser as add_usage_parser
from .config import load_settings, read_dotenv, read_environment
from .environ import export_environment
from .logs import mask
from .settings import ConfigError, Settings


def _settings_or_exit(env: dict[str, str]) -> Settings:
    try:
        return load_settings(env)
    except ConfigError as exc:
        print("chatkit-broker: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .logs import setup_logging

    if args.reload and args.workers > 1:
        print(
            "chatkit-broker serve: --reload cannot be combined with --workers > 1", file=sys.stderr
        )
        return 2
    overrides = {
        "BROKER_MOCK": "1" if args.mock else None,
        "BROKER_HOST": args.host,
        "BROKER_PORT": str(args.port) if args.port is not None else None,
    }
    for name, value in overrides.items():
        if value is not None:
            os.environ[name] = value  # the workers re-read the environment
    env, _ = read_environment()
    export_environment(env)  # before load_settings imports any agent module
    settings = _settings_or_exit(env)
    if settings.mock and args.workers > 1:
        print(
            "chatkit-broker serve: mock mode runs one worker (its threads and the key that signs "
            "mock secrets live in one process); drop --workers",
            file=sys.stderr,
        )
        return 2
    problem = _port_problem(settings.host, settings.port) or _database_problem(settings)
    if problem:
        print(f"chatkit-broker serve: cannot start: {problem}", file=sys.stderr)
        return 2
    setup_logging(settings.log_format, settings.log_level, secrets=(settings.openai_api_key or "",))
    trusted = ",".join(settings.trusted_proxies)
    from .metrics import multiprocess_dir

    with multiprocess_dir(args.workers) as metrics_dir:
        if metrics_dir:
            logging.getLogger("broker").info(
                "metrics: workers write to %s (PROMETHEUS_MULTIPROC_DIR); /metrics sums them",
                metrics_dir,
            )
        _run_uvicorn(uvicorn, settings, args, trusted)
    return 0


def _database_problem(settings: Settings) -> str | None:
    """What a kind in use says keeps the server from starting (the agent store: its database
    unreachable or from a newer broker), asked before uvicorn starts."""
    from .backends import specs_for

    for spec in specs_for(settings.mock, settings.workflows):
        problem = spec.preflight(settings) if spec.preflight is not None else None
        if problem:
            return problem
    return None


def _port_problem(host: str, port: int) -> str | None:
    """A busy port, said in words (uvicorn would log ``[Errno 98]`` and stop), with the two ways
    to pick another. Binding the way uvicorn will is the only honest test of "free"."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (
                    f"port {port} on {host} is already in use (another broker, or another "
                    f"program); pick another with --port {port + 1} or BROKER_PORT={port + 1}"
                )
            if exc.errno == errno.EACCES:
                return f"port {port} on {host} needs privileges; use a port above 1023 (--port)"
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def _run_uvicorn(uvicorn: Any, settings: Settings, args: argparse.Namespace, trusted: str) -> None:
    # Limits against slow and abusive clients (docs/reliability.md):
    # request heads are capped at 64 KiB and must arrive within 10 s (broker/server.py; plain
    # uvicorn has neither with httptools), bodies at 16 KiB within 10 s (edge.Edge),
    # idle keep-alive connections close after 10 s. No limit_concurrency: its 503s would turn
    # away real users whenever idle connections pile up; the deadlines bound those instead.
    uvicorn.run(
        "broker.app:app_from_environ",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=args.workers if args.workers > 1 else None,
        reload=args.reload,
        proxy_headers=bool(trusted) and not settings.mock,
        forwarded_allow_ips=trusted or "",
        server_header=False,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=15,
        timeout_keep_alive=10,
        http=_http_protocol(),
        ws="none",  # no WebSocket routes: an Upgrade is plain HTTP (and websockets not loaded)
        h11_max_incomplete_event_size=64 * 1024,  # the same head cap if h11 is used
    )


def _http_protocol() -> str:
    """The guarded httptools protocol, or h11 (which caps heads itself) without httptools."""
    try:
        import httptools  # noqa: F401
    except ImportError:  # pragma: no cover - uvicorn[standard] installs it
        return "h11"
    return "broker.server:GuardedHttpToolsProtocol"


def cmd_check(args: argparse.Namespace) -> int:
    env, from_dotenv = read_environment()
    export_environment(env)
    settings = _settings_or_exit(env)
    print(describe(settings, from_dotenv))
    problems = agent_problems(settings)
    for problem in problems:
        print(problem)
    return 1 if problems else 0


def agent_problems(s: Settings) -> list[str]:
    """What makes an agent workflow fail at its first message though it imports (a guardrail's
    missing package or model), found now, each with its fix."""
    if s.mock or not any(wf.kind == "agent" for wf in s.workflows):
        return []
    from .backends.agent.checks import guardrail_findings
    from .backends.agent.targets import load_target

    lines = []
    for wf in s.workflows:
        if wf.kind == "agent" and wf.agent:
            for finding in guardrail_findings(load_target(wf.agent)):
                lines.append(
                    f"problem: workflow {wf.name!r}: {finding.problem}; fix: {finding.fix}"
                )
    return lines


def describe(s: Settings, from_dotenv: frozenset[str] = frozenset()) -> str:
    """A summary of the configuration that names no secret."""
    lines = [f"mode: {'MOCK (loopback only, no OpenAI calls)' if s.mock else 'live'}"]
    if s.openai_api_key:
        where = ".env" if s.openai_api_key_source in from_dotenv else "environment"
        lines.append(
            f"OpenAI key: {mask(s.openai_api_key)} from {s.openai_api_key_source} ({where})"
        )
    lines.append(f"OpenAI base URL: {s.openai_base_url}")
    if s.openai_organization or s.openai_project:
        lines.append(
            f"organization / project: {s.openai_organization or '-'} / {s.openai_project or '-'}"
        )
    lines.append("workflows:")
    for wf in s.workflows:
        extra = f" requires {', '.join(c for c, _ in wf.require)}" if wf.require else ""
        kind = f"{wf.kind}, served by mock" if s.mock else wf.kind
        lines.append(f"  {wf.name}: {kind} {wf.target} ({wf.label}){extra}")
    if s.session_secrets:
        count = len(s.session_secrets)
        lines.append(
            f"session secrets: {count} key{'s' if count > 1 else ''} (BROKER_SESSION_SECRET; "
            "the first signs)"
        )
    j = s.jwt
    sources = [
        n
        for n, on in (("HMAC secret", j.secret), ("PEM key", j.public_key), ("JWKS", j.jwks_url))
        if on
    ]
    lines.append(f"JWT: {', '.join(sources) or 'none (mock mode reads tokens unverified)'}")
    if j.configured:
        algs = ", ".join(j.hmac_algorithms + j.asymmetric_algorithms)
        lines.append(f"  algorithms: {algs}; user claim: {j.user_claim}; leeway: {j.leeway}s")
        lines.append(f"  audience: {j.audience or '-'}; issuer: {j.issuer or '-'}")
        if j.jwks_url:
            lines.append(f"  JWKS URL: {j.jwks_url}")
    from .backends import specs_for

    for spec in specs_for(s.mock, s.workflows):
        if spec.describe is not None:
            lines.extend(spec.describe(s))
    lines.append(f"listen: {s.host}:{s.port}")
    lines.append(f"rate limits: {s.rate_limit} per user, {s.ip_rate_limit} per address")
    lines.append(f"store: {'Redis' if s.redis_url else 'in-process memory'}")
    lines.append(f"upstream: timeout {s.upstream_timeout:g}s, {s.upstream_retries} retries")
    if s.environment is not None:
        from .settings import changed

        lines.append("set (all else at its default; docs/reference/configuration.md):")
        lines.extend(f"  {line}" for line in changed(s.environment))
    from .backends.hosted.retired import retirement_warnings

    for warning in [*s.warnings, *retirement_warnings(s.workflows, mock=s.mock)]:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def cmd_token(args: argparse.Namespace) -> int:
    import jwt

    env, _ = read_environment()
    secret = (env.get("BROKER_JWT_SECRET") or "").strip()
    if not secret:
        print(
            "chatkit-broker token: BROKER_JWT_SECRET is not set (tokens are signed with it)",
            file=sys.stderr,
        )
        return 2
    if len(secret.encode()) < 32:
        print("chatkit-broker token: BROKER_JWT_SECRET is shorter than 32 bytes", file=sys.stderr)
        return 2
    now = int(time.time())
    claims: dict[str, object] = {"iat": now, "exp": now + args.ttl}
    for name in ("BROKER_JWT_AUDIENCE", "BROKER_JWT_ISSUER"):
        if (env.get(name) or "").strip():
            claims["aud" if name.endswith("AUDIENCE") else "iss"] = env[name].strip()
    for item in args.claim:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"chatkit-broker token: --claim {item!r} must be key=value", file=sys.stderr)
            return 2
        try:
            claims[key] = json.loads(value)
        except ValueError:
            claims[key] = value
    user_claim = (env.get("BROKER_JWT_USER_CLAIM") or "sub").strip()
    claims[user_claim] = args.sub
    print(jwt.encode(claims, secret, algorithm="HS256"))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import for_stream, run_doctor

    token = args.token
    if token == "-":
        token = sys.stdin.readline().strip()
    if token is not None and not token.strip():
        print(
            "chatkit-broker doctor: --token needs a JWT (or - to read one from stdin)",
            file=sys.stderr,
        )
        return 2
    if token is not None and token.strip().lower().startswith("bearer "):
        token = token.strip()[7:]  # pasted from an Authorization header
    env, _ = read_environment()
    shell = dict(os.environ)  # before .env joins it: the key check says where a key came from
    export_environment(env)
    code, report = run_doctor(
        env,
        shell,
        read_dotenv(),
        timeout=args.timeout,
        token=token.strip() if token else None,
        as_json=args.json,
        smoke=args.smoke,
    )
    print(for_stream(report, sys.stdout.encoding, as_json=args.json))
    return code


def cmd_migrate(args: argparse.Namespace) -> int:
    from .migrate import main as migrate

    return migrate(args.export, args.name, smoke_test=not args.no_smoke)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatkit-broker",
        description="Mints OpenAI ChatKit client secrets for signed-in users.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from .init import HELP, cmd_init  # the first command a new user runs, listed first

    sub.add_parser("init", help=HELP).set_defaults(func=cmd_init)
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument(
        "--mock", action="store_true", help="mock mode: no OpenAI key, loopback only"
    )
    serve.add_argument("--host", help="bind address (default BROKER_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default BROKER_PORT, PORT or 8000)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument(
        "--reload", action="store_true", help="restart on code changes (development)"
    )
    serve.set_defaults(func=cmd_serve)
    check = sub.add_parser("check", help="validate the configuration and print a summary")
    check.set_defaults(func=cmd_check)
    token = sub.add_parser("token", help="print a development JWT signed with BROKER_JWT_SECRET")
    token.add_argument("--sub", required=True, help="the user id (goes into BROKER_JWT_USER_CLAIM)")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    token.add_argument(
        "--claim",
        action="append",
        default=[],
        metavar="K=V",
        help="extra claim (JSON value or string)",
    )
    token.set_defaults(func=cmd_token)
    doctor = sub.add_parser(
        "doctor",
        help="diagnose the OpenAI side: key, project, workflows, sign-in tokens, domains",
    )
    doctor.add_argument("--json", action="store_true", help="print a machine-readable report")
    doctor.add_argument(
        "--timeout",
        type=float,
        default=20.0,
        metavar="S",
        help="time bound for the whole run, in seconds (default 20)",
    )
    doctor.add_argument(
        "--token", metavar="JWT", help="verify this sign-in token as the service would (- = stdin)"
    )
    doctor.add_argument(
        "--smoke",
        action="store_true",
        help="send one test message through each agent workflow (not stored)",
    )
    doctor.set_defaults(func=cmd_doctor)
    migrate = sub.add_parser(
        "migrate",
        help="make an Agent Builder export (Agents SDK, Python) an agent workflow of this broker",
    )
    migrate.add_argument("export", metavar="EXPORT.py", help="the exported file (left unchanged)")
    migrate.add_argument("--name", help="the workflow's name (default: from the file name)")
    migrate.add_argument(
        "--no-smoke", action="store_true", help="skip the one test message through the model"
    )
    migrate.set_defaults(func=cmd_migrate)
    add_usage_parser(sub)  # chatkit-broker usage (backends/agent/usage_report.py)
    from .keys_cli import add_parsers

    add_parsers(sub)  # keys, webhooks (back ends as callers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "workers", 1) < 1 or getattr(args, "ttl", 1) < 1:
        parser.error("--workers and --ttl must be at least 1")
    if not 0 < getattr(args, "timeout", 1) <= 600:
        parser.error("--timeout must be between 0 and 600 seconds")
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
