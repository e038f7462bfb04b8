"""Attachments behind a gateway: the backend's upload and preview URLs, rewritten and relayed.

A ChatKit server behind the broker answers ``attachments.create`` with an
``upload_descriptor.url`` and a ``preview_url`` on its own, internal host, which a browser
cannot reach and must never see. So every attachment in what the broker relays to the
browser — JSON answers (``attachments.create``, ``threads.get_by_id``, ``items.list``, an
upload's answer) and each event of a stream — has those URLs replaced by broker URLs:

* ``/api/files/gateway/<workflow>/<attachment>/upload?t=…`` (two-phase upload, ten minutes,
  spent by the upload the backend accepts; a failed one leaves it for a retry) and
  ``…/preview?t=…`` (an hour, re-issued whenever the thread is read); ``<attachment>`` is the
  backend's id percent-encoded, routed whole even when it holds ``/``;
* ``t`` is sealed (``SealedFileTokens``): it names the user, the workflow and the attachment
  and carries, unreadable to the browser, the backend's own URL, the descriptor's method and
  headers and the user's forwarded claims. No state is kept.

The upload is streamed to the backend's URL as it arrives (never whole in memory; the
workflow's ``max_size`` enforced while reading), with the method and headers the descriptor
named and the broker's signed assertion for the user the URL was issued to; the preview is
streamed back. ``data:`` preview URLs pass unchanged (they name no host); any other scheme is
dropped. Direct uploads (``uploadStrategy: direct``) post to
``/api/files/gateway/<workflow>/upload?t=…``, relayed to the workflow's ``direct_upload_url``:
``t`` is sealed into the mint answer's ``uploadUrl`` for the user, workflow and session
(``DIRECT_UPLOAD_TTL``), because ChatKit's runtime is not public and nothing says it posts
direct uploads through the ``fetch`` the front-end kit gives it (which adds the session
secret); a session secret (or an app JWT) in ``Authorization`` is accepted as well. The
signed URL counts against the workflow's request limit like any request, and stops working
once its user holds no live session (signed out).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ...assertion import ASSERTION_HEADER, forwarded_claims
from ...errors import (
    BackendError,
    BackendRejectedIdentity,
    BackendTimeout,
    BackendUnavailable,
    BrokerError,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from ...files.policy import IMAGE_TYPES, FilesPolicy
from ...files.tokens import SealedFileTokens
from ...files.upload import MULTIPART_OVERHEAD
from ...files.urls import base_url
from ...httpread import read_capped
from ...ratelimit import Limit, LocalCounters
from ...session_secrets import SessionSecrets

__all__ = ["AttachmentUrls", "FileRelay", "SseRewriter", "check_create"]

log = logging.getLogger("broker.gateway")

PREFIX = "/api/files/gateway"
_ONCE = "gateway_upload"  # the namespace of upload URLs' one-use claims
# the signed direct-upload URL of a mint answer: ChatKit keeps it for the life of the page,
# across the session renewals the front-end kit does, so it outlives one session
DIRECT_UPLOAD_TTL = 12 * 3600
MAX_ANSWER_BYTES = 8 * 1024 * 1024  # an upload's JSON answer (the sample's holds a data: URL)
CHUNK = 64 * 1024
# an event or answer is parsed only when it may hold an attachment URL (or hides its keys)
MARKERS = (b'"preview_url"', b'"upload_descriptor"', b"\\u")
_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_ATTACHMENT_TYPES = ("file", "image")


def policy_of(workflow: Any) -> FilesPolicy:
    """A gateway workflow's files policy: off unless its ``[files]`` table is given."""
    files = getattr(workflow, "files", None)
    return files if isinstance(files, FilesPolicy) else FilesPolicy(enabled=False)


def _is_http(url: Any) -> bool:
    return isinstance(url, str) and urlsplit(url).scheme in ("http", "https")


def _markers(body: bytes) -> bool:
    return any(m in body for m in MARKERS)


