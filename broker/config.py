"""Configuration: environment variables (+ ``.env`` + a workflow TOML file) parsed once.

``load_settings`` takes an explicit mapping rather than reading ``os.environ`` so tests and
the CLI decide exactly what the broker sees, and it collects *every* problem before failing,
because an operator fixing a deploy wants the whole list, not one error per restart.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from dotenv import dotenv_values

from .loopback import LOOPBACK_HOSTS

if TYPE_CHECKING:
    from .backends.agent.options import AgentOptions

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_CHATKIT_JS_URL = "https://cdn.platform.openai.com/deployments/chatkit/chatkit.js"
MIN_HMAC_SECRET_BYTES = 32
MAX_STATE_VARIABLES = 64

_NAME_RE = re.compile(r"[a-z0-9_-]{1,64}")
_ID_RE = re.compile(r"wf_[A-Za-z0-9_-]{1,128}")
# package.module:attr, or a file (an Agent Builder export dropped in): path/to/file.py:attr
_AGENT_RE = re.compile(
    r"([A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*|[^:\s]+\.py):[A-Za-z_][A-Za-z0-9_.]*"
)
_REDIS_PREFIX_RE = re.compile(r"[A-Za-z0-9:._-]{1,64}")
_RATE_RE = re.compile(r"\s*(\d+)\s*(?:/|\s+per\s+)\s*(\d+\s+)?(second|minute|hour|day)s?\s*")
_HMAC_ALGS = ("HS256", "HS384", "HS512")
_ASYMMETRIC_ALGS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip
_KNOWN_ALGS = frozenset(_HMAC_ALGS + _ASYMMETRIC_ALGS)

Primitive = str | int | float | bool


class ConfigError(Exception):
    """Raised with every configuration problem found, each naming its variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class FileUpload:
    enabled: bool = False
    max_file_size: int | None = None
    max_files: int | None = None


@dataclass(frozen=True)
class History:
    enabled: bool = True
    recent_threads: int | None = None


# The backends a workflow can name, and the key that names each in the workflow file.
KIND_KEYS = {"hosted": "id", "gateway": "server", "agent": "agent"}
# The kinds this broker can serve; a workflow of another kind is a configuration error.
SERVED_KINDS = frozenset({"hosted", "gateway", "agent"})
DEFAULT_DOMAIN_KEY = "local-dev"


@dataclass(frozen=True)
class Workflow:
    """One allowlisted workflow: its backend (hosted, gateway or agent) and that backend's options.

    ``id`` is set for hosted workflows only, ``server`` for gateways, ``agent`` for agents;
    ``kind`` says which, so nothing has to guess from which field is filled.
    """

    name: str
    label: str
    kind: str = "hosted"
    id: str | None = None
    server: str | None = None
    agent: str | None = None
    version: str | None = None
    expires_after: int | None = None
    max_requests_per_minute: int | None = None
    tracing: bool | None = None
    automatic_thread_titling: bool | None = None
    file_upload: FileUpload | None = None
    history: History | None = None
    # claim name -> required value (a tuple means "any of these")
    require: tuple[tuple[str, Primitive | tuple[Primitive, ...]], ...] = ()
    # variable -> literal value, or ("claim", name) to copy a token claim
    state_variables: tuple[tuple[str, Primitive | tuple[str, str]], ...] = ()
    # gateway and agent workflows: messages (streaming ChatKit requests) per user per minute
    max_messages_per_minute: int | None = None
    # gateway workflows: who the signed identity is for, and what it carries
    audience: str | None = None
    forward_claims: tuple[str, ...] = ()
    assertion: str = "es256"
    connect_timeout: float = 5.0
    idle_timeout: float = 60.0
    # agent workflows: the refusal shown when a guardrail stops a message ({guardrail}: its kind)
    guardrail_message: str | None = None

    @property
    def target(self) -> str:
        """What serves it: the ``wf_`` id, the server URL or the agent's import path."""
        return self.id or self.server or self.agent or ""


