"""A tiny pure-ASGI app that puts ``GatewayProxy`` behind a fixed admission, for tests.

It stands in for the broker's gate (which authenticates the caller) so the relay can be
tested through real HTTP on its own: every ``POST /chatkit/<anything>`` is admitted as
``user``, signed with ``signer`` and relayed to ``upstream``; ``/.well-known/jwks.json``
publishes the signer's keys, as the broker does.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

from starlette.types import Receive, Scope, Send

from broker.assertion import ASSERTION_HEADER, AssertionSigner
from broker.backends.gateway.proxy import GatewayProxy, Relay, Upstream
from broker.errors import BrokerError, error_body


@dataclass
class GatewayTestApp:
    proxy: GatewayProxy
    signer: AssertionSigner
    upstream: Upstream
    user: str = "alice"
    audience: str = "support"
    records: list[Relay] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        if scope["path"] == "/.well-known/jwks.json":
            await _json(send, 200, self.signer.jwks())
            return
        request_id = secrets.token_hex(8)
        record = Relay()
        self.records.append(record)
        try:
            body = await self.proxy.read_body(scope, receive)
            if body is None:
                record.outcome = "client_closed"
                return
            assertion = self.signer.sign(
                self.user, audience=self.audience, workflow=self.audience, body=body
            )
            own = [(ASSERTION_HEADER, assertion), ("X-Request-ID", request_id)]
            await self.proxy.relay(scope, receive, send, self.upstream, body, own, record)
        except BrokerError as exc:
            await _json(send, exc.status, error_body(exc.code, exc.message, request_id))


async def _json(send: Send, status: int, body: object) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
