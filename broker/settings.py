"""Every environment variable the broker reads, declared once: name, type, default, bounds,
one line of documentation, secret or not.

``Environment`` is a pydantic model validated from the mapping it is given (tests pass a dict,
the CLI passes the environment over ``.env``): nothing here reads ``os.environ``. (Not a
pydantic-settings model: its sources were never used here, and importing it cost every
process 6.9 MB of RSS.)
A variable is ``BROKER_`` + the field's name in capitals unless the field names its own
(``validation_alias``). Parsing, ``chatkit-broker check``, doctor's configuration check,
``.env.example`` and ``docs/reference/configuration.md`` are all read off this class, so a new
setting is one field here (and, when it needs a rule across variables, a line in
``config.load_settings``).
"""

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
)
from pydantic.fields import FieldInfo

from .declare import EnvFlag, Says, csv, seconds, whole
from .workflow import Workflow

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_CHATKIT_JS_URL = "https://cdn.platform.openai.com/deployments/chatkit/chatkit.js"
DEFAULT_DATABASE_URL = "sqlite:///./chatkit-broker.sqlite3"
MEMORY_URL = "sqlite+aiosqlite://"
MIN_HMAC_SECRET_BYTES = 32
HMAC_ALGS = ("HS256", "HS384", "HS512")
ASYMMETRIC_ALGS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip

_RATE_RE = re.compile(r"\s*(\d+)\s*(?:/|\s+per\s+)\s*(\d+\s+)?(second|minute|hour|day)s?\s*")
_REDIS_PREFIX_RE = re.compile(r"[A-Za-z0-9:._-]{1,64}")
_HEADER_NAME_RE = re.compile(r"[A-Za-z0-9_-]+\*?")


def parse_rate(value: str) -> tuple[int, int]:
    """``"30/minute"`` → (30, 60): the count and the window in seconds."""
    m = _RATE_RE.fullmatch(value)
    if not m or int(m.group(1)) < 1:
        raise ValueError(value)
    multiple = int(m.group(2) or 1)
    unit = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}[m.group(3)]
    return int(m.group(1)), multiple * unit


def _rate(value: str) -> str:
    try:
        parse_rate(value)
    except ValueError:
        raise ValueError("must look like '30/minute' (count/second|minute|hour|day)") from None
    return value.strip()


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL, got {got}")
    return value


def _origins(values: tuple[str, ...]) -> tuple[str, ...]:
    bad = []
    for origin in values:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            bad.append(f"{origin!r} is not an origin like https://app.example.com")
    if bad:
        raise ValueError("\n".join(bad))
    return tuple(o.rstrip("/") for o in values)


def _networks(values: tuple[str, ...]) -> tuple[str, ...]:
    bad = []
    for proxy in values:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            bad.append(
                f"{proxy!r} is not an IP address or network (like 10.0.0.5 or 10.0.0.0/8); "
                "'*' is refused because it lets any client choose its own address"
            )
    if bad:
        raise ValueError("\n".join(bad))
    return values


