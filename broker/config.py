"""Configuration: environment variables (+ ``.env`` + a workflow TOML file) parsed once.

``load_settings`` takes an explicit mapping rather than reading ``os.environ`` so tests and
the CLI decide exactly what the broker sees, and it collects *every* problem before failing,
because an operator fixing a deploy wants the whole list, not one error per restart.

What each variable is, is declared once in ``settings.Environment``; what each workflow kind
accepts, in its own model (``backends/<kind>/workflow.py``), found through the registry of kinds.
This module only adds the rules that span several variables or kinds.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import ValidationError

from .backends import KINDS, kind_of, specs_for
from .declare import closest, problems_from
from .loopback import LOOPBACK_HOSTS
from .settings import (
    API_KEY_VARIABLES,
    ASYMMETRIC_ALGS,
    DEFAULT_BASE_URL,
    DEFAULT_CHATKIT_JS_URL,
    HMAC_ALGS,
    MIN_HMAC_SECRET_BYTES,
    AgentOptions,
    ConfigError,
    DatabaseURLError,
    Environment,
    JWTSettings,
    Settings,
    api_key_in_effect,
    parse_rate,
    resolve_database_url,
)
from .workflow import NAME_RE, Primitive, Workflow

__all__ = [
    "API_KEY_VARIABLES",
    "DEFAULT_BASE_URL",
    "DEFAULT_CHATKIT_JS_URL",
    "KIND_KEYS",
    "MIN_HMAC_SECRET_BYTES",
    "MOCK_DEMO_WORKFLOWS",
    "ConfigError",
    "JWTSettings",
    "Primitive",
    "Settings",
    "Workflow",
    "api_key_in_effect",
    "kind_of",
    "load_settings",
    "parse_rate",
    "read_dotenv",
    "read_environment",
]

#: kind → the key that names its target in the workflow file (``id``, ``server``, ``agent``)
KIND_KEYS = {kind: spec.workflow.target_key for kind, spec in KINDS.items() if spec.workflow}
SERVED_KINDS = frozenset(KIND_KEYS)
DEFAULT_DOMAIN_KEY: str = Environment.model_fields["chatkit_domain_key"].default

JWT_KEYS = ("jwt_secret", "jwt_public_key", "jwt_jwks_url")

MOCK_DEMO_WORKFLOWS = (
    Workflow(name="topic-generation", label="Topic generation", id="wf_mock_topic_generation"),
    Workflow(name="post-writer", label="Post writer", id="wf_mock_post_writer"),
)


def read_dotenv(cwd: Path | None = None) -> dict[str, str]:
    """The values written in ``./.env`` itself, whatever the environment says."""
    path = (cwd or Path.cwd()) / ".env"
    if not path.is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def read_environment(cwd: Path | None = None) -> tuple[dict[str, str], frozenset[str]]:
    """The process environment over ``.env`` (the real environment wins).

    Also returns which variables came from ``.env``, so ``doctor`` can say where a key came from.
    """
    from_file = read_dotenv(cwd)
    merged = {**from_file, **os.environ}
    return merged, frozenset(k for k in from_file if k not in os.environ)


def read_variables(env: Mapping[str, str], problems: list[str]) -> tuple[Environment, set[str]]:
    """Every declared variable, validated; each refused one added to ``problems`` by name and
    left at its default (returned too, so no rule reports it again as missing)."""
    values, source = Environment.read(env)
    try:
        return Environment.from_values(values, source), set()
    except ValidationError as exc:

        def name_of(loc: tuple[Any, ...]) -> str:
            return source.get(str(loc[0])) or Environment.variables(str(loc[0]))[0] if loc else ""

        problems.extend(problems_from(exc, Environment, name_of))
        bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
        kept = {k: v for k, v in values.items() if k not in bad}
        return Environment.from_values(kept, source), bad


def load_settings(env: Mapping[str, str], *, cwd: Path | None = None) -> Settings:
    """Validate ``env`` into ``Settings`` or raise ``ConfigError`` listing every problem."""
    problems: list[str] = []
    warnings: list[str] = []
    e, refused = read_variables(env, problems)
    secret = lambda s: s.get_secret_value() if s is not None else None  # noqa: E731

    key_source, key = api_key_in_effect(env)
    workflows = _load_workflows(e, cwd, problems)
    if not workflows:
        if e.mock:
            workflows = list(MOCK_DEMO_WORKFLOWS)
        elif not any("BROKER_WORKFLOWS" in p for p in problems):
            problems.append(
                "BROKER_WORKFLOWS or BROKER_WORKFLOWS_FILE must allowlist at least one workflow"
            )
    specs = specs_for(False, workflows)
    if not e.mock:
        # gateway workflows alone need no OpenAI key; with no workflow parsed, assume they do
        callers = [s.kind for s in specs if s.calls_openai] if workflows else ["hosted"]
        if not key and callers:
            problems.append(
                "OPENAI_API_KEY (or CHATKIT_OPENAI_API_KEY) is required unless BROKER_MOCK=1 "
                f"({' and '.join(sorted(callers))} workflows call OpenAI)"
            )
        needed = any(s.broker_sessions for s in specs)
        if not e.session_secret and "session_secret" not in refused and needed:
            problems.append(
                "BROKER_SESSION_SECRET is required when a gateway or agent workflow is configured: "
                "the broker signs its own session secrets with it (32+ random bytes; "
                "a comma list rotates: the first signs, all verify)"
            )
    if e.mock and e.host not in LOOPBACK_HOSTS:
        problems.append(
            f"BROKER_HOST={e.host} is not a loopback address: mock mode only listens on "
            "127.0.0.1, localhost or ::1"
        )
    if e.redis_url and e.redis_url.get_secret_value().split("://")[0] not in (
        "redis",
        "rediss",
        "unix",
    ):
        problems.append("BROKER_REDIS_URL must be a redis://, rediss:// or unix:// URL")
    try:
        database_url = resolve_database_url(secret(e.database_url), mock=e.mock)
    except DatabaseURLError:  # already reported by the declaration
        database_url = resolve_database_url(None, mock=e.mock)

    jwt_settings = _jwt(e, problems, warnings)
    if not e.mock and not jwt_settings.configured and not refused & set(JWT_KEYS):
        problems.append(
            "live mode needs a way to verify sign-in tokens: set BROKER_JWT_SECRET, "
            "BROKER_JWT_PUBLIC_KEY or BROKER_JWT_JWKS_URL"
        )
    settings = Settings(
        mock=e.mock,
        mock_step=e.mock_step,
        openai_api_key=key,
        openai_api_key_source=key_source,
        openai_base_url=e.openai_base_url.rstrip("/"),
        openai_organization=e.openai_organization,
        openai_project=e.openai_project,
        workflows=tuple(workflows),
        jwt=jwt_settings,
        host=e.host,
        port=e.port,
        allowed_origins=e.allowed_origins,
        trusted_proxies=e.trusted_proxies,
        rate_limit=e.rate_limit,
        ip_rate_limit=e.ip_rate_limit,
        redis_url=secret(e.redis_url),
        redis_prefix=e.redis_prefix,
        upstream_timeout=e.upstream_timeout,
        upstream_retries=e.upstream_retries,
        chatkit_js_url=e.chatkit_js_url,
        test_page=e.test_page,
        log_format=e.log_format or ("text" if os.isatty(2) else "json"),
        log_level=e.log_level,
        session_secrets=tuple(k.get_secret_value() for k in e.session_secret),
        chatkit_domain_key=e.chatkit_domain_key,
        assertion_key=secret(e.assertion_key),
        assertion_previous_keys=tuple(k.get_secret_value() for k in e.assertion_previous_keys),
        assertion_secret=secret(e.assertion_secret),
        public_url=e.public_url,
        gateway_strip_headers=e.gateway_strip_headers,
        agent=AgentOptions(database_url, e.agent_tracing, e.run_timeout),
        environment=e,
    )
    if not e.mock:
        for spec in specs:
            if spec.check is not None:
                spec.check(settings, workflows, cwd, problems, warnings)
    if problems:
        raise ConfigError(problems)
    return dataclasses.replace(settings, warnings=tuple(warnings))


def _jwt(e: Environment, problems: list[str], warnings: list[str]) -> JWTSettings:
    """The verification keys and the algorithms each allows (the key decides, never a token)."""
    secret = e.jwt_secret.get_secret_value() if e.jwt_secret else None
    public_key = e.jwt_public_key.get_secret_value() if e.jwt_public_key else None
    if public_key and public_key.startswith("@"):
        try:
            public_key = Path(public_key[1:]).read_text()
        except OSError as exc:
            problems.append(f"BROKER_JWT_PUBLIC_KEY: cannot read {public_key[1:]}: {exc.strerror}")
            public_key = None
    public_algs = _algorithms_for_pem(public_key, problems) if public_key else ()
    jwks_url = e.jwt_jwks_url
    if public_key and jwks_url:
        problems.append("set only one of BROKER_JWT_PUBLIC_KEY and BROKER_JWT_JWKS_URL")
    if e.jwt_algorithms:
        hmac_algs = tuple(a for a in e.jwt_algorithms if a in HMAC_ALGS)
        asym_algs = tuple(a for a in e.jwt_algorithms if a in ASYMMETRIC_ALGS)
        if secret and not hmac_algs:
            problems.append("BROKER_JWT_ALGORITHMS names no HS* algorithm for BROKER_JWT_SECRET")
        if (public_key or jwks_url) and not asym_algs:
            problems.append(
                "BROKER_JWT_ALGORITHMS names no RS/PS/ES/EdDSA algorithm for the public key(s)"
            )
    else:
        hmac_algs = _hmac_defaults(secret)
        asym_algs = public_algs if public_key else (ASYMMETRIC_ALGS if jwks_url else ())
    if (secret or public_key or jwks_url) and not e.jwt_audience:
        warnings.append(
            "BROKER_JWT_AUDIENCE is not set: tokens that carry an 'aud' claim will be refused "
            "(Supabase: set it to 'authenticated')"
        )
    return JWTSettings(
        secret=secret,
        public_key=public_key,
        jwks_url=jwks_url,
        hmac_algorithms=hmac_algs if secret else (),
        asymmetric_algorithms=asym_algs if (public_key or jwks_url) else (),
        audience=e.jwt_audience,
        issuer=e.jwt_issuer,
        leeway=e.jwt_leeway,
        user_claim=e.jwt_user_claim,
        max_age=e.jwt_max_age,
        jwks_timeout=e.jwks_timeout,
        jwks_cooldown=e.jwks_cooldown,
        jwks_max_age=e.jwks_max_age,
    )


def _hmac_defaults(secret: str | None) -> tuple[str, ...]:
    """HS256, plus HS384/HS512 only when the secret is as long as their hash (RFC 7518 §3.2)."""
    if not secret:
        return ()
    size = len(secret.encode())
    return tuple(alg for alg, need in (("HS256", 32), ("HS384", 48), ("HS512", 64)) if size >= need)


def _algorithms_for_pem(pem: str, problems: list[str]) -> tuple[str, ...]:
    """The algorithms a PEM public key can verify: its kind decides, never a token header."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        problems.append(
            "BROKER_JWT_PUBLIC_KEY is not a PEM public key (-----BEGIN PUBLIC KEY-----)"
        )
        return ()
    if isinstance(key, rsa.RSAPublicKey):
        return ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
    if isinstance(key, ec.EllipticCurvePublicKey):
        by_curve = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        alg = by_curve.get(key.curve.name)
        if alg:
            return (alg,)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ("EdDSA",)
    problems.append(
        "BROKER_JWT_PUBLIC_KEY: unsupported key type (use RSA, EC P-256/384/521 or Ed25519)"
    )
    return ()


