"""The gateway backend: ``POST /chatkit/<name>`` relayed to the workflow's own ChatKit server.

The gate has already authenticated the caller and checked the allowlist when ``serve`` runs;
this adds what only the gateway knows: the per-user message limit (counted on the request
types that start a model turn), the signed assertion for this request, the relay, and one
access-log line and metrics saying how the request ended.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

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
from ...errors import BrokerError, InvalidRequest, error_body
from .headers import HeaderPolicy
from .metrics import GatewayMetrics
from .proxy import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    GatewayPool,
    GatewayProxy,
    Relay,
    StreamAborted,
    Upstream,
)

log = logging.getLogger("broker.gateway")
access_log = logging.getLogger("broker.gateway.access")

JWKS_PATH = "/.well-known/jwks.json"
# the request types that start a model turn: what max_messages_per_minute counts
STREAMING_TYPES = frozenset(
    {
        "threads.create",
        "threads.add_user_message",
        "threads.retry_after_item",
        "threads.custom_action",
    }
)

# (user, workflow, per_minute) → raises RateLimited when over; shared across instances
MessageLimiter = Callable[[str, str, int], Awaitable[None]]


class _Identity(Protocol):
    user: str
    claims: Mapping[str, Any]


class _Admission(Protocol):
    identity: _Identity
    workflow: Any
    session_id: str | None


@dataclass(frozen=True)
class GatewaySettings:
    """The gateway's share of the broker's settings (see ``.env.example``)."""

    assertion_key: str | None = None  # BROKER_ASSERTION_KEY: PEM text or @path
    previous_keys: tuple[str, ...] = ()  # BROKER_ASSERTION_PREVIOUS_KEYS: @path, …
    assertion_secret: str | None = None  # BROKER_ASSERTION_SECRET, for assertion = "hs256"
    public_url: str | None = None  # BROKER_PUBLIC_URL: the assertions' iss, the JWKS URL
    strip_headers: tuple[str, ...] = ()  # BROKER_GATEWAY_STRIP_HEADERS

    @property
    def issuer(self) -> str:
        return self.public_url or "chatkit-broker"

    @property
    def jwks_url(self) -> str:
        base = (self.public_url or "http://<broker>").rstrip("/")
        return base + JWKS_PATH


def audience_of(workflow: Any) -> str:
    """A workflow's audience: its ``audience`` option, else its name."""
    return getattr(workflow, "audience", None) or workflow.name


class GatewayBackend:
    """Serves every ``kind = "gateway"`` workflow through one shared proxy and pool."""

    kind = "gateway"

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        metrics: GatewayMetrics | None = None,
        limiter: MessageLimiter | None = None,
        pool: GatewayPool | None = None,
        signer: AssertionSigner | None = None,
        render_error: Callable[[Send, BrokerError, str], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.signer = signer or AssertionSigner.from_config(
            settings.assertion_key, settings.previous_keys, issuer=settings.issuer
        )
        self.hmac_signer = (
            HMACAssertionSigner(settings.assertion_secret, issuer=settings.issuer)
            if settings.assertion_secret
            else None
        )
        self.pool = pool or GatewayPool()
        self.metrics = metrics
        self._limiter = limiter
        self._render_error = render_error or _send_error
        self.proxy = GatewayProxy(
            self.pool,
            HeaderPolicy(settings.strip_headers),
            on_stream=self._stream_counted if metrics is not None else None,
        )

    # --- the Backend protocol -----------------------------------------------------------

    async def startup(self) -> None:
        if self.signer.ephemeral:
            log.warning(
                "BROKER_ASSERTION_KEY is not set: gateway assertions are signed with a key made "
                "at start-up (one per instance, new on restart); set it for production"
            )

    async def shutdown(self) -> None:
        await self.pool.close()

    def readiness(self) -> list[Callable[[], Awaitable[str | None]]]:
        # a gateway backend being down is that workflow's 503, not the broker's unreadiness
        return []

    def routes(self) -> list[BaseRoute]:
        return [Route(JWKS_PATH, self.jwks_endpoint, methods=["GET"])]

    async def jwks_endpoint(self, request: Request) -> Response:
        """The public keys backends verify assertions with; cacheable for a few minutes."""
        return JSONResponse(self.signer.jwks(), headers={"Cache-Control": "public, max-age=300"})

    def signer_for(self, workflow: Any) -> AssertionSigner | HMACAssertionSigner:
        if getattr(workflow, "assertion", "es256") == "hs256":
            if self.hmac_signer is None:  # config validation should make this impossible
                raise BrokerError("BROKER_ASSERTION_SECRET is required for hs256 workflows.")
            return self.hmac_signer
        return self.signer

    def upstream_for(self, workflow: Any) -> Upstream:
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
            workflow.server,
            workflow=workflow.name,
            connect_timeout=getattr(workflow, "connect_timeout", None) or DEFAULT_CONNECT_TIMEOUT,
            idle_timeout=getattr(workflow, "idle_timeout", None) or DEFAULT_IDLE_TIMEOUT,
            identity_hint=hint,
        )

    async def serve(
        self, admission: _Admission, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Relay one admitted ``POST /chatkit/<name>``; never raises before the first byte."""
        workflow = admission.workflow
        state = scope.setdefault("state", {})
        request_id = str(state.get("request_id", "-"))
        record = Relay()
        request_type = "-"
        try:
            body = await self.proxy.read_body(scope, receive)
            if body is None:
                record.outcome = "client_closed"
                return
            request_type = _request_type(body)
            per_minute = getattr(workflow, "max_messages_per_minute", None)
            if per_minute and request_type in STREAMING_TYPES and self._limiter is not None:
                await self._limiter(admission.identity.user, workflow.name, per_minute)
            signer = self.signer_for(workflow)
            assertion = signer.sign(
                admission.identity.user,
                audience=audience_of(workflow),
                workflow=workflow.name,
                session_id=admission.session_id,
                extra=forwarded_claims(
                    admission.identity.claims, getattr(workflow, "forward_claims", ()) or ()
                ),
                body=body,
            )
            own = [(ASSERTION_HEADER, assertion), ("X-Request-ID", request_id)]
            await self.proxy.relay(
                scope, receive, send, self.upstream_for(workflow), body, own, record
            )
        except StreamAborted:
            # returning without completing the response makes the server drop the
            # connection: the browser sees a broken stream, not a finished reply
            return
        except BrokerError as exc:
            record.outcome, record.status = exc.code, exc.status
            await self._render_error(send, exc, request_id)
        finally:
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
        if self.metrics is not None:
            self.metrics.finished(workflow, record)
        state.update(outcome=str(record.outcome), relayed_bytes=record.bytes_out)
        ttfb = f"{record.ttfb * 1000:.1f}ms" if record.ttfb is not None else "-"
        access_log.info(
            "gateway %s %s %s %s in %.1fms, first byte %s, %d bytes",
            workflow,
            request_type,
            record.status if record.status is not None else "-",
            record.outcome,
            record.duration * 1000,
            ttfb,
            record.bytes_out,
            extra={
                "workflow": workflow,
                "status": record.status,
                "ms": round(record.duration * 1000, 2),
                "outcome": str(record.outcome),
                "type": request_type,
                "bytes": record.bytes_out,
            },
        )


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


async def _send_error(send: Send, error: BrokerError, request_id: str) -> None:
    body = json.dumps(error_body(error.code, error.message, request_id)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def configured_strip_headers(value: str | None) -> Sequence[str]:
    """``BROKER_GATEWAY_STRIP_HEADERS``: comma-separated names, ``Prefix-*`` for prefixes."""
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())
