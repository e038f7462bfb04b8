"""Builds the ASGI application from validated ``Settings``: components, middleware, routes.

Components are created here and handed to whoever needs them (no globals), so a test can
build an app around a fake upstream, an injected clock or a shared registry. This is the one
place that decides which backends exist (mock mode puts the mock in front of every workflow);
everything after it asks the backends, not the mode.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import routes
from .auth import Verifier
from .backends import KINDS, MOCK, Backend, Backends, BuildContext, specs_for
from .backends.mock import MOCK_USER
from .chatkit_endpoint import ChatKitEndpoint
from .config import load_settings, read_environment
from .edge import Edge, Plain
from .errors import BrokerError, from_http_status, render
from .gate import Gate
from .http import HttpPool
from .jwks import JWKSCache
from .kit import KIT_FILE, kit_headers
from .metrics import Metrics, count_mints, metrics_endpoint
from .ratelimit import ClientAddress, RateLimits
from .registry import MemoryRegistry, RedisRegistry, SessionRegistry
from .session_secrets import SessionSecrets
from .sessions import SessionService
from .settings import ConfigError, Settings

if TYPE_CHECKING:
    from .backends.hosted import _Client
    from .store import RedisStore

log = logging.getLogger("broker")
HOSTED = KINDS["hosted"]
STATIC_DIR = Path(__file__).resolve().parent / "static"


@dataclass
class Broker:
    """Everything a request handler needs, built once per app."""

    settings: Settings
    gate: Gate
    sessions: SessionService
    backends: Backends
    secrets: SessionSecrets | None
    http: HttpPool
    metrics: Metrics
    limits: RateLimits
    jwks: JWKSCache | None = None
    store: RedisStore | None = None
    # each answers None when ready, else what is missing (JWKS never fetched, Redis never reached)
    readiness: list[Callable[[], Awaitable[str | None]]] = field(default_factory=list)
    # each answers None, else a degraded mode /readyz names while staying ready (budgets local)
    degraded: list[Callable[[], Awaitable[str | None]]] = field(default_factory=list)
    mock: bool = False

    async def not_ready(self) -> list[str]:
        """What keeps the broker from serving: the JWKS never fetched, and so on."""
        problems = [await check() for check in self.readiness]
        return [problem for problem in problems if problem]

    async def degraded_modes(self) -> list[str]:
        """What the broker serves in a degraded mode of (budgets counted per process ...)."""
        notes = [await check() for check in self.degraded]
        return [note for note in notes if note]


def build_broker(
    settings: Settings,
    *,
    http: HttpPool | None = None,
    registry: SessionRegistry | None = None,
    backend: _Client | None = None,
    metrics: Metrics | None = None,
    store: RedisStore | None = None,
    jwks: JWKSCache | None = None,
    verifier: Verifier | None = None,
) -> Broker:
    """Build the components; any of them may be passed in instead (tests, benchmarks):
    ``backend`` is the hosted sessions client."""
    http = http or HttpPool()
    metrics = metrics or Metrics()
    if store is None and settings.redis_url:
        from .store import RedisStore  # redis is imported only by deployments that use it

        store = RedisStore(settings.redis_url, settings.redis_prefix, metrics=metrics)
    if registry is None:
        registry = (
            RedisRegistry(store)
            if store is not None
            else MemoryRegistry(on_evict=metrics.registry_eviction)
        )
    if jwks is None and settings.jwt.jwks_url:
        jwks = JWKSCache(
            settings.jwt.jwks_url,
            http,
            algorithms=settings.jwt.asymmetric_algorithms,
            cooldown=settings.jwt.jwks_cooldown,
            timeout=settings.jwt.jwks_timeout,
            max_age=settings.jwt.jwks_max_age,
            on_fetch=metrics.jwks_fetch,
        )
    limits = RateLimits(settings, metrics=metrics, store=store)
    # mock mode signs with a per-process key: its secrets are worthless to any other process
    keys = [secrets.token_urlsafe(32)] if settings.mock else list(settings.session_secrets)
    session_secrets = SessionSecrets(keys, registry) if keys else None

    verifier = verifier or Verifier(settings.jwt, jwks)
    gate = Gate(
        verifier=verifier,
        workflows=settings.workflows,
        limits=limits,
        secrets=session_secrets,
        anonymous_user=MOCK_USER if settings.mock else None,
        trust_unverified=settings.mock,
    )
    ctx = BuildContext(
        settings,
        http,
        metrics,
        limits,
        gate,
        session_secrets,
        overrides={"hosted": backend},
    )
    kinds = specs_for(settings.mock, settings.workflows)
    if backend is not None and not settings.mock and HOSTED not in kinds:
        kinds.append(HOSTED)  # an injected hosted client serves, whatever the workflows
    built = {spec.kind: spec.build(ctx) for spec in kinds}
    every = built.pop(MOCK.kind, None)
    by_kind: dict[str, Backend] = built
    backends = Backends(by_kind, every=every, broker_sessions=session_secrets)
    readiness = [c.readiness for c in (jwks, store) if c is not None]
    for b in backends:
        readiness.extend(b.readiness())
    degraded = [check for b in backends for check in b.degraded()]
    return Broker(
        settings,
        gate,
        SessionService(backends, registry, domain_key=settings.chatkit_domain_key),
        backends,
        session_secrets,
        http,
        metrics,
        limits,
        jwks=jwks,
        store=store,
        readiness=readiness,
        degraded=degraded,
        mock=settings.mock,
    )


async def _broker_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BrokerError)
    rendered = render(exc, request.state.request_id)
    response = Response(rendered.body, status_code=rendered.status)
    response.raw_headers = rendered.headers
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {
        404: f"There is no {request.url.path} here; see /openapi.json for the API.",
        405: f"{request.method} is not allowed on {request.url.path}.",
    }
    error = from_http_status(
        exc.status_code, messages.get(exc.status_code, exc.detail), exc.headers
    )
    return await _broker_error(request, error)


def content_security_policy(chatkit_js_url: str) -> str:
    """Only the page itself and the ChatKit origin; no inline script."""
    parts = urlsplit(chatkit_js_url)
    chatkit = f"{parts.scheme}://{parts.netloc}"
    return (
        f"default-src 'self'; script-src 'self' {chatkit}; "
        f"style-src 'self' 'unsafe-inline' {chatkit}; img-src 'self' data: {chatkit}; "
        f"font-src 'self' {chatkit}; frame-src {chatkit}; "
        f"connect-src 'self' {chatkit} https://api.openai.com; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


# Collections of the young generations, rarer than CPython's default (700 new objects): a
# request allocates hundreds of short-lived objects (futures, handles, dicts) and the default
# ran a collection every request or two. The older generations keep their defaults.
GC_THRESHOLD = 50_000


def _settle_heap() -> None:
    """After startup: the modules, settings and pools built so far are moved out of the
    collector's sight (``gc.freeze``) and the young generation is collected less often.

    With CPython's defaults, garbage collection cost more CPU than the broker's own code —
    about 150-300 µs per mint under load, measured (docs/performance.md): every full
    collection walked the tens of thousands of objects the imports and the app had made, which
    live as long as the process anyway.
    """
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, second, third)


class _TestPage:
    """The static test page with its CSP; anything but GET/HEAD is 405 on a file, else 404.

    ``only`` limits it to some files: with the test page off, the front-end kit is still
    served, because apps import it from the broker.
    """

    def __init__(
        self, directory: Path, headers: dict[str, str], only: frozenset[str] | None = None
    ) -> None:
        self.directory = directory
        self.app = StaticFiles(directory=directory, html=True)
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        self.only = only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relative = scope["path"].lstrip("/") or "index.html"
        if self.only is not None and relative not in self.only:
            raise HTTPException(404)
        if scope["method"] not in ("GET", "HEAD"):
            if ".." not in relative and (self.directory / relative).is_file():
                raise HTTPException(405, headers={"Allow": "GET, HEAD"})
            raise HTTPException(404)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [*self.headers, *kit_headers(scope)]
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _PageMount(Mount):
    """Mounts the test page at ``/`` without swallowing the API's own paths.

    A plain ``Mount("/")`` fully matches ``GET /api/chatkit/session`` and would turn the
    router's 405 into the page's 404; API prefixes are therefore never the page's.
    """

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path = scope.get("path", "")
        if path.startswith(API_PREFIXES) or path in API_PATHS:
            return Match.NONE, {}
        return super().matches(scope)


API_PREFIXES = ("/api/", "/mock/", "/chatkit/", "/.well-known/")
API_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})


class _BrokerApp(Starlette):
    """Starlette without its outermost ``ServerErrorMiddleware``: the edge already answers
    anything that escapes with a JSON 500 (the traceback to the log only), so that layer —
    which would render a plain-text 500 and re-raise — only cost every request a frame."""

    def build_middleware_stack(self) -> ASGIApp:
        handlers = {k: v for k, v in self.exception_handlers.items() if k not in (500, Exception)}
        app: ASGIApp = ExceptionMiddleware(self.router, handlers=handlers, debug=self.debug)
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return app


def create_app(
    settings: Settings, *, broker: Broker | None = None, settle_heap: bool = False
) -> Starlette:
    """The ASGI app. Pass ``broker`` to inject components (tests, benchmarks).

    ``settle_heap`` (``serve`` sets it; a process of its own) tunes the garbage collector once
    startup is done, see ``_settle_heap``: not for an app inside a test run or another program,
    whose collector is theirs."""
    broker = broker or build_broker(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if settings.mock:
            log.warning(
                "MOCK MODE: no OpenAI calls are made; session secrets are signed with a key "
                "only this process has. Loopback clients only."
            )
            log.info(
                "mock ChatKit backend at /chatkit/<workflow> (and /mock/chatkit); "
                'mint at /api/chatkit/session, then api: {url: backend.url, domainKey: "%s"}',
                settings.chatkit_domain_key,
            )
        from .backends.hosted.retired import retirement_warnings

        for warning in [
            *settings.warnings,
            *retirement_warnings(settings.workflows, mock=settings.mock),
        ]:
            log.warning("config: %s", warning)
        broker.http()
        if broker.jwks is not None:
            await broker.jwks.refresh()
        if broker.store is not None:
            await broker.store.start()
        started: list[Backend] = []
        try:
            for backend in broker.backends:
                await backend.startup()
                started.append(backend)
            if settle_heap:
                _settle_heap()
            yield
        finally:
            for backend in reversed(started):
                await backend.shutdown()
            await broker.http.close()
            if broker.store is not None:
                await broker.store.close()

    chatkit = ChatKitEndpoint(broker.settings, broker.gate, broker.backends, broker.secrets)
    mint = count_mints(broker.metrics, partial(routes.create_session, broker))
    cancel = partial(routes.cancel_session, broker)
    route_list: list[BaseRoute] = [
        # the edge serves these two itself, before the router (``edge.Plain``)
        Route("/api/chatkit/session", Plain("POST", mint), methods=["POST"]),
        Route("/api/chatkit/session/cancel", Plain("POST", cancel), methods=["POST"]),
        Route("/api/chatkit/workflows", routes.list_workflows, methods=["GET"]),
        Route("/api/chatkit/config", routes.client_config, methods=["GET"]),
        Route("/chatkit/{name}", chatkit, methods=["POST"]),
        Route("/healthz", routes.healthz, methods=["GET"]),
        Route("/readyz", routes.readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", routes.openapi_json, methods=["GET"]),
    ]
    if settings.mock:  # the older mock endpoint, kept as an alias; in live mode it is a 404
        alias = ChatKitEndpoint(
            broker.settings, broker.gate, broker.backends, broker.secrets, alias=True
        )
        route_list.append(Route("/mock/chatkit", alias, methods=["POST"]))
    for backend in broker.backends:
        route_list.extend(backend.routes())
    if STATIC_DIR.is_dir():
        csp = {"Content-Security-Policy": content_security_policy(settings.chatkit_js_url)}
        only = None if settings.test_page else frozenset({KIT_FILE})
        route_list.append(_PageMount("/", app=_TestPage(STATIC_DIR, csp, only)))

    # one edge layer: request id, mock guard, CORS, the address limit (before routing, so
    # before any JWT work), the body limit, metrics and the access log of every answer
    edge = Middleware(
        Edge,
        metrics=broker.metrics,
        routes=lambda: app.routes,
        limits=broker.limits,
        addresses=ClientAddress(settings.trusted_proxies, mock=settings.mock),
        mock=settings.mock,
        allowed_origins=settings.allowed_origins,
    )

    app = _BrokerApp(
        routes=route_list,
        middleware=[edge],
        exception_handlers={BrokerError: _broker_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.broker = broker
    return app


def app_from_environ() -> Starlette:
    """uvicorn factory (``broker.app:app_from_environ``): settings from the environment + ``.env``.

    Used by ``serve`` so that each of several workers builds its own app from the same config.
    """
    env, _ = read_environment()
    from .environ import export_environment

    export_environment(env)  # an export's own AsyncOpenAI() reads the process environment
    try:
        settings = load_settings(env)
    except ConfigError as exc:  # serve validated already; this only guards direct uvicorn use
        raise SystemExit(
            "chatkit-broker: invalid configuration:\n  " + "\n  ".join(exc.problems)
        ) from None
    from .logs import setup_logging

    setup_logging(settings.log_format, settings.log_level, secrets=(settings.openai_api_key or "",))
    return create_app(settings, settle_heap=True)
