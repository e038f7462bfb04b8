"""The gateway backend: ``POST /chatkit/<name>`` relayed to the workflow's own ChatKit server.

The gate has already authenticated the caller and checked the allowlist when ``serve`` runs;
this adds what only the gateway knows: the per-user message limit (counted on the request
types that start a model turn, and given back when the backend refused the turn), the signed
assertion for this request, the relay, and one access-log line and metrics saying how the
request ended.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from ...assertion import (
    ASSERTION_HEADER,
    AssertionSigner,
    HMACAssertionSigner,
    forwarded_claims,
)
from ...edge import abort_response
from ...errors import BrokerError, InvalidRequest, render
from ...files.tokens import SealedFileTokens
from ...http import HttpPool
from ...ratelimit import RateLimits
from ...session_secrets import SessionSecrets
from ...settings import Settings
from ...workflow import Workflow
from ..base import Admission, Backend
from ..turns import starts_a_turn
from .files import (
    DIRECT_UPLOAD_TTL,
    PREFIX,
    FileRelay,
    check_create,
    error_with_id,
    policy_of,
)
from .headers import HeaderPolicy
from .metrics import GatewayMetrics
from .proxy import (
    GatewayProxy,
    Relay,
    StreamAborted,
    Upstream,
    gateway_pool,
)

if TYPE_CHECKING:
    from ...gate import Gate

log = logging.getLogger("broker.gateway")

JWKS_PATH = "/.well-known/jwks.json"


class MessageLimiter(Protocol):
    """Per (user, workflow) message counts, shared across instances."""

    async def hit(self, user: str, workflow: str, per_minute: int) -> None:
        """Count one message; raise ``RateLimited`` when over ``per_minute``."""

    async def refund(self, user: str, workflow: str, per_minute: int) -> None:
        """Give back one counted message that started no turn; never raises."""


@dataclass(frozen=True)
class BrokerMessageLimiter:
    """``max_messages_per_minute`` on the broker's own limiter (Redis when configured, so
    it holds across instances; per process while Redis is down)."""

    limits: RateLimits

    async def hit(self, user: str, workflow: str, per_minute: int) -> None:
        name, key, count, what = self._args(user, workflow, per_minute)
        await self.limits.hit_per_minute(name, key, count, what=what)

    async def refund(self, user: str, workflow: str, per_minute: int) -> None:
        name, key, count, what = self._args(user, workflow, per_minute)
        await self.limits.refund_per_minute(name, key, count, what=what)

    @staticmethod
    def _args(user: str, workflow: str, per_minute: int) -> tuple[str, str, int, str]:
        what = f"messages to workflow {workflow!r} for this user"
        return "workflow_messages", f"{workflow}:{user}", per_minute, what


def message_limiter(limits: RateLimits) -> MessageLimiter:
    return BrokerMessageLimiter(limits)


def started_a_turn(record: Relay) -> bool:
    """Whether a relayed message cost the backend a turn, so it stays counted.

    Refused by the backend (it answered 3xx/4xx/5xx: another user's thread, a bad request)
    or never delivered (no connection could be made): no turn, the count is given back.
    Answered 2xx, or sent and then timed out, reset or left by the browser: the backend may
    have run the model, so it counts. Attempts are bounded anyway by the workflow's
    ``max_requests_per_minute``, which counts every request.
    """
    if record.upstream_status is not None:
        return 200 <= record.upstream_status < 300
    return record.outcome != "backend_unavailable"


@dataclass(frozen=True)
class GatewaySettings:
    """The gateway's share of the broker's settings (see ``.env.example``)."""

    assertion_key: str | None = None  # BROKER_ASSERTION_KEY: PEM text or @path
    previous_keys: tuple[str, ...] = ()  # BROKER_ASSERTION_PREVIOUS_KEYS: @path, …
    assertion_secret: str | None = None  # BROKER_ASSERTION_SECRET, for assertion = "hs256"
    public_url: str | None = None  # BROKER_PUBLIC_URL: the assertions' iss, the JWKS URL
    strip_headers: tuple[str, ...] = ()  # BROKER_GATEWAY_STRIP_HEADERS

    @classmethod
    def from_settings(cls, settings: Settings) -> GatewaySettings:
        return cls(
            assertion_key=settings.assertion_key,
            previous_keys=settings.assertion_previous_keys,
            assertion_secret=settings.assertion_secret,
            public_url=settings.public_url,
            strip_headers=settings.gateway_strip_headers,
        )

    @property
    def issuer(self) -> str:
        return self.public_url or "chatkit-broker"

    @property
    def jwks_url(self) -> str:
        base = (self.public_url or "http://<broker>").rstrip("/")
        return base + JWKS_PATH


def audience_of(workflow: Workflow) -> str:
    """A workflow's audience: its ``audience`` option, else its name."""
    return workflow.audience or workflow.name


class GatewayBackend(Backend):
    """Serves every ``kind = "gateway"`` workflow through one shared proxy and pool.

    Sessions are the broker's own ``cks_`` secrets (``sessions``); the ChatKit requests those
    secrets (or an app JWT) authorise are relayed to the workflow's ``server``.
    """

    kind: ClassVar[str] = "gateway"

    def __init__(
        self,
        settings: GatewaySettings,
        sessions: SessionSecrets | None = None,
        *,
        metrics: GatewayMetrics | None = None,
        limiter: MessageLimiter | None = None,
        pool: HttpPool | None = None,
        signer: AssertionSigner | None = None,
        workflows: Sequence[Workflow] = (),
        gate: Gate | None = None,
        limits: RateLimits | None = None,
        file_keys: Sequence[str] = (),
    ) -> None:
        if sessions is not None:
            self.sessions = sessions
        self.settings = settings
        self.signer = signer or AssertionSigner.from_config(
            settings.assertion_key, settings.previous_keys, issuer=settings.issuer
        )
        self.hmac_signer = (
            HMACAssertionSigner(settings.assertion_secret, issuer=settings.issuer)
            if settings.assertion_secret
            else None
        )
        self.pool = pool or gateway_pool()
        self.metrics = metrics
        self._limiter = limiter
        self.proxy = GatewayProxy(
            self.pool,
            HeaderPolicy(settings.strip_headers),
            on_stream=self._stream_counted if metrics is not None else None,
        )
        self.workflows = {wf.name: wf for wf in workflows if wf.kind == "gateway"}
        self._upstreams: dict[str, tuple[Workflow, Upstream]] = {}
        self.gate = gate
        self.limits = limits
        # the backend's upload/preview URLs, sealed into broker URLs with the session-secret
        # keys (a per-process key without them: mock mode, tests)
        self.files = FileRelay(
            self,
            SealedFileTokens(
                list(file_keys) or [secrets.token_urlsafe(32)],
                ttl={"direct": DIRECT_UPLOAD_TTL},
            ),
        )

    # --- the Backend protocol -----------------------------------------------------------

    async def shutdown(self) -> None:
        await self.pool.close()

    # readiness(): none. A gateway's server being down is that workflow's 503, and it says
    # so; the broker itself (other workflows, mints) is still ready.

    def routes(self) -> Sequence[BaseRoute]:
        return [Route(JWKS_PATH, self.jwks_endpoint, methods=["GET"]), *self.files.routes()]

    def endpoint(self, workflow: Workflow, domain_key: str) -> Mapping[str, Any] | None:
        """The mint answer's ``backend``: with the composer's file and dictation options,
        from the workflow's ``files``, ``direct_upload_url`` and ``dictation``."""
        found = super().endpoint(workflow, domain_key)
        if found is None:
            return None
        policy = policy_of(workflow)
        options: dict[str, Any] = {
            **found,
            "dictation": {"enabled": bool(getattr(workflow, "dictation", False))},
            "attachments": policy.composer(),
        }
        if policy.enabled:
            if getattr(workflow, "direct_upload_url", None):
                url = f"{PREFIX}/{quote(workflow.name, safe='')}/upload"
                options["upload_strategy"] = {"type": "direct", "uploadUrl": url}
            else:
                options["upload_strategy"] = {"type": "two_phase"}
        return options

    def session_endpoint(
        self, endpoint: Mapping[str, Any] | None, admission: Admission, session_id: str | None
    ) -> Mapping[str, Any] | None:
        """A direct ``uploadUrl`` signed for this user, workflow and session (``?t=``): ChatKit
        may post direct uploads with the browser's own fetch rather than the kit's, and then
        no session secret comes with them."""
        strategy = (endpoint or {}).get("upload_strategy")
        if not isinstance(strategy, dict) or strategy.get("type") != "direct":
            return endpoint
        workflow = admission.workflow
        claims = forwarded_claims(admission.identity.claims, workflow.forward_claims)
        token = self.files.direct_token(workflow.name, admission.identity.user, claims, session_id)
        signed = {**strategy, "uploadUrl": f"{strategy['uploadUrl']}?t={token}"}
        return {**(endpoint or {}), "upload_strategy": signed}

    async def jwks_endpoint(self, request: Request) -> Response:
        """The public keys backends verify assertions with; cacheable for a few minutes."""
        return JSONResponse(self.signer.jwks(), headers={"Cache-Control": "public, max-age=300"})

    def signer_for(self, workflow: Workflow) -> AssertionSigner | HMACAssertionSigner:
        if workflow.assertion == "hs256":
            if self.hmac_signer is None:  # config validation should make this impossible
                raise BrokerError("BROKER_ASSERTION_SECRET is required for hs256 workflows.")
            return self.hmac_signer
        return self.signer

    def sign(
        self,
        workflow: Workflow,
        user: str,
        *,
        session_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
        body: bytes | None = None,
    ) -> str:
        """A fresh assertion for one request to ``workflow``'s server on behalf of ``user``."""
        return self.signer_for(workflow).sign(
            user,
            audience=audience_of(workflow),
            workflow=workflow.name,
            session_id=session_id,
            extra=extra,
            body=body,
        )

    def upstream_for(self, workflow: Workflow) -> Upstream:
        """Where ``workflow``'s requests go: built once per workflow object (a reloaded
        workflow is a new object), not on every request's path to its first event."""
        cached = self._upstreams.get(workflow.name)
        if cached is not None and cached[0] is workflow:
            return cached[1]
        upstream = self._upstream(workflow)
        self._upstreams[workflow.name] = (workflow, upstream)
        return upstream

    def _upstream(self, workflow: Workflow) -> Upstream:
        signer = self.signer_for(workflow)
        if signer.algorithm == "ES256":
            how = f"against {self.settings.jwks_url}"
        else:
            how = "with the shared secret (BROKER_ASSERTION_SECRET, HS256)"
        hint = (
            f"The server must verify the {ASSERTION_HEADER} header {how}, with audience "
            f"{audience_of(workflow)!r} and issuer {signer.issuer!r}."
        )
        return Upstream(
            workflow.server or "",
            workflow=workflow.name,
            connect_timeout=workflow.connect_timeout,
            idle_timeout=workflow.idle_timeout,
            identity_hint=hint,
            forward_headers=workflow.forward_headers,
        )

    async def serve(self, admission: Admission, scope: Scope, receive: Receive, send: Send) -> None:
        """Relay one admitted ``POST /chatkit/<name>``; never raises before the first byte."""
        workflow = admission.workflow
        state = scope.setdefault("state", {})
        request_id = str(state.get("request_id", "-"))
        record = Relay()
        request_type = "-"
        counted = 0  # the per-minute limit this request was counted against, if it was
        relayed = False
        try:
            body = await self.proxy.read_body(scope, receive)
            if body is None:
                record.outcome = "client_closed"
                return
            request_type = _request_type(body)
            if request_type == "attachments.create":
                check_create(body, policy_of(workflow), workflow.name)
            per_minute = workflow.max_messages_per_minute
            if per_minute and starts_a_turn(request_type) and self._limiter is not None:
                await self._limiter.hit(admission.identity.user, workflow.name, per_minute)
                counted = per_minute
            claims = forwarded_claims(admission.identity.claims, workflow.forward_claims)
            assertion = self.sign(
                workflow,
                admission.identity.user,
                session_id=admission.session_id,
                extra=claims,
                body=body,
            )
            own = [(ASSERTION_HEADER, assertion), ("X-Request-ID", request_id)]
            relayed = True
            await self.proxy.relay(
                scope,
                receive,
                _with_request_id(send, request_id),
                self.upstream_for(workflow),
                body,
                own,
                record,
                self.files.urls(scope, workflow.name, admission.identity.user, claims),
            )
        except StreamAborted:
            # the browser must see a broken stream, not a finished reply (the proxy logged why)
            abort_response(scope)
            return
        except BrokerError as exc:
            record.outcome, record.status = exc.code, exc.status
            rendered = render(exc, request_id)
            start = {"type": "http.response.start", "status": rendered.status}
            await send({**start, "headers": rendered.headers})
            await send({"type": "http.response.body", "body": rendered.body})
        finally:
            refused = not relayed or not started_a_turn(record)
            if counted and self._limiter is not None and refused:
                await self._limiter.refund(admission.identity.user, workflow.name, counted)
            self._finished(workflow.name, request_type, record, state)

    # --- observability ------------------------------------------------------------------

    def _stream_counted(self, workflow: str, delta: int) -> None:
        if self.metrics is not None:
            if delta > 0:
                self.metrics.stream_opened(workflow)
            else:
                self.metrics.stream_closed(workflow)

    def _finished(
        self, workflow: str, request_type: str, record: Relay, state: dict[str, Any]
    ) -> None:
        """Metrics, and the facts the one access-log line of this request adds (how it
        ended, bytes relayed, the backend's time to first byte)."""
        if self.metrics is not None:
            self.metrics.finished(workflow, record)
        state.update(
            outcome=str(record.outcome),
            chatkit_type=request_type,
            relayed_bytes=record.bytes_out,
            ttfb_ms=round(record.ttfb * 1000, 2) if record.ttfb is not None else None,
        )


def _with_request_id(send: Send, request_id: str) -> Send:
    """``send`` that gives a backend's own 4xx error JSON the broker's request id.

    The backend's status, code and message pass through; an ``{"error": {...}}`` body that
    lacks ``request_id`` gets the one in ``X-Request-ID``, so every error the browser sees
    has the SPEC shape and can be found in the broker's log. Other bodies are untouched.
    """
    error_start: dict[str, Any] | None = None

    async def patched(message: dict[str, Any]) -> None:
        nonlocal error_start
        if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
            error_start = message  # held until the body: its Content-Length may change
            return
        if error_start is None or message["type"] != "http.response.body":
            await send(message)
            return
        start, error_start = error_start, None
        body = error_with_id(message.get("body", b""), request_id)
        if body is not None and not message.get("more_body"):
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            start = {**start, "headers": [*headers, (b"content-length", b"%d" % len(body))]}
            message = {**message, "body": body}
        await send(start)
        await send(message)

    return patched


def _request_type(body: bytes) -> str:
    """The ChatKit request ``type`` (to count messages); a body that has none is a 400."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        parsed = None
    kind = parsed.get("type") if isinstance(parsed, dict) else None
    if not isinstance(kind, str) or not 0 < len(kind) <= 64:
        raise InvalidRequest(
            "The body must be a ChatKit request: a JSON object with a 'type' such as 'threads.list'."
        )
    return kind