def _load_workflows(e: Environment, cwd: Path | None, problems: list[str]) -> list[Workflow]:
    """``BROKER_WORKFLOWS`` (name=target, the kind read off the target's shape) and the
    ``BROKER_WORKFLOWS_FILE`` tables (the kind chosen by which of id/server/agent is present)."""
    workflows: dict[str, Workflow] = {}
    for item in [p.strip() for p in (e.workflows or "").split(",") if p.strip()]:
        name, sep, value = (p.strip() for p in item.partition("="))
        if not sep:
            problems.append(
                f"BROKER_WORKFLOWS: {item!r} must be name=wf_…, name=https://… or name=module:attr"
            )
            continue
        wf = _workflow_from_shorthand(name, value, problems)
        if wf is not None:
            if name in workflows:
                problems.append(f"BROKER_WORKFLOWS: workflow {name!r} is listed twice")
            workflows[name] = wf

    if e.workflows_file:
        file = e.workflows_file
        path = Path(file) if Path(file).is_absolute() else (cwd or Path.cwd()) / file
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            problems.append(f"BROKER_WORKFLOWS_FILE: cannot read {file}: {exc.strerror}")
            data = {}
        except tomllib.TOMLDecodeError as exc:
            problems.append(f"BROKER_WORKFLOWS_FILE: {file} is not valid TOML: {exc}")
            data = {}
        table = data.get("workflows", {})
        if not isinstance(table, dict):
            problems.append("BROKER_WORKFLOWS_FILE: [workflows] must be a table")
            table = {}
        for name, options in table.items():
            wf = workflow_from_table(name, options, problems)
            if wf is None:
                continue
            if name in workflows:
                problems.append(
                    f"workflow {name!r} is defined in both BROKER_WORKFLOWS and BROKER_WORKFLOWS_FILE"
                )
                continue
            workflows[name] = wf

    ids: dict[str, str] = {}
    for wf in workflows.values():
        if wf.id is None:
            continue
        if wf.id in ids:
            problems.append(f"workflows {ids[wf.id]!r} and {wf.name!r} share the id {wf.id}")
        ids[wf.id] = wf.name
    return list(workflows.values())