def _long_keys(values: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
    short = [
        f"key {i} is shorter than {MIN_HMAC_SECRET_BYTES} bytes"
        for i, key in enumerate(values, 1)
        if len(key.get_secret_value().encode()) < MIN_HMAC_SECRET_BYTES
    ]
    if short:
        raise ValueError("\n".join(short))
    return values


def _long_secret(what: str) -> Any:
    def check(value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_HMAC_SECRET_BYTES:
            raise ValueError(f"is shorter than {MIN_HMAC_SECRET_BYTES} bytes{what}")
        return value

    return AfterValidator(check)


def _secrets(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _signing_key(value: SecretStr | None) -> SecretStr | None:
    if value is None:
        return None
    from .assertion import load_private_key  # cryptography, only when a key is set

    load_private_key(value.get_secret_value())  # its ValueError names what is wrong
    return value


def _previous_keys(values: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
    from .assertion import load_previous_key

    bad = []
    for index, text in enumerate(values, 1):
        try:
            load_previous_key(text.get_secret_value())
        except ValueError as exc:
            bad.append(f"key {index}: {exc}")
    if bad:
        raise ValueError("\n".join(bad))
    return values


def _public_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise ValueError("must be the broker's public http(s) URL, like https://chat.example.com")
    return value.rstrip("/")


def _files_storage(value: str | None) -> str | None:
    if value is None or value == "memory":
        return value
    scheme = urlsplit(value).scheme
    if scheme == "s3":
        if not urlsplit(value).netloc:
            raise ValueError("must name the bucket: s3://bucket or s3://bucket/prefix")
        import importlib.util

        if importlib.util.find_spec("obstore") is None:
            raise ValueError("needs obstore: pip install 'chatkit-broker[s3]'")
        return value
    if len(scheme) > 1:  # a one-letter scheme is a Windows drive
        raise ValueError("must be a directory, s3://bucket/prefix or memory")
    return value


def _header_names(values: tuple[str, ...]) -> tuple[str, ...]:
    bad = [
        f"{n!r} is not a header name (or Prefix-*)"
        for n in values
        if not _HEADER_NAME_RE.fullmatch(n)
    ]
    if bad:
        raise ValueError("\n".join(bad))
    return values


def _algorithms(values: tuple[str, ...]) -> tuple[str, ...]:
    known = set(HMAC_ALGS + ASYMMETRIC_ALGS)
    bad = [
        f"{a!r} is not a supported algorithm ('none' never is)" for a in values if a not in known
    ]
    if bad:
        raise ValueError("\n".join(bad))
    return values


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


class DatabaseURLError(ValueError):
    """``BROKER_DATABASE_URL`` is not a database this store can use (a configuration error)."""


def resolve_database_url(value: str | None, *, mock: bool = False) -> str:
    """The SQLAlchemy async URL for ``BROKER_DATABASE_URL`` as people write it.

    Unset means an in-memory database in mock mode and ``./chatkit-broker.sqlite3``
    otherwise; ``memory`` asks for the in-memory one explicitly. ``sqlite:///path`` and
    ``postgresql://…`` are mapped to the aiosqlite and asyncpg drivers.
    """
    raw = (value or "").strip()
    if not raw:
        return MEMORY_URL if mock else resolve_database_url(DEFAULT_DATABASE_URL)
    if raw in {"memory", "memory://", "sqlite://", "sqlite:///:memory:", MEMORY_URL}:
        return MEMORY_URL
    scheme, sep, rest = raw.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise DatabaseURLError(
            "BROKER_DATABASE_URL must look like sqlite:///path/to/file.sqlite3, "
            "postgresql://user@host:5432/dbname or memory."
        )
    if scheme in {"sqlite", "sqlite+aiosqlite"}:
        if rest in {"", "/:memory:"}:
            return MEMORY_URL
        if not rest.startswith("/") or rest == "/":
            raise DatabaseURLError(
                "BROKER_DATABASE_URL for SQLite needs three slashes and a path: "
                "sqlite:///relative.sqlite3 or sqlite:////absolute/path.sqlite3."
            )
        return f"sqlite+aiosqlite://{rest}"
    if scheme in {"postgres", "postgresql", "postgresql+asyncpg"}:
        # asyncpg takes `ssl`, not libpq's `sslmode`; accept the libpq spelling people copy.
        parts = urlsplit("x://" + rest)
        query = [("ssl" if k == "sslmode" else k, v) for k, v in parse_qsl(parts.query)]
        rest = rest.split("?", 1)[0] + (f"?{urlencode(query)}" if query else "")
        return f"postgresql+asyncpg://{rest}"
    raise DatabaseURLError(
        f"BROKER_DATABASE_URL uses {scheme!r}; only sqlite:///…, postgresql://… and memory "
        "are supported."
    )


def _database_url(value: SecretStr | None) -> SecretStr | None:
    if value is None:
        return None
    try:
        resolve_database_url(value.get_secret_value())
    except DatabaseURLError as exc:
        raise ValueError(str(exc).removeprefix("BROKER_DATABASE_URL ")) from None
    return value


def _section(title: str) -> dict[str, Any]:
    return {"section": title}


Rate = Annotated[str, AfterValidator(_rate)]
HttpURL = Annotated[str, AfterValidator(_http_url)]
Secrets = Annotated[tuple[SecretStr, ...], BeforeValidator(_secrets)]


ENV_PREFIX = "BROKER_"


class Environment(BaseModel):
    """The broker's variables. The docstring under each field is its documentation."""

    model_config = ConfigDict(
        frozen=True,
        validate_default=True,
        extra="ignore",
        validate_by_name=True,
        use_attribute_docstrings=True,
        hide_input_in_errors=True,
    )

    # --- mode and workflows ---
    mock: EnvFlag = Field(False, json_schema_extra=_section("Mode and workflows"))
    """1 = mock mode: loopback only, canned replies, no OpenAI key or sign-in needed."""
    mock_step: seconds(0, 1) = 0.02
    """Mock mode: the pause between the pieces of a canned reply (/slow keeps its own, 0.5 s);
    0 answers at once, for front-end tests that do not need to watch text stream in."""
    workflows: str | None = Field(None, examples=["support=myapp.support:agent"])
    """name=target,…; the target's shape names the kind: package.module:attr or
    path/file.py:attr (agent), http(s)://host/… (gateway), wf_… (hosted, retired
    2026-11-30). Names [a-z0-9_-]{1,64}."""
    workflows_file: str | None = Field(None, examples=["workflows.toml"])
    """A TOML file of [workflows.<name>] tables with per-workflow options; names must not
    clash with BROKER_WORKFLOWS."""

    # --- OpenAI ---
    openai_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("CHATKIT_OPENAI_API_KEY", "OPENAI_API_KEY"),
        json_schema_extra=_section("OpenAI"),
        examples=["sk-proj-…"],
    )
    """Required when a hosted or agent workflow is configured (not in mock mode, not for
    gateways alone). CHATKIT_OPENAI_API_KEY wins over OPENAI_API_KEY: a stray shell key from
    another project is the commonest cause of "workflow not found"."""
    openai_base_url: HttpURL = Field(DEFAULT_BASE_URL, validation_alias="OPENAI_BASE_URL")
    """The OpenAI API's base URL."""
    openai_organization: str | None = Field(None, validation_alias="OPENAI_ORGANIZATION")
    """Sent as OpenAI-Organization."""
    openai_project: str | None = Field(None, validation_alias="OPENAI_PROJECT")
    """Sent as OpenAI-Project."""
    upstream_timeout: seconds(0.1, 120) = 10.0
    """Total seconds per mint, retries and back-off included."""
    upstream_retries: whole(0, 2) = 2
    """Retries, only after a connection error or 429/500/502/503/504."""

    # --- sign-in ---
    jwt_secret: Annotated[SecretStr | None, _long_secret(": use a long random secret")] = Field(
        None, json_schema_extra=_section("Sign-in (your app's JWTs)"), examples=["…"]
    )
    """HMAC secret, at least 32 bytes: HS256, plus HS384 from 48 bytes and HS512 from 64."""
    jwt_public_key: SecretStr | None = None
    """PEM text, or @path; its kind decides the algorithms (RSA: RS*/PS*, EC: ES256/384/512
    by curve, Ed25519: EdDSA)."""
    jwt_jwks_url: HttpURL | None = None
    """JWKS endpoint (not together with BROKER_JWT_PUBLIC_KEY)."""
    jwt_algorithms: Annotated[csv, AfterValidator(_algorithms)] = ()
    """Comma-separated allowlist (default: from the key's kind); none is never accepted."""
    jwt_audience: str | None = None
    """Verified when set; unset, a token that carries aud is refused and check warns
    (Supabase: authenticated)."""
    jwt_issuer: str | None = None
    """Verified when set."""
    jwt_leeway: whole(0, 600) = 30
    """Clock skew allowed on exp/nbf/iat, seconds."""
    jwt_user_claim: str = "sub"
    """The claim that becomes the ChatKit user (at most 512 characters)."""
    jwt_max_age: whole(60, 31_536_000) = 86400
    """The longest lifetime a token may claim, seconds: exp further than that from now, or
    from its iat, is refused."""
    jwks_timeout: seconds(0.1, 30) = 3.0
    """JWKS fetch timeout, seconds."""
    jwks_cooldown: seconds(1, 3600) = 60.0
    """Least seconds between JWKS refetches on an unknown kid."""
    jwks_max_age: seconds(10, 86400) = 600.0
    """Age in seconds after which the key set is refetched."""

    # --- sessions (gateway and agent workflows) ---
    session_secret: Annotated[Secrets, AfterValidator(_long_keys)] = Field(
        (), json_schema_extra=_section("Broker sessions (gateway and agent workflows)")
    )
    """Keys of the broker's cks_ session secrets, each 32+ bytes, comma-separated: the first
    signs, all verify. Required in live mode when a gateway or agent workflow is configured
    (mock mode uses a per-process key)."""
    chatkit_domain_key: str = "local-dev"
    """The domain_key a mint answer tells ChatKit for gateway and agent workflows (register
    your domain with OpenAI and put its key here in production)."""
    database_url: Annotated[SecretStr | None, AfterValidator(_database_url)] = Field(
        None, examples=["sqlite:///./chatkit-broker.sqlite3"]
    )
    """Where agent workflows keep their threads: sqlite:///relative.sqlite3,
    sqlite:////absolute.sqlite3, postgresql://user:pass@host:5432/db (libpq's sslmode= is
    accepted) or memory. Unset: ./chatkit-broker.sqlite3, in memory in mock mode."""
    agent_tracing: EnvFlag = False
    """1 = agent runs send Agents SDK traces to OpenAI (off, so conversations stay on your
    machines)."""
    run_timeout: seconds(1, 3600) = 120.0
    """Seconds a server-side run of an agent workflow may take before a 504 run_timeout."""
    run_lease: seconds(3, 3600) = 30.0
    """Seconds within which a background run whose broker instance died is marked failed
    (the instance renews its runs' lease every third of this)."""
    run_queue: Literal["auto", "in-process"] = "auto"
    """Where background runs execute. auto: with a PostgreSQL thread database, on a durable
    queue in it (procrastinate; every broker instance is one of its workers, and queued runs
    outlive the instance that accepted them); with SQLite, in-process. in-process: on the
    instance that accepted the run, which they wait on and fail with."""
    transcribe_model: str = "gpt-4o-mini-transcribe"
    """The OpenAI model agent workflows' dictation (input.transcribe) uses."""
    transcribe_max_seconds: seconds(1, 1500) = 120.0
    """The longest dictation recording (input.transcribe) agent and mock workflows take, in
    seconds, read from the audio itself; longer is a 413, unreadable audio a 415."""
    files_storage: Annotated[str | None, AfterValidator(_files_storage)] = Field(
        None, examples=["s3://bucket/chatkit-files"]
    )
    """Where attachments' bytes live: a directory, s3://bucket/prefix (AWS_* variables,
    AWS_ENDPOINT_URL for MinIO and the like; shared by several brokers) or memory. Unset:
    ./chatkit-broker-files, in memory in mock mode."""

    # --- gateway workflows ---
    assertion_key: Annotated[SecretStr | None, AfterValidator(_signing_key)] = Field(
        None, json_schema_extra=_section("Gateway workflows"), examples=["@assertion-key.pem"]
    )
    """EC P-256 private key, PEM text or @path, that signs gateway assertions (ES256).
    Unset: a key made at start-up (warned); set it when there are several instances or
    restarts."""
    assertion_previous_keys: Annotated[Secrets, AfterValidator(_previous_keys)] = ()
    """Keys being rotated out (@path PEMs, comma-separated), still published at
    /.well-known/jwks.json."""
    assertion_secret: Annotated[SecretStr | None, _long_secret("")] = None
    """Shared secret (32+ bytes) for gateway workflows with assertion = "hs256"; required by
    them."""
    public_url: Annotated[str | None, AfterValidator(_public_url)] = None
    """The broker's public URL: the gateway assertions' iss (default chatkit-broker) and the
    base of the JWKS URL backends verify with."""
    gateway_strip_headers: Annotated[csv, AfterValidator(_header_names)] = ()
    """Header names (or Prefix-*) never forwarded to gateway backends, even when a workflow's
    forward_headers lists them (forwarding is an allowlist)."""

    # --- serving ---
    host: str = Field("127.0.0.1", json_schema_extra=_section("Serving"))
    """Bind address (mock mode: loopback only)."""
    port: whole(1, 65535) = Field(8000, validation_alias=AliasChoices("BROKER_PORT", "PORT"))
    """Bind port; PORT (set by most platforms) is read when BROKER_PORT is unset."""
    allowed_origins: Annotated[csv, AfterValidator(_origins)] = ()
    """CORS origins, comma-separated (same origin only when unset)."""
    trusted_proxies: Annotated[csv, AfterValidator(_networks)] = ()
    """Addresses or networks whose X-Forwarded-For is believed; unset, uvicorn's own
    proxy-header handling is off too."""
    rate_limit: Rate = "30/minute"
    """Per-user mint limit (count/second|minute|hour|day)."""
    ip_rate_limit: Rate = "600/minute"
    """Per-address limit on /api/, /chatkit/ and /mock/, before any JWT work."""
    redis_url: SecretStr | None = None
    """Shared store for rate limits and the session registry (redis://, rediss://, unix://);
    unset: in-process memory."""
    redis_prefix: Annotated[
        str, Says(" must be 1-64 of A-Za-z0-9:._-"), Field(pattern=f"^{_REDIS_PREFIX_RE.pattern}$")
    ] = "chatkit-broker:"
    """Prefix of every Redis key, so several brokers can share a server."""
    chatkit_js_url: HttpURL = DEFAULT_CHATKIT_JS_URL
    """The ChatKit script the test page loads."""
    test_page: EnvFlag = True
    """Serve the test page at /."""
    log_format: Annotated[Literal["json", "text"] | None, BeforeValidator(_lower)] = None
    """json or text; unset: text on a terminal, else json."""
    log_level: Annotated[
        Literal["debug", "info", "warning", "error", "critical"], BeforeValidator(_lower)
    ] = "info"
    """debug, info, warning, error or critical."""

    #: field → the variable its value came from (``PORT`` or ``BROKER_PORT`` …), set by the loader
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def sources(self) -> dict[str, str]:
        return self._sources

    @classmethod
    def from_values(cls, values: dict[str, str], sources: dict[str, str]) -> "Environment":
        """Validate ``values`` (field → text), remembering which variable each came from."""
        environment = cls(**values)
        environment._sources = {name: sources[name] for name in values}
        return environment

    @classmethod
    def variables(cls, name: str) -> tuple[str, ...]:
        """The variables a field is read from, the first set one winning."""
        alias = cls.model_fields[name].validation_alias
        if isinstance(alias, AliasChoices):
            return tuple(str(choice) for choice in alias.choices)
        if isinstance(alias, str):
            return (alias,)
        return (ENV_PREFIX + name.upper(),)

    @classmethod
    def read(cls, env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        """(field → value, field → the variable it came from): blank values count as unset."""
        values: dict[str, str] = {}
        source: dict[str, str] = {}
        for name in cls.model_fields:
            for var in cls.variables(name):
                value = (env.get(var) or "").strip()
                if value:
                    values[name], source[name] = value, var
                    break
        return values, source


def changed(environment: "Environment") -> list[str]:
    """``VARIABLE=value`` for every setting not at its default, in declaration order; a
    secret shows only that it is set. What ``check`` and ``doctor`` print, off the declaration."""
    lines = []
    for name, info in Environment.model_fields.items():
        value = getattr(environment, name)
        if value == default_of(name):
            continue
        variable = environment.sources.get(name) or Environment.variables(name)[0]
        if is_secret(info):
            count = len(value) if isinstance(value, tuple) else 1
            lines.append(f"{variable}=(secret, {count} value{'s' * (count != 1)}, not shown)")
        else:
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
            lines.append(f"{variable}={'1' if shown is True else '0' if shown is False else shown}")
    return lines


def is_secret(info: FieldInfo) -> bool:
    """Whether a field holds a secret (never printed, never in a message)."""
    return "SecretStr" in str(info.annotation)


def default_of(name: str) -> Any:
    """A setting's declared default: the one place it is written."""
    return Environment.model_fields[name].get_default(call_default_factory=True)


@dataclass(frozen=True)
class AgentOptions:
    """What agent workflows (and mock mode's threads) need besides the workflows."""

    database_url: str = field(default=MEMORY_URL, repr=False)  # async URL; may hold a password
    tracing: bool = default_of("agent_tracing")
    run_timeout: float = default_of("run_timeout")


DEFAULT_RUN_TIMEOUT: float = default_of("run_timeout")


class ConfigError(Exception):
    """Raised with every configuration problem found, each naming its variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# The variables an OpenAI API key is read from, the first set one winning (api_key_in_effect).
API_KEY_VARIABLES: tuple[str, ...] = Environment.variables("openai_api_key")


def api_key_in_effect(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(variable, key) of the API key the broker uses: ``CHATKIT_OPENAI_API_KEY`` wins.

    Public so ``doctor`` names the same key even when the rest of the configuration is invalid.
    """
    for name in API_KEY_VARIABLES:
        if key := (env.get(name) or "").strip():
            return name, key
    return None, None


@dataclass(frozen=True)
class JWTSettings:
    """How sign-in tokens are verified (the ``BROKER_JWT_*`` and ``BROKER_JWKS_*`` variables)."""

    secret: str | None = field(default=None, repr=False)
    public_key: str | None = field(default=None, repr=False)
    jwks_url: str | None = None
    hmac_algorithms: tuple[str, ...] = ()
    asymmetric_algorithms: tuple[str, ...] = ()
    audience: str | None = None
    issuer: str | None = None
    leeway: int = default_of("jwt_leeway")
    user_claim: str = default_of("jwt_user_claim")
    # the longest lifetime a token may claim: exp at most this far from now and from its iat
    max_age: int = default_of("jwt_max_age")
    # the JWKS cache: fetch timeout, cooldown between refetches, refetch age
    jwks_timeout: float = default_of("jwks_timeout")
    jwks_cooldown: float = default_of("jwks_cooldown")
    jwks_max_age: float = default_of("jwks_max_age")

    @property
    def configured(self) -> bool:
        return bool(self.secret or self.public_key or self.jwks_url)


@dataclass(frozen=True)
class Settings:
    """Everything the broker needs, validated. Secrets are excluded from ``repr``.

    Built by ``config.load_settings`` from ``Environment``; its defaults are the declaration's.
    """

    mock: bool = default_of("mock")
    mock_step: float = default_of("mock_step")
    openai_api_key: str | None = field(default=None, repr=False)
    openai_api_key_source: str | None = None
    openai_base_url: str = default_of("openai_base_url")
    openai_organization: str | None = None
    openai_project: str | None = None
    workflows: tuple[Workflow, ...] = ()
    jwt: JWTSettings = field(default_factory=JWTSettings)
    host: str = default_of("host")
    port: int = default_of("port")
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    rate_limit: str = default_of("rate_limit")
    ip_rate_limit: str = default_of("ip_rate_limit")
    redis_url: str | None = field(default=None, repr=False)
    redis_prefix: str = default_of("redis_prefix")
    upstream_timeout: float = default_of("upstream_timeout")
    upstream_retries: int = default_of("upstream_retries")
    chatkit_js_url: str = default_of("chatkit_js_url")
    test_page: bool = default_of("test_page")
    log_format: str = "text"
    log_level: str = default_of("log_level")
    # keys of the broker's own cks_ session secrets: the first signs, all verify
    session_secrets: tuple[str, ...] = field(default=(), repr=False)
    chatkit_domain_key: str = default_of("chatkit_domain_key")
    # gateway workflows: the signed identity each proxied request carries (PEM texts, read)
    assertion_key: str | None = field(default=None, repr=False)
    assertion_previous_keys: tuple[str, ...] = field(default=(), repr=False)
    assertion_secret: str | None = field(default=None, repr=False)
    public_url: str | None = None
    gateway_strip_headers: tuple[str, ...] = ()
    # agent workflows (and mock mode's threads): database, tracing, run timeout
    agent: AgentOptions | None = None  # None: the defaults
    warnings: tuple[str, ...] = ()
    #: the validated variables these settings were built from (``changed`` lists them)
    environment: Environment | None = field(default=None, repr=False, compare=False)

    def __getattr__(self, name: str) -> Any:
        """A declared variable with no field here reads straight from the declaration
        (``settings.forward_headers`` once ``Environment`` has it): adding a setting is one
        field of ``Environment``. Secrets come as ``SecretStr``."""
        if name in Environment.model_fields:
            environment = self.__dict__.get("environment")
            value = getattr(environment, name) if environment is not None else default_of(name)
            self.__dict__[name] = value  # read once: later reads are plain attribute reads
            return value
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def workflow(self, ref: str) -> Workflow | None:
        """Find an allowlisted workflow by its name or its ``wf_`` id."""
        return self._by_ref.get(ref)

    @cached_property
    def _by_ref(self) -> dict[str, Workflow]:
        """Name and id → workflow, the first in order winning (one dict lookup per mint)."""
        found: dict[str, Workflow] = {}
        for wf in self.workflows:
            found.setdefault(wf.name, wf)
            if wf.id is not None:
                found.setdefault(wf.id, wf)
        return found

    def workflow_named(self, name: str) -> Workflow | None:
        """The allowlisted workflow called ``name`` (ids do not count: URLs carry names)."""
        for wf in self.workflows:
            if wf.name == name:
                return wf
        return None