@dataclass
class AttachmentUrls:
    """Rewrites one relayed answer's attachment URLs for the user it goes to."""

    tokens: SealedFileTokens
    base: str  # the broker's base URL as the browser reached it
    workflow: str
    user: str
    claims: Mapping[str, Any] = field(default_factory=dict)
    rewritten: int = 0

    def url(self, verb: str, attachment_id: str, **extra: Any) -> str:
        payload = {"u": self.user, "w": self.workflow, "a": attachment_id, **extra}
        if self.claims:
            payload["c"] = dict(self.claims)
        token = self.tokens.seal(verb, payload)
        where = f"{quote(self.workflow, safe='')}/{quote(attachment_id, safe='')}"
        return f"{self.base}{PREFIX}/{where}/{verb}?t={token}"

    def body(self, body: bytes) -> bytes:
        """A JSON body with every attachment's URLs rewritten (the same bytes when none)."""
        if not _markers(body):
            return body
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return body  # the proxy has checked it already; an event's data may be anything
        if not self.walk(data):
            return body
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()

    def walk(self, node: Any) -> bool:
        """Rewrite attachments anywhere in ``node`` in place; whether anything changed."""
        changed = False
        stack = [node]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                if self._is_attachment(item):
                    changed = self._attachment(item) or changed
                stack.extend(v for v in item.values() if isinstance(v, dict | list))
            elif isinstance(item, list):
                stack.extend(v for v in item if isinstance(v, dict | list))
        return changed

    @staticmethod
    def _is_attachment(item: dict[str, Any]) -> bool:
        return (
            item.get("type") in _ATTACHMENT_TYPES
            and isinstance(item.get("id"), str)
            and isinstance(item.get("mime_type"), str)
            and ("upload_descriptor" in item or "preview_url" in item)
        )

    def _attachment(self, item: dict[str, Any]) -> bool:
        attachment_id = item["id"]
        changed = False
        descriptor = item.get("upload_descriptor")
        if isinstance(descriptor, dict):
            url, method = descriptor.get("url"), str(descriptor.get("method") or "POST").upper()
            headers = descriptor.get("headers")
            if _is_http(url) and method in ("POST", "PUT"):
                sent = {
                    str(k): str(v)
                    for k, v in (headers if isinstance(headers, dict) else {}).items()
                }
                item["upload_descriptor"] = {
                    "url": self.url("upload", attachment_id, url=url, m=method, h=sent),
                    "method": method,
                    "headers": {},  # the backend's own headers are the broker's to send
                }
            else:
                log.warning(
                    "gateway: workflow %s gave attachment %s an upload descriptor the broker "
                    "cannot relay (%s); removed",
                    self.workflow,
                    attachment_id[:80],
                    "method " + method[:10] if _is_http(url) else "not an http(s) URL",
                )
                item["upload_descriptor"] = None
            changed = True
        elif descriptor is not None:
            item["upload_descriptor"] = None
            changed = True
        preview = item.get("preview_url")
        if _is_http(preview):
            item["preview_url"] = self.url("preview", attachment_id, url=preview)
            changed = True
        elif preview is not None and not (
            isinstance(preview, str) and preview[:5].lower() == "data:"
        ):
            log.warning(
                "gateway: workflow %s gave attachment %s a preview URL that is neither http(s) "
                "nor data:; removed",
                self.workflow,
                attachment_id[:80],
            )
            del item["preview_url"]
            changed = True
        self.rewritten += changed
        return changed