def _workflow_from_shorthand(name: str, value: str, problems: list[str]) -> Workflow | None:
    kind = kind_of(value)
    if kind is None:
        problems.append(
            f"BROKER_WORKFLOWS: workflow {name!r} must name a hosted workflow (wf_…), a ChatKit "
            f"server (https://…) or an agent (package.module:attr), got {value[:80]!r}"
        )
        return None
    model = KINDS[kind].workflow
    assert model is not None
    named = _check_name("BROKER_WORKFLOWS", name, problems)
    try:
        wf = model.model_validate({"name": named, model.target_key: value})
        return wf if named == name else None
    except ValidationError as exc:
        where = f"BROKER_WORKFLOWS: workflow {name!r}"
        problems.extend(
            problems_from(exc, model, lambda loc: f"{where} {'.'.join(map(str, loc))}".rstrip())
        )
        return None


def workflow_from_table(name: str, options: Any, problems: list[str]) -> Workflow | None:
    """One ``[workflows.<name>]`` table as its kind's model; the kind is the one whose target
    key (``id``, ``server``, ``agent``) the table holds."""
    where = f"BROKER_WORKFLOWS_FILE [workflows.{name}]"
    if not isinstance(options, dict):
        problems.append(f"{where} must be a table")
        return None
    targets = {kind: spec.workflow.target_key for kind, spec in KINDS.items() if spec.workflow}
    named = [kind for kind, key in targets.items() if key in options]
    if len(named) != 1:
        keys = " or ".join(f"{key} = …" for key in targets.values())
        found = ", ".join(targets[k] for k in named)
        problems.append(
            f"{where}: name exactly one backend with {keys}"
            + (f" (it names {found})" if named else " (it names none)")
        )
        return None
    kind = named[0]
    model = KINDS[kind].workflow
    assert model is not None

    def unknown(loc: tuple[Any, ...]) -> str:
        key = ".".join(map(str, loc))
        other = [k for k, s in KINDS.items() if s.workflow and loc[-1] in s.workflow.model_fields]
        if len(loc) == 1 and other:
            return f"{where}: {key!r} is an option of {other[0]} workflows, not of {kind} ones"
        fields = _fields_at(model, loc[:-1])
        near = closest(str(loc[-1]), fields)
        hint = f" (did you mean {near!r}?)" if near else f" (known: {', '.join(sorted(fields))})"
        what = f"{'.'.join(map(str, loc[:-1]))} option" if len(loc) > 1 else "option"
        return f"{where}: unknown {what} {str(loc[-1])!r}{hint}"

    named = _check_name(where, name, problems)
    try:
        wf = model.model_validate({**options, "name": named})
        return wf if named == name else None
    except ValidationError as exc:
        problems.extend(
            problems_from(
                exc,
                model,
                lambda loc: f"{where}: {'.'.join(map(str, loc))}" if loc else where,
                unknown=unknown,
            )
        )
        return None


def _check_name(where: str, name: str, problems: list[str]) -> str:
    """The name if it is valid, else a placeholder (the problem added) so that the rest of the
    workflow is still checked."""
    if NAME_RE.fullmatch(name):
        return name
    problems.append(f"{where}: workflow name {name!r} must be 1-64 of a-z 0-9 _ -")
    return "invalid-name"


def _fields_at(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """The keys a table at ``loc`` (under ``model``) accepts: for the closest-key hint."""
    from typing import get_args

    current = model
    for part in loc:
        info = current.model_fields.get(part)
        if info is None:
            return []
        current = next(
            (
                a
                for a in (info.annotation, *get_args(info.annotation))
                if hasattr(a, "model_fields")
            ),
            None,
        )
        if current is None:
            return []
    return [k for k in current.model_fields if k not in ("name", "kind")]