@dataclass(frozen=True)
class JWTSettings:
    secret: str | None = field(default=None, repr=False)
    public_key: str | None = field(default=None, repr=False)
    jwks_url: str | None = None
    hmac_algorithms: tuple[str, ...] = ()
    asymmetric_algorithms: tuple[str, ...] = ()
    audience: str | None = None
    issuer: str | None = None
    leeway: int = 30
    user_claim: str = "sub"
    # the longest lifetime a token may claim: exp at most this far from now and from its iat
    max_age: int = 86400
    # the JWKS cache: fetch timeout, cooldown between refetches, refetch age
    jwks_timeout: float = 3.0
    jwks_cooldown: float = 60.0
    jwks_max_age: float = 600.0

    @property
    def configured(self) -> bool:
        return bool(self.secret or self.public_key or self.jwks_url)


@dataclass(frozen=True)
class Settings:
    """Everything the broker needs, validated. Secrets are excluded from ``repr``."""

    mock: bool = False
    openai_api_key: str | None = field(default=None, repr=False)
    openai_api_key_source: str | None = None
    openai_base_url: str = DEFAULT_BASE_URL
    openai_organization: str | None = None
    openai_project: str | None = None
    workflows: tuple[Workflow, ...] = ()
    jwt: JWTSettings = field(default_factory=JWTSettings)
    host: str = "127.0.0.1"
    port: int = 8000
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    rate_limit: str = "30/minute"
    ip_rate_limit: str = "600/minute"
    redis_url: str | None = field(default=None, repr=False)
    redis_prefix: str = "chatkit-broker:"
    upstream_timeout: float = 10.0
    upstream_retries: int = 2
    chatkit_js_url: str = DEFAULT_CHATKIT_JS_URL
    test_page: bool = True
    log_format: str = "text"
    log_level: str = "info"
    # keys of the broker's own cks_ session secrets: the first signs, all verify
    session_secrets: tuple[str, ...] = field(default=(), repr=False)
    chatkit_domain_key: str = DEFAULT_DOMAIN_KEY
    # gateway workflows: the signed identity each proxied request carries (PEM texts, read)
    assertion_key: str | None = field(default=None, repr=False)
    assertion_previous_keys: tuple[str, ...] = field(default=(), repr=False)
    assertion_secret: str | None = field(default=None, repr=False)
    public_url: str | None = None
    gateway_strip_headers: tuple[str, ...] = ()
    # agent workflows (and mock mode's threads): database, tracing, run timeout
    agent: AgentOptions | None = None  # None: the defaults (see backends/agent/options.py)
    warnings: tuple[str, ...] = ()

    def workflow(self, ref: str) -> Workflow | None:
        """Find an allowlisted workflow by its name or its ``wf_`` id."""
        for wf in self.workflows:
            if ref == wf.name or (wf.id is not None and ref == wf.id):
                return wf
        return None

    def workflow_named(self, name: str) -> Workflow | None:
        """The allowlisted workflow called ``name`` (ids do not count: URLs carry names)."""
        for wf in self.workflows:
            if wf.name == name:
                return wf
        return None


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


def _flag(value: str | None) -> bool | None:
    if value is None or value.strip() == "":
        return None
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


def parse_rate(value: str) -> tuple[int, int]:
    """``"30/minute"`` → (30, 60): the count and the window in seconds."""
    m = _RATE_RE.fullmatch(value)
    if not m or int(m.group(1)) < 1:
        raise ValueError(value)
    multiple = int(m.group(2) or 1)
    unit = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}[m.group(3)]
    return int(m.group(1)), multiple * unit


# The variables an OpenAI API key is read from, the first set one winning (api_key_in_effect).
API_KEY_VARIABLES = ("CHATKIT_OPENAI_API_KEY", "OPENAI_API_KEY")