class SseRewriter:
    """Holds a stream's bytes to event boundaries and rewrites the events that carry
    attachments; a chunk of whole events without any passes unchanged (no copy)."""

    def __init__(self, urls: AttachmentUrls) -> None:
        self.urls = urls
        self._rest = b""

    def feed(self, chunk: bytes) -> bytes:
        if not self._rest and chunk.endswith(b"\n\n"):  # the usual chunk: whole events
            return self._events(chunk) if _markers(chunk) else chunk
        data = self._rest + chunk if self._rest else chunk
        cut = _last_boundary(data)
        if cut < 0:
            self._rest = data
            return b""
        whole, self._rest = data[:cut], data[cut:]
        return self._events(whole) if _markers(whole) else whole

    def end(self) -> bytes:
        rest, self._rest = self._rest, b""
        return self._events(rest) if rest and _markers(rest) else rest

    def _events(self, data: bytes) -> bytes:
        out: list[bytes] = []
        at = 0
        for match in _BOUNDARY.finditer(data):
            out.append(self._event(data[at : match.start()]) + match.group())
            at = match.end()
        if at < len(data):
            out.append(self._event(data[at:]))
        return b"".join(out)

    def _event(self, event: bytes) -> bytes:
        if not _markers(event):
            return event
        lines = re.split(rb"\r\n|\n|\r", event)
        data = [line[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:")]
        if not data:
            return event
        payload = b"\n".join(data)
        rewritten = self.urls.body(payload)
        if rewritten is payload:
            return event
        others = [line for line in lines if not line.startswith(b"data:")]
        return b"\n".join([*others, b"data: " + rewritten])


def _last_boundary(data: bytes) -> int:
    """The end of the last event boundary in ``data``, or -1."""
    best = -1
    for sep in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        at = data.rfind(sep)
        if at >= 0:
            best = max(best, at + len(sep))
    return best


def check_create(body: bytes, policy: FilesPolicy, workflow: str) -> None:
    """``attachments.create`` for a gateway workflow, checked before it is relayed: the
    workflow must take files, and the declared size and type must be within its policy."""
    if not policy.enabled:
        raise InvalidRequest(
            f"Workflow {workflow!r} does not accept file uploads (attachments.create); its "
            "[workflows.<name>.files] table turns them on."
        )
    params = (json.loads(body) or {}).get("params")
    params = params if isinstance(params, dict) else {}
    size, mime = params.get("size"), params.get("mime_type")
    if isinstance(size, int) and size > policy.max_size:
        raise PayloadTooLarge(
            f"The file is larger than this workflow's limit of {policy.max_size} bytes."
        )
    if isinstance(mime, str):
        base = mime.split(";", 1)[0].strip().lower()
        if not policy.allows(base):
            raise UnsupportedMediaType(
                f"This workflow does not accept {base[:60]!r} files; it accepts "
                f"{', '.join(policy.accept)}."
            )


@dataclass(frozen=True)
class Target:
    """Where one relayed file request goes, and as whom."""

    url: str
    method: str
    headers: Mapping[str, str]
    user: str
    claims: Mapping[str, Any]
    session_id: str | None = None


class FileRelay:
    """The routes that relay uploads and previews between the browser and a gateway backend.

    ``backend`` is the ``GatewayBackend``: its pool, signers, gate, limits and workflows.
    """

    def __init__(self, backend: Any, tokens: SealedFileTokens) -> None:
        self.backend = backend
        self.tokens = tokens
        self._used = LocalCounters()

    async def _claim(self, key: str) -> str | None:
        """Claim an upload URL for one use: where the claim is kept (in Redis when the broker
        has it, so every instance agrees; per process otherwise), or None when another use
        holds it or spent it."""
        ttl = self.tokens.ttl["upload"]
        if self.backend.limits is not None:
            return await self.backend.limits.first_use(_ONCE, key, ttl)
        return "local" if self._used.hit(Limit(_ONCE, "", 1, ttl, ""), key) is None else None

    async def _release(self, key: str, where: str) -> None:
        """Give a claim back after a use that did not upload the file."""
        if self.backend.limits is not None:
            await self.backend.limits.forget_use(_ONCE, key, where)
        else:
            self._used.forget(Limit(_ONCE, "", 1, 1, ""), key)

    def direct_token(
        self, workflow: str, user: str, claims: Mapping[str, Any], session_id: str | None
    ) -> str:
        """The ``t`` of a mint answer's direct ``uploadUrl``: this user, workflow, session."""
        payload: dict[str, Any] = {"u": user, "w": workflow, "s": session_id}
        if claims:
            payload["c"] = dict(claims)
        return self.tokens.seal("direct", payload)

    def routes(self) -> Sequence[BaseRoute]:
        return [
            Route(f"{PREFIX}/{{workflow}}/upload", self.direct, methods=["POST"]),
            # an id may hold "/" (sent as %2F, decoded before routing): `path` matches it
            Route(
                f"{PREFIX}/{{workflow}}/{{attachment_id:path}}/upload",
                self.upload,
                methods=["POST", "PUT"],
            ),
            Route(f"{PREFIX}/{{workflow}}/{{attachment_id:path}}/preview", self.preview),
        ]

    def urls(self, request_scope: Any, workflow: str, user: str, claims: Any) -> AttachmentUrls:
        return AttachmentUrls(
            self.tokens,
            base_url(request_scope, self.backend.settings.public_url),
            workflow,
            user,
            claims or {},
        )

    def _workflow(self, name: str) -> Any:
        workflow = self.backend.workflows.get(name)
        if workflow is None or not policy_of(workflow).enabled:
            raise NotFound(f"Workflow {name[:80]!r} takes no files through this broker.")
        return workflow

    def _opened(self, request: Request, verb: str) -> tuple[Any, dict[str, Any]]:
        name = request.path_params["workflow"]
        attachment_id = request.path_params["attachment_id"]
        payload = self.tokens.open(verb, request.query_params.get("t"), w=name, a=attachment_id)
        request.state.user = str(payload.get("u"))
        request.state.workflow = name
        return self._workflow(name), payload

    # --- two-phase upload ---------------------------------------------------------------

    async def upload(self, request: Request) -> Response:
        """``POST|PUT …/<attachment>/upload?t=…``: the bytes, streamed to the backend; the URL
        is spent once the backend took them (2xx). One use at a time: a use that failed
        (the backend down or failing, the body cut off) gives it back for a retry."""
        workflow, payload = self._opened(request, "upload")
        attachment_id = payload["a"]
        limit = self._limit(request, policy_of(workflow))
        once = f"{workflow.name}:{payload['u']}:{attachment_id}"
        claim = await self._claim(once)
        if claim is None:
            raise Forbidden(
                "This upload URL has already been used (or an upload through it is under "
                "way); attach the file again."
            )
        target = Target(
            payload["url"],
            payload.get("m", "POST"),
            payload.get("h") or {},
            payload["u"],
            payload.get("c") or {},
        )
        spent = False
        try:
            response = await self._send_upload(request, workflow, target, limit, attachment_id)
            spent = response.status_code < 300
            return response
        finally:
            if not spent:
                await self._release(once, claim)

    # --- direct upload ------------------------------------------------------------------

    async def direct(self, request: Request) -> Response:
        """``POST /api/files/gateway/<workflow>/upload``: ChatKit's direct upload, with the
        mint answer's signed ``?t=`` or the session secret (or an app JWT) as for ChatKit
        requests; relayed to the workflow's ``direct_upload_url``."""
        name = request.path_params["workflow"]
        workflow = self._workflow(name)
        if not workflow.direct_upload_url:
            raise NotFound(
                f"Workflow {name[:80]!r} uses two-phase uploads (attachments.create); it has "
                "no direct_upload_url."
            )
        authorization = request.headers.get("authorization")
        signed = request.query_params.get("t")
        if authorization is None and signed is not None:
            # the mint answer's signed uploadUrl, posted without the kit's fetch: good while
            # its user is signed in, and counted as the gate counts every other request
            payload = self.tokens.open("direct", signed, w=name)
            user, session_id = str(payload["u"]), payload.get("s")
            claims = payload.get("c") or {}
            sessions = getattr(self.backend, "sessions", None)
            if isinstance(sessions, SessionSecrets) and not await sessions.holds_session(
                user, session_id
            ):
                raise Forbidden(
                    "This upload URL's session was signed out (or ended); sign in again to "
                    "get a new one."
                )
            await self.backend.gate.count_request(workflow, user)
        else:
            admission = await self.backend.gate.admit_chatkit(authorization, workflow)
            user, session_id = admission.identity.user, admission.session_id
            claims = forwarded_claims(admission.identity.claims, workflow.forward_claims)
        request.state.user, request.state.workflow = user, name
        limit = self._limit(request, policy_of(workflow))
        target = Target(workflow.direct_upload_url, "POST", {}, user, claims, session_id)
        return await self._send_upload(request, workflow, target, limit, None)

    # --- the relay of an upload ---------------------------------------------------------

    @staticmethod
    def _limit(request: Request, policy: FilesPolicy) -> int:
        """The most bytes the body may have; a declared Content-Length over it is a 413
        before anything is sent to the backend."""
        multipart = request.headers.get("content-type", "").lower().startswith("multipart/")
        limit = policy.max_size + (MULTIPART_OVERHEAD if multipart else 0)
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise InvalidRequest("Content-Length is not a number.")
            if int(declared) > limit:
                raise PayloadTooLarge(
                    f"The file is larger than this workflow's limit of {policy.max_size} bytes."
                )
        return limit

    async def _send_upload(
        self,
        request: Request,
        workflow: Any,
        target: Target,
        limit: int,
        attachment_id: str | None,
    ) -> Response:
        cut: list[BaseException] = []  # why the body stopped before its end, if it did
        declared = request.headers.get("content-length")

        async def body() -> AsyncIterator[bytes]:
            seen = 0
            try:
                async for chunk in request.stream():
                    seen += len(chunk)
                    if seen > limit:
                        raise PayloadTooLarge(
                            "The file is larger than this workflow's limit of "
                            f"{policy_of(workflow).max_size} bytes."
                        )
                    if chunk:
                        yield chunk
            except (ClientDisconnect, BrokerError) as exc:
                cut.append(exc)
                raise
            if declared is not None and seen < int(declared):
                cut.append(ClientDisconnect())
                raise ClientDisconnect()

        headers = {k: v for k, v in target.headers.items() if not _hop(k)}
        for name in ("content-type", "content-length"):
            if (value := request.headers.get(name)) is not None:
                headers[name] = value
        headers.update(self._own(request, workflow, target))
        what = f"upload of {attachment_id[:80]}" if attachment_id else "direct upload"
        try:
            response = await self._request(workflow, target, headers, body())
        except BrokerError:
            if cut:
                raise self._cut(cut[0], what) from None
            raise
        except (aiohttp.ClientError, ClientDisconnect):
            if cut:
                raise self._cut(cut[0], what) from None
            log.warning("gateway: %s to %s failed mid-request", what, _where(target.url))
            raise BackendError("The request to the workflow's server failed.") from None
        if cut:
            response.close()
            raise self._cut(cut[0], what)
        try:
            return await self._answer(request, workflow, target, response, what)
        finally:
            response.close()

    @staticmethod
    def _cut(why: BaseException, what: str) -> BrokerError:
        if isinstance(why, BrokerError):
            log.info(
                "gateway: %s refused mid-body (%s); the backend's request was aborted",
                what,
                why.code,
            )
            return why
        log.info("gateway: %s cut off by the client; the backend's request was aborted", what)
        return InvalidRequest(
            "The upload ended before the body did; nothing was relayed whole. Send the file again."
        )

    async def _answer(
        self,
        request: Request,
        workflow: Any,
        target: Target,
        response: aiohttp.ClientResponse,
        what: str,
    ) -> Response:
        status = response.status
        self._refuse(status, target, response, what)
        content_type = response.content_type
        try:
            data = await read_capped(response.content, MAX_ANSWER_BYTES)
        except (aiohttp.ClientError, TimeoutError):
            raise BackendError("The workflow's server broke off its answer.") from None
        if len(data) > MAX_ANSWER_BYTES:
            raise BackendError("The workflow's server answered more than the broker relays.")
        json_answer = content_type == "application/json" or content_type.endswith("+json")
        if json_answer:
            try:
                json.loads(data)
            except (ValueError, RecursionError):
                json_answer = False
        if not json_answer:
            if status >= 400:
                log.warning("gateway: %s answered HTTP %d without JSON", what, status)
                raise BackendError(f"The workflow's server refused the upload (HTTP {status}).")
            data, content_type = b"{}", "application/json"
        else:
            urls = self.urls(request.scope, workflow.name, target.user, target.claims)
            data = urls.body(data)
            if status >= 400:  # the server's own error: found in the broker's log by its id
                state = request.scope.get("state") or {}
                data = error_with_id(data, str(state.get("request_id", "-"))) or data
        return Response(
            data,
            status_code=status,
            media_type=content_type,
            headers={"Cache-Control": "no-store"},
        )

    # --- preview ------------------------------------------------------------------------

    async def preview(self, request: Request) -> Response:
        """``GET …/<attachment>/preview?t=…``: the backend's preview, streamed back."""
        workflow, payload = self._opened(request, "preview")
        target = Target(payload["url"], "GET", {}, payload["u"], payload.get("c") or {})
        headers = self._own(request, workflow, target, body=b"")
        headers["accept-encoding"] = "identity"
        what = f"preview of {payload['a'][:80]}"
        response = await self._request(workflow, target, headers, None)
        try:
            if response.status in (404, 410):
                raise NotFound(f"Attachment {payload['a'][:80]} not found.")
            self._refuse(response.status, target, response, what)
            if response.status != 200:
                raise BackendError(
                    f"The workflow's server answered the preview with HTTP {response.status}."
                )
            cap = policy_of(workflow).max_size
            if (response.content_length or 0) > cap:
                raise BackendError("The workflow's server sent a preview over the files max_size.")
        except BaseException:
            response.close()
            raise
        mime = response.content_type or "application/octet-stream"
        headers = {
            "Cache-Control": "private, max-age=300",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Content-Disposition": "inline" if mime in IMAGE_TYPES else "attachment",
        }
        if response.content_length is not None:
            headers["Content-Length"] = str(response.content_length)
        if encoding := response.headers.get("Content-Encoding"):
            headers["Content-Encoding"] = encoding

        async def stream() -> AsyncIterator[bytes]:
            sent = 0
            try:
                async for chunk in response.content.iter_chunked(CHUNK):
                    sent += len(chunk)
                    if sent > cap:
                        log.warning("gateway: %s ran past the files max_size; cut", what)
                        raise BackendError("The preview is larger than the files max_size.")
                    yield chunk
            finally:
                response.close()

        return StreamingResponse(stream(), media_type=mime, headers=headers)

    # --- shared -------------------------------------------------------------------------

    def _own(
        self, request: Request, workflow: Any, target: Target, body: bytes | None = None
    ) -> dict[str, str]:
        """The broker's assertion for the user the URL was issued to, bound to this request
        (``htm``/``htu``: its method and the backend URL; a streamed upload has no
        ``req_sha256``), and the request id."""
        assertion = self.backend.sign(
            workflow,
            target.user,
            session_id=target.session_id,
            extra={**target.claims, "htm": target.method, "htu": target.url},
            body=body,
        )
        state = request.scope.get("state") or {}
        return {ASSERTION_HEADER: assertion, "X-Request-ID": str(state.get("request_id", "-"))}

    async def _request(
        self,
        workflow: Any,
        target: Target,
        headers: dict[str, str],
        data: AsyncIterator[bytes] | None,
    ) -> aiohttp.ClientResponse:
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=workflow.connect_timeout,
            sock_connect=workflow.connect_timeout,
            sock_read=workflow.idle_timeout,
        )
        try:
            return await self.backend.pool().request(
                target.method,
                target.url,
                data=data,
                headers=headers,
                allow_redirects=False,
                timeout=timeout,
                auto_decompress=False,
            )
        except aiohttp.ClientConnectorError as exc:
            log.warning("gateway: cannot connect to %s: %s", _where(target.url), exc.os_error)
            raise BackendUnavailable(
                "The workflow's server cannot be reached; try again shortly."
            ) from None
        except aiohttp.ConnectionTimeoutError:
            raise BackendTimeout(
                f"The workflow's server did not accept a connection within "
                f"{workflow.connect_timeout:g} s."
            ) from None
        except (aiohttp.SocketTimeoutError, TimeoutError):
            raise BackendTimeout(
                f"The workflow's server did not answer within {workflow.idle_timeout:g} s."
            ) from None

    @staticmethod
    def _refuse(status: int, target: Target, response: aiohttp.ClientResponse, what: str) -> None:
        """The answers never relayed: redirects (not followed, ``Location`` never passed),
        the backend refusing the assertion, and its failures."""
        if 300 <= status < 400:
            log.warning(
                "gateway: %s: %s answered a redirect (%d); redirects are not followed",
                what,
                _where(target.url),
                status,
            )
            raise BackendError(
                f"The workflow's server answered the {what.split(' ')[0]} with a redirect "
                f"(HTTP {status}); the broker does not follow it."
            )
        if status in (401, 403):
            log.warning(
                "gateway: %s: %s refused the assertion (HTTP %d)", what, _where(target.url), status
            )
            raise BackendRejectedIdentity(
                f"The workflow's server refused the broker's signed identity (HTTP {status})."
            )
        if status >= 500 or status < 200:
            log.warning("gateway: %s: %s answered HTTP %d", what, _where(target.url), status)
            raise BackendError(f"The workflow's server failed (HTTP {status}).")


_HOP = frozenset(
    {
        "host",
        "connection",
        "content-length",
        "transfer-encoding",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "authorization",
        "cookie",
        ASSERTION_HEADER.lower(),
        "x-request-id",
    }
)


def error_with_id(body: bytes, request_id: str) -> bytes | None:
    """The body with ``error.request_id`` added, or None when it is not an error object
    without one."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or "request_id" in error:
        return None
    data["error"] = {**error, "request_id": request_id}
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def _hop(name: str) -> bool:
    """A descriptor header the broker sets itself (or never sends)."""
    return name.strip().lower() in _HOP


def _where(url: str) -> str:
    """A backend URL for a log line: scheme, host and path (a query may hold a signature)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"
