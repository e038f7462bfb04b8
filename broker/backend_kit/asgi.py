"""``AssertionMiddleware``: every request verified before your ChatKit server sees it.

Pure ASGI (no framework): it verifies the ``ChatKit-Broker-Assertion`` header, then reads
the body when the assertion is bound to it (``req_sha256``: every ChatKit request, capped at
``max_body_bytes``) or, when it is bound to the request's method and URL instead
(``htm``/``htu``: a file upload the broker streams and could not hash), lets the body stream
through to the app unread, uncapped (the broker enforced the workflow's ``max_size``). It
refuses with 401 (503 while the broker's keys were never fetched) and otherwise runs the app with the verified caller in ``current_user()``
(a context variable, so a ``Store`` deep inside chatkit can read it without plumbing) and
in ``scope["state"]["chatkit_assertion"]`` (``request.state.chatkit_assertion``).

It also turns chatkit's ``NotFoundError`` into a 404 when it escapes before the first byte
of the answer — which is why it holds the response head until the first body chunk: a
streaming request naming another user's thread fails in its first ``load_thread``, before
any event, and must be a 404 rather than a 200 that breaks off.
"""

from __future__ import annotations

import contextvars
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .verifier import (
    ASSERTION_HEADER,
    DEFAULT_ISSUER,
    AssertionKeysUnavailable,
    AssertionVerifier,
    InvalidAssertion,
    VerifiedAssertion,
    check_request,
)

log = logging.getLogger("chatkit_broker.kit")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 1024 * 1024
_HEADER = ASSERTION_HEADER.lower().encode()
_current: contextvars.ContextVar[VerifiedAssertion | None] = contextvars.ContextVar(
    "chatkit_broker_assertion", default=None
)


def current_assertion() -> VerifiedAssertion | None:
    """The verified caller of the request being handled, or None outside of one."""
    return _current.get()


def current_user() -> str | None:
    """The verified user id of the request being handled, or None outside of one."""
    verified = _current.get()
    return verified.user if verified is not None else None


def set_current(verified: VerifiedAssertion) -> None:
    """Make ``verified`` the caller for the rest of this task (the Starlette dependency)."""
    _current.set(verified)


class _QuietNotFound(logging.Filter):
    """Drops chatkit's "Error while generating streamed response" traceback when the error is
    a ``NotFoundError``: another user's thread is a 404 (logged by the middleware in one
    line), not a server error."""

    def __init__(self, not_found: type[BaseException]) -> None:
        super().__init__()
        self.not_found = not_found

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, self.not_found)


def _not_found_types() -> tuple[type[BaseException], ...]:
    try:
        from chatkit.store import NotFoundError
    except ImportError:  # a server without chatkit: nothing to translate
        return ()
    chatkit_log = logging.getLogger("chatkit")
    if not any(isinstance(f, _QuietNotFound) for f in chatkit_log.filters):
        chatkit_log.addFilter(_QuietNotFound(NotFoundError))
    return (NotFoundError,)


async def _answer(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def request_targets(scope: Scope) -> tuple[str, ...]:
    """The path and ``?query`` of an ASGI request, as ``htu`` may name it: as received
    (``raw_path``, percent-encoded) and with the app's ``root_path`` in front or taken off."""
    raw = scope.get("raw_path")
    if isinstance(raw, bytes | bytearray) and raw:
        path = bytes(raw).decode("latin-1").split("?", 1)[0]
    else:  # ``path`` is decoded: quote it back so that decoding again gives it unchanged
        path = urllib.parse.quote(scope.get("path") or "/", safe="/")
    root = urllib.parse.quote(scope.get("root_path") or "", safe="/").rstrip("/")
    paths = [path]
    if root:
        paths.append(path[len(root) :] or "/" if path.startswith(root + "/") else root + path)
    query = bytes(scope.get("query_string") or b"").decode("latin-1")
    return tuple(p + "?" + query if query else p for p in paths)


class AssertionMiddleware:
    """Refuses every HTTP request without a valid broker assertion for ``audience``.

    ``app.add_middleware(AssertionMiddleware, jwks_url=…, audience=…, issuer=…)`` in
    FastAPI/Starlette, or wrap any ASGI app. ``exempt`` paths (e.g. a health check) pass
    unverified; everything else — including any route the browser could reach without the
    broker — needs the assertion.
    """

    def __init__(
        self,
        app: ASGIApp,
        verifier: AssertionVerifier | None = None,
        *,
        jwks_url: str | None = None,
        audience: str | None = None,
        issuer: str = DEFAULT_ISSUER,
        secret: str | bytes | None = None,
        exempt: Iterable[str] = (),
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.app = app
        self.verifier = verifier or AssertionVerifier(
            jwks_url=jwks_url, audience=audience or "", issuer=issuer, secret=secret
        )
        self.exempt = frozenset(exempt)
        self.max_body_bytes = max_body_bytes
        self._not_found = _not_found_types()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.exempt:
            await self.app(scope, receive, send)
            return
        token = next((v.decode("latin-1") for k, v in scope["headers"] if k == _HEADER), None)
        method, targets = scope["method"], request_targets(scope)
        try:
            verified = await self.verifier.authenticate(token)
            body: bytes | None = None
            if "req_sha256" in verified.claims:
                read = bytearray()
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    read += message.get("body", b"")
                    if len(read) > self.max_body_bytes:
                        await _answer(
                            send, 413, "payload_too_large", "The request body is too large."
                        )
                        return
                    if not message.get("more_body", False):
                        break
                body = bytes(read)
            # body None: an upload bound to its method and URL, streamed to the app unread
            check_request(verified, method=method, target=targets, body=body)
            self.verifier.spend(verified)
        except InvalidAssertion as exc:
            log.warning("chatkit-broker kit: refused %s %s: %s", method, scope["path"], exc)
            await _answer(send, 401, "invalid_assertion", f"Refused: {exc}.")
            return
        except AssertionKeysUnavailable as exc:
            await _answer(send, 503, "assertion_keys_unavailable", f"{exc}.")
            return
        scope.setdefault("state", {})["chatkit_assertion"] = verified
        await self._run(scope, body, send, receive, verified)

    async def _run(
        self,
        scope: Scope,
        body: bytes | None,
        send: Send,
        receive: Receive,
        verified: VerifiedAssertion,
    ) -> None:
        delivered = body is None  # None: the body was not read, the app reads it itself

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body or b"", "more_body": False}
            return await receive()

        held: Message | None = None
        buffered: list[Message] = []  # a 500's whole answer, until the app has returned
        started = False

        async def hold_head(message: Message) -> None:
            nonlocal held, started
            if message["type"] == "http.response.start":
                held = message
                return
            if held is not None and held["status"] == 500:
                # Starlette's ServerErrorMiddleware sends its 500 and *then* re-raises: keep
                # it until we know whether the error was a NotFoundError (then a 404)
                buffered.append(message)
                return
            if held is not None:
                started, head, held = True, held, None
                await send(head)
            await send(message)

        token = _current.set(verified)
        try:
            await self.app(scope, replay, hold_head)
        except self._not_found as exc:  # type: ignore[misc]
            if started:
                raise
            log.info("chatkit-broker kit: 404 for %s: %s", verified.user, exc)
            await _answer(send, 404, "not_found", "Not found.")
            return
        except BaseException:
            if held is not None and not started:
                await send(held)
                for message in buffered:
                    await send(message)
            raise
        finally:
            _current.reset(token)
        if held is not None:
            await send(held)
            for message in buffered:
                await send(message)