def api_key_in_effect(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(variable, key) of the API key the broker uses: ``CHATKIT_OPENAI_API_KEY`` wins.

    Public so ``doctor`` names the same key even when the rest of the configuration is invalid.
    """

    def get(name: str) -> str | None:
        return (env.get(name) or "").strip() or None

    if key := get("CHATKIT_OPENAI_API_KEY"):
        return "CHATKIT_OPENAI_API_KEY", key
    if key := get("OPENAI_API_KEY"):
        return "OPENAI_API_KEY", key
    return None, None


def load_settings(env: Mapping[str, str], *, cwd: Path | None = None) -> Settings:
    """Validate ``env`` into ``Settings`` or raise ``ConfigError`` listing every problem."""
    problems: list[str] = []
    warnings: list[str] = []
    get = lambda name: (env.get(name) or "").strip() or None  # noqa: E731

    try:
        mock = bool(_flag(get("BROKER_MOCK")))
    except ValueError:
        problems.append("BROKER_MOCK must be 1 or 0")
        mock = False

    key_source, key = api_key_in_effect(env)

    base_url = (get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    if urlsplit(base_url).scheme not in ("http", "https") or not urlsplit(base_url).netloc:
        problems.append(f"OPENAI_BASE_URL must be an http(s) URL, got {base_url!r}")

    workflows = _load_workflows(env, cwd, problems)
    if not workflows:
        if mock:
            workflows = list(MOCK_DEMO_WORKFLOWS)
        elif not any("BROKER_WORKFLOWS" in p for p in problems):
            problems.append(
                "BROKER_WORKFLOWS or BROKER_WORKFLOWS_FILE must allowlist at least one workflow"
            )
    kinds = {wf.kind for wf in workflows}
    if not mock:
        for wf in workflows:
            if wf.kind not in SERVED_KINDS:
                problems.append(
                    f"workflow {wf.name!r} is a {wf.kind} workflow "
                    f"({KIND_KEYS[wf.kind]} = {wf.target!r}), which this broker cannot serve yet"
                )
        _check_agents(workflows, cwd, problems)
        # gateway workflows alone need no OpenAI key; with no workflow parsed, assume they do
        callers = sorted(kinds & {"hosted", "agent"}) if kinds else ["hosted"]
        if not key and callers:
            problems.append(
                "OPENAI_API_KEY (or CHATKIT_OPENAI_API_KEY) is required unless BROKER_MOCK=1 "
                f"({' and '.join(callers)} workflows call OpenAI)"
            )
    session_secrets = _load_session_secrets(
        get("BROKER_SESSION_SECRET"),
        needed=not mock and bool(kinds - {"hosted"}),
        problems=problems,
    )
    domain_key = get("BROKER_CHATKIT_DOMAIN_KEY") or DEFAULT_DOMAIN_KEY
    gateway = _load_gateway(get, workflows, mock, problems, warnings)
    from .backends.agent.options import load_agent_options  # here: backends imports config

    agent_options = load_agent_options(get, mock=mock, problems=problems)

    jwt_settings = _load_jwt(env, get, problems, warnings)
    if not mock and not jwt_settings.configured:
        problems.append(
            "live mode needs a way to verify sign-in tokens: set BROKER_JWT_SECRET, "
            "BROKER_JWT_PUBLIC_KEY or BROKER_JWT_JWKS_URL"
        )

    host = get("BROKER_HOST") or "127.0.0.1"
    port = (
        _int(get("BROKER_PORT") or get("PORT") or "8000", "BROKER_PORT", problems, 1, 65535) or 8000
    )
    if mock and host not in LOOPBACK_HOSTS:
        problems.append(
            f"BROKER_HOST={host} is not a loopback address: mock mode only listens on "
            "127.0.0.1, localhost or ::1"
        )

    for name, default in (
        ("BROKER_RATE_LIMIT", "30/minute"),
        ("BROKER_IP_RATE_LIMIT", "600/minute"),
    ):
        try:
            parse_rate(get(name) or default)
        except ValueError:
            problems.append(f"{name} must look like '30/minute' (count/second|minute|hour|day)")

    timeout = _float(
        get("BROKER_UPSTREAM_TIMEOUT") or "10", "BROKER_UPSTREAM_TIMEOUT", problems, 0.1, 120
    )
    retries = _int(get("BROKER_UPSTREAM_RETRIES") or "2", "BROKER_UPSTREAM_RETRIES", problems, 0, 2)

    js_url = get("BROKER_CHATKIT_JS_URL") or DEFAULT_CHATKIT_JS_URL
    if urlsplit(js_url).scheme not in ("http", "https"):
        problems.append("BROKER_CHATKIT_JS_URL must be an http(s) URL")

    try:
        test_page = _flag(get("BROKER_TEST_PAGE"))
    except ValueError:
        problems.append("BROKER_TEST_PAGE must be 1 or 0")
        test_page = True
    log_format = (get("BROKER_LOG_FORMAT") or "").lower() or None
    if log_format not in (None, "json", "text"):
        problems.append("BROKER_LOG_FORMAT must be json or text")
    log_level = (get("BROKER_LOG_LEVEL") or "info").lower()
    if log_level not in ("debug", "info", "warning", "error", "critical"):
        problems.append("BROKER_LOG_LEVEL must be debug, info, warning, error or critical")

    origins = _csv(get("BROKER_ALLOWED_ORIGINS"))
    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            problems.append(
                f"BROKER_ALLOWED_ORIGINS: {origin!r} is not an origin like https://app.example.com"
            )

    redis_url = get("BROKER_REDIS_URL")
    if redis_url and urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
        problems.append("BROKER_REDIS_URL must be a redis://, rediss:// or unix:// URL")
    redis_prefix = get("BROKER_REDIS_PREFIX") or "chatkit-broker:"
    if not _REDIS_PREFIX_RE.fullmatch(redis_prefix):
        problems.append("BROKER_REDIS_PREFIX must be 1-64 of A-Za-z0-9:._-")
    trusted_proxies = _csv(get("BROKER_TRUSTED_PROXIES"))
    for proxy in trusted_proxies:
        if not _is_address_or_network(proxy):
            problems.append(
                f"BROKER_TRUSTED_PROXIES: {proxy!r} is not an IP address or network "
                "(like 10.0.0.5 or 10.0.0.0/8); '*' is refused because it lets any client "
                "choose its own address"
            )

    if problems:
        raise ConfigError(problems)
    return Settings(
        mock=mock,
        openai_api_key=key,
        openai_api_key_source=key_source,
        openai_base_url=base_url,
        openai_organization=get("OPENAI_ORGANIZATION"),
        openai_project=get("OPENAI_PROJECT"),
        workflows=tuple(workflows),
        jwt=jwt_settings,
        host=host,
        port=port,
        allowed_origins=tuple(o.rstrip("/") for o in origins),
        trusted_proxies=trusted_proxies,
        rate_limit=get("BROKER_RATE_LIMIT") or "30/minute",
        ip_rate_limit=get("BROKER_IP_RATE_LIMIT") or "600/minute",
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        upstream_timeout=timeout or 10.0,
        upstream_retries=2 if retries is None else retries,
        chatkit_js_url=js_url,
        test_page=True if test_page is None else test_page,
        log_format=log_format or ("text" if os.isatty(2) else "json"),
        log_level=log_level,
        session_secrets=session_secrets,
        chatkit_domain_key=domain_key,
        **gateway,
        agent=agent_options,
        warnings=tuple(warnings),
    )


def _check_agents(workflows: list[Workflow], cwd: Path | None, problems: list[str]) -> None:
    """Import each agent workflow's module now, so a typo or a missing dependency is a
    configuration error naming the workflow, not a failure at the first chat."""
    agents = [wf for wf in workflows if wf.kind == "agent" and wf.agent]
    if not agents:
        return
    from .backends.agent.targets import TargetError, load_target  # the Agents SDK: only if needed

    for wf in agents:
        try:
            load_target(wf.agent or "", base_dir=cwd)
        except TargetError as exc:
            problems.append(f"workflow {wf.name!r}: {exc}")


def _load_session_secrets(raw: str | None, *, needed: bool, problems: list[str]) -> tuple[str, ...]:
    """``BROKER_SESSION_SECRET``: a comma list of keys, the first signing, all verifying."""
    keys = _csv(raw)
    if not keys:
        if needed:
            problems.append(
                "BROKER_SESSION_SECRET is required when a gateway or agent workflow is configured: "
                "the broker signs its own session secrets with it (32+ random bytes; "
                "a comma list rotates: the first signs, all verify)"
            )
        return ()
    for index, key in enumerate(keys, 1):
        if len(key.encode()) < MIN_HMAC_SECRET_BYTES:
            problems.append(
                f"BROKER_SESSION_SECRET: key {index} is shorter than {MIN_HMAC_SECRET_BYTES} bytes"
            )
    return keys


_HEADER_NAME_RE = re.compile(r"[A-Za-z0-9_-]+\*?")


def _load_gateway(
    get: Any, workflows: list[Workflow], mock: bool, problems: list[str], warnings: list[str]
) -> dict[str, Any]:
    """The assertion keys, the broker's public URL and the extra headers gateways strip."""
    from .assertion import load_previous_key, load_private_key  # cryptography, lazily

    gateways = [wf for wf in workflows if wf.kind == "gateway"] if not mock else []
    key = get("BROKER_ASSERTION_KEY")
    if key:
        try:
            load_private_key(key)
        except ValueError as exc:
            problems.append(f"BROKER_ASSERTION_KEY: {exc}")
    elif any(wf.assertion == "es256" for wf in gateways):
        warnings.append(
            "BROKER_ASSERTION_KEY is not set: gateway assertions are signed with a key made at "
            "start-up, so every instance (and every restart) has its own and backends must "
            "refetch the JWKS; set it (a P-256 PEM, or @path) for production"
        )
    previous = _csv(get("BROKER_ASSERTION_PREVIOUS_KEYS"))
    for index, text in enumerate(previous, 1):
        try:
            load_previous_key(text)
        except ValueError as exc:
            problems.append(f"BROKER_ASSERTION_PREVIOUS_KEYS: key {index}: {exc}")
    secret = get("BROKER_ASSERTION_SECRET")
    if secret and len(secret.encode()) < MIN_HMAC_SECRET_BYTES:
        problems.append(f"BROKER_ASSERTION_SECRET is shorter than {MIN_HMAC_SECRET_BYTES} bytes")
    hs256 = [wf.name for wf in gateways if wf.assertion == "hs256"]
    if hs256 and not secret:
        problems.append(
            f"BROKER_ASSERTION_SECRET is required: workflow(s) {', '.join(hs256)} use "
            'assertion = "hs256" (a shared secret of 32+ bytes the backend verifies with)'
        )
    public_url = get("BROKER_PUBLIC_URL")
    if public_url:
        parts = urlsplit(public_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            problems.append(
                "BROKER_PUBLIC_URL must be the broker's public http(s) URL, like https://chat.example.com"
            )
        public_url = public_url.rstrip("/")
    strip = _csv(get("BROKER_GATEWAY_STRIP_HEADERS"))
    for name in strip:
        if not _HEADER_NAME_RE.fullmatch(name):
            problems.append(
                f"BROKER_GATEWAY_STRIP_HEADERS: {name!r} is not a header name (or Prefix-*)"
            )
    return {
        "assertion_key": key,
        "assertion_previous_keys": previous,
        "assertion_secret": secret,
        "public_url": public_url,
        "gateway_strip_headers": strip,
    }


def _is_address_or_network(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def _int(raw: str, name: str, problems: list[str], lo: int, hi: int | None = None) -> int | None:
    try:
        value = int(raw)
    except ValueError:
        problems.append(f"{name} must be a whole number, got {raw!r}")
        return None
    if value < lo or (hi is not None and value > hi):
        problems.append(
            f"{name} must be between {lo} and {hi}" if hi is not None else f"{name} must be >= {lo}"
        )
        return None
    return value


def _float(raw: str, name: str, problems: list[str], lo: float, hi: float) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        problems.append(f"{name} must be a number of seconds, got {raw!r}")
        return None
    if not math.isfinite(value) or not lo <= value <= hi:
        problems.append(f"{name} must be between {lo} and {hi} seconds")
        return None
    return value


def _load_jwt(
    env: Mapping[str, str], get: Any, problems: list[str], warnings: list[str]
) -> JWTSettings:
    secret = get("BROKER_JWT_SECRET")
    if secret and len(secret.encode()) < MIN_HMAC_SECRET_BYTES:
        problems.append(
            f"BROKER_JWT_SECRET is shorter than {MIN_HMAC_SECRET_BYTES} bytes: use a long random secret"
        )
    public_key = get("BROKER_JWT_PUBLIC_KEY")
    if public_key and public_key.startswith("@"):
        try:
            public_key = Path(public_key[1:]).read_text()
        except OSError as exc:
            problems.append(f"BROKER_JWT_PUBLIC_KEY: cannot read {public_key[1:]}: {exc.strerror}")
            public_key = None
    public_algs: tuple[str, ...] = ()
    if public_key:
        public_algs = _algorithms_for_pem(public_key, problems)
    jwks_url = get("BROKER_JWT_JWKS_URL")
    if jwks_url and urlsplit(jwks_url).scheme not in ("http", "https"):
        problems.append("BROKER_JWT_JWKS_URL must be an http(s) URL")
    if public_key and jwks_url:
        problems.append("set only one of BROKER_JWT_PUBLIC_KEY and BROKER_JWT_JWKS_URL")

    configured_algs = _csv(get("BROKER_JWT_ALGORITHMS"))
    for alg in configured_algs:
        if alg not in _KNOWN_ALGS:
            problems.append(
                f"BROKER_JWT_ALGORITHMS: {alg!r} is not a supported algorithm ('none' never is)"
            )
    if configured_algs:
        hmac_algs = tuple(a for a in configured_algs if a in _HMAC_ALGS)
        asym_algs = tuple(a for a in configured_algs if a in _ASYMMETRIC_ALGS)
        if secret and not hmac_algs:
            problems.append("BROKER_JWT_ALGORITHMS names no HS* algorithm for BROKER_JWT_SECRET")
        if (public_key or jwks_url) and not asym_algs:
            problems.append(
                "BROKER_JWT_ALGORITHMS names no RS/PS/ES/EdDSA algorithm for the public key(s)"
            )
    else:
        hmac_algs = _hmac_defaults(secret)
        asym_algs = public_algs if public_key else (_ASYMMETRIC_ALGS if jwks_url else ())

    leeway = _int(get("BROKER_JWT_LEEWAY") or "30", "BROKER_JWT_LEEWAY", problems, 0, 600)
    max_age = _int(
        get("BROKER_JWT_MAX_AGE") or "86400", "BROKER_JWT_MAX_AGE", problems, 60, 31_536_000
    )
    jwks_timeout = _float(
        get("BROKER_JWKS_TIMEOUT") or "3", "BROKER_JWKS_TIMEOUT", problems, 0.1, 30
    )
    jwks_cooldown = _float(
        get("BROKER_JWKS_COOLDOWN") or "60", "BROKER_JWKS_COOLDOWN", problems, 1, 3600
    )
    jwks_max_age = _float(
        get("BROKER_JWKS_MAX_AGE") or "600", "BROKER_JWKS_MAX_AGE", problems, 10, 86400
    )
    audience = get("BROKER_JWT_AUDIENCE")
    if (secret or public_key or jwks_url) and not audience:
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
        audience=audience,
        issuer=get("BROKER_JWT_ISSUER"),
        leeway=30 if leeway is None else leeway,
        user_claim=get("BROKER_JWT_USER_CLAIM") or "sub",
        max_age=86400 if max_age is None else max_age,
        jwks_timeout=jwks_timeout or 3.0,
        jwks_cooldown=jwks_cooldown or 60.0,
        jwks_max_age=jwks_max_age or 600.0,
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


def _load_workflows(
    env: Mapping[str, str], cwd: Path | None, problems: list[str]
) -> list[Workflow]:
    workflows: dict[str, Workflow] = {}
    for item in _csv(env.get("BROKER_WORKFLOWS")):
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

    file = (env.get("BROKER_WORKFLOWS_FILE") or "").strip()
    if file:
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
            wf = _workflow_from_toml(name, options, problems)
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


def kind_of(value: str) -> str | None:
    """The backend a ``BROKER_WORKFLOWS`` value names, by its shape: wf_…, http(s)://…, module:attr."""
    if value.startswith("wf_"):
        return "hosted"
    if "://" in value:
        return "gateway"
    if ":" in value:
        return "agent"
    return None


def _workflow_from_shorthand(name: str, value: str, problems: list[str]) -> Workflow | None:
    where = "BROKER_WORKFLOWS"
    kind = kind_of(value)
    ok = _check_name(where, name, problems)
    if kind is None:
        problems.append(
            f"{where}: workflow {name!r} must name a hosted workflow (wf_…), a ChatKit server "
            f"(https://…) or an agent (package.module:attr), got {value[:80]!r}"
        )
        return None
    if not _check_target(where, name, kind, value, problems) or not ok:
        return None
    return Workflow(name=name, label=name, kind=kind, **{_FIELD[kind]: value})


_FIELD = {"hosted": "id", "gateway": "server", "agent": "agent"}


def _check_name(where: str, name: str, problems: list[str]) -> bool:
    if not _NAME_RE.fullmatch(name):
        problems.append(f"{where}: workflow name {name!r} must be 1-64 of a-z 0-9 _ -")
        return False
    return True


def _check_target(where: str, name: str, kind: str, value: Any, problems: list[str]) -> bool:
    """The id, server URL or agent path of one workflow, checked for its kind."""
    if kind == "hosted":
        if isinstance(value, str) and _ID_RE.fullmatch(value):
            return True
        problems.append(
            f"{where}: workflow {name!r} id must be wf_ followed by 1-128 of A-Za-z0-9_-"
        )
    elif kind == "gateway":
        parts = urlsplit(value) if isinstance(value, str) else None
        if (
            parts is not None
            and parts.scheme in ("http", "https")
            and parts.hostname
            and not (parts.username or parts.password or parts.fragment)
        ):
            return True
        problems.append(
            f"{where}: workflow {name!r} server must be an http(s):// URL with a host "
            "(no credentials, no fragment), like https://chat.internal/chatkit"
        )
    else:
        if isinstance(value, str) and _AGENT_RE.fullmatch(value):
            return True
        problems.append(
            f"{where}: workflow {name!r} agent must be package.module:attr or path/file.py:attr "
            f"(an import path or a file, a colon, the attribute), got {str(value)[:80]!r}"
        )
    return False


_COMMON_KEYS = frozenset({"label", "require", "expires_after", "max_requests_per_minute"})
_KIND_OPTIONS = {
    "hosted": frozenset(
        {
            "id", "version", "tracing", "automatic_thread_titling", "file_upload", "history",
            "state_variables",
        }
    ),
    "gateway": frozenset(
        {
            "server", "audience", "forward_claims", "assertion", "connect_timeout",
            "idle_timeout", "max_messages_per_minute",
        }
    ),
    "agent": frozenset({"agent", "max_messages_per_minute", "guardrail_message"}),
}  # fmt: skip


def _workflow_from_toml(name: str, o: Any, problems: list[str]) -> Workflow | None:
    where = f"BROKER_WORKFLOWS_FILE [workflows.{name}]"
    if not isinstance(o, dict):
        problems.append(f"{where} must be a table")
        return None
    before = len(problems)
    _check_name(where, name, problems)
    named = [kind for kind, key in KIND_KEYS.items() if key in o]
    if len(named) != 1:
        keys = " or ".join(f"{key} = …" for key in KIND_KEYS.values())
        found = ", ".join(KIND_KEYS[k] for k in named)
        problems.append(
            f"{where}: name exactly one backend with {keys}"
            + (f" (it names {found})" if named else " (it names none)")
        )
        return None
    kind = named[0]
    _check_target(where, name, kind, o[KIND_KEYS[kind]], problems)
    for unknown in sorted(set(o) - _COMMON_KEYS - _KIND_OPTIONS[kind]):
        other = [k for k, keys in _KIND_OPTIONS.items() if unknown in keys]
        problems.append(
            f"{where}: {unknown!r} is an option of {other[0]} workflows, not of {kind} ones"
            if other
            else f"{where}: unknown option {unknown!r}"
        )

    def typed(key: str, kind: type | tuple[type, ...], what: str) -> Any:
        value = o.get(key)
        if value is not None and (
            not isinstance(value, kind) or (isinstance(value, bool) and kind is int)
        ):
            problems.append(f"{where}: {key} must be {what}")
            return None
        return value

    def bounded(table: dict, key: str, lo: int, hi: int | None, label: str) -> int | None:
        value = table.get(key)
        if value is None:
            return None
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or value < lo
            or (hi and value > hi)
        ):
            span = f"{lo}..{hi}" if hi else f">= {lo}"
            problems.append(f"{where}: {label} must be a whole number {span}")
            return None
        return value

    label = typed("label", str, "a string") or name
    version = typed("version", str, "a string")
    if version is not None and version.strip().lower() == "latest":
        problems.append(
            f'{where}: version = "latest" is refused (the API accepts it, then chats fail); '
            "omit version to use the latest deployed one, or pin a number"
        )
    expires_after = bounded(o, "expires_after", 1, 600, "expires_after (seconds)")
    rpm = bounded(o, "max_requests_per_minute", 1, None, "max_requests_per_minute")
    tracing = typed("tracing", bool, "true or false")
    titling = typed("automatic_thread_titling", bool, "true or false")

    file_upload = None
    fu = typed("file_upload", dict, "a table")
    if fu is not None:
        for k in set(fu) - {"enabled", "max_file_size", "max_files"}:
            problems.append(f"{where}: unknown file_upload option {k!r}")
        if not isinstance(fu.get("enabled", False), bool):
            problems.append(f"{where}: file_upload.enabled must be true or false")
        file_upload = FileUpload(
            enabled=bool(fu.get("enabled", False)),
            max_file_size=bounded(fu, "max_file_size", 1, 512, "file_upload.max_file_size (MB)"),
            max_files=bounded(fu, "max_files", 1, None, "file_upload.max_files"),
        )
    history = None
    hi = typed("history", dict, "a table")
    if hi is not None:
        for k in set(hi) - {"enabled", "recent_threads"}:
            problems.append(f"{where}: unknown history option {k!r}")
        if not isinstance(hi.get("enabled", True), bool):
            problems.append(f"{where}: history.enabled must be true or false")
        history = History(
            enabled=bool(hi.get("enabled", True)),
            recent_threads=bounded(hi, "recent_threads", 1, None, "history.recent_threads"),
        )

    require: list[tuple[str, Any]] = []
    for claim, want in (typed("require", dict, "a table of claim = value") or {}).items():
        if isinstance(want, list) and want and all(_is_primitive(v) for v in want):
            require.append((claim, tuple(want)))
        elif _is_primitive(want):
            require.append((claim, want))
        else:
            problems.append(
                f"{where}: require.{claim} must be a string, number, boolean or a list of them"
            )

    state: list[tuple[str, Any]] = []
    variables = typed("state_variables", dict, "a table") or {}
    if len(variables) > MAX_STATE_VARIABLES:
        problems.append(f"{where}: at most {MAX_STATE_VARIABLES} state_variables are allowed")
    for var, value in variables.items():
        if len(var) > 64:
            problems.append(
                f"{where}: state variable names are at most 64 characters ({var[:20]}…)"
            )
        if isinstance(value, str) and value.startswith("claim:") and len(value) > 6:
            state.append((var, ("claim", value[6:])))
        elif _is_primitive(value):
            state.append((var, value))
        else:
            problems.append(f"{where}: state_variables.{var} must be a string, number or boolean")

    mpm = bounded(o, "max_messages_per_minute", 1, None, "max_messages_per_minute")
    audience = typed("audience", str, "a string")
    guardrail_message = typed("guardrail_message", str, "a string")
    if guardrail_message is not None and not 1 <= len(guardrail_message.strip()) <= 500:
        problems.append(f"{where}: guardrail_message must be 1-500 characters")
    forward = typed("forward_claims", list, "a list of claim names") or []
    if not all(isinstance(c, str) and c for c in forward):
        problems.append(f"{where}: forward_claims must be a list of claim names")
        forward = []
    assertion = typed("assertion", str, '"es256" or "hs256"') or "es256"
    if assertion not in ("es256", "hs256"):
        problems.append(f'{where}: assertion must be "es256" or "hs256"')
    timeouts = {}
    for key, default in (("connect_timeout", 5.0), ("idle_timeout", 60.0)):
        value = o.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
            problems.append(f"{where}: {key} must be a number of seconds, 0 < s <= 3600")
            value = default
        timeouts[key] = float(value)

    if len(problems) > before:
        return None
    return Workflow(
        name=name,
        kind=kind,
        id=o.get("id"),
        server=o.get("server"),
        agent=o.get("agent"),
        max_messages_per_minute=mpm,
        audience=audience,
        guardrail_message=guardrail_message.strip() if guardrail_message else None,
        forward_claims=tuple(forward),
        assertion=assertion,
        connect_timeout=timeouts["connect_timeout"],
        idle_timeout=timeouts["idle_timeout"],
        label=label,
        version=version,
        expires_after=expires_after,
        max_requests_per_minute=rpm,
        tracing=tracing,
        automatic_thread_titling=titling,
        file_upload=file_upload,
        history=history,
        require=tuple(require),
        state_variables=tuple(state),
    )


def _is_primitive(value: Any) -> bool:
    return isinstance(value, str | int | bool) or (
        isinstance(value, float) and math.isfinite(value)
    )
