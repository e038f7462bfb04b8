"""A fake OpenAI API for tests, speaking the real ChatKit wire format (chatkit-api.md §1-3).

It runs a real aiohttp server on a loopback port in a background thread, so both in-process
apps and real ``chatkit-broker serve`` processes can call it. Tests script its answers per
workflow id (or for the next N requests) and read back every request it received.
It also serves a JWKS document (``/jwks.json``) that counts its hits and can be taken down.

Faults for the adversarial tests: ``trickle`` (the body dribbles out ``chunk`` bytes every
``interval`` s), ``reset_mid_body`` (headers and half the body, then a TCP reset),
``truncated`` (a 200 whose JSON stops halfway), ``ok`` with another ``content_type``, ``huge``
(a body of ``size`` bytes, with or without Content-Length; ``huge_sent`` counts what was
actually written before the client hung up), ``gzip`` (the answer gzip-encoded, padded with
``size`` spaces before encoding), and ``hang`` (released by ``reset``/``stop``).
``python -m tests.support.fake_openai --delay 0.05`` runs it standalone for load tests, with
``GET /_fake/sessions`` returning which user each session was minted for.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .aioserver import ThreadedServer

BODY = web.RequestKey("body", dict)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Behaviour:
    """How to answer one request. ``kind`` is one of the names in ``FakeOpenAI._answer``."""

    kind: str = "ok"
    status: int = 200
    delay: float = 0.0
    retry_after: str | None = None
    body: bytes | None = None
    interval: float = 0.0
    chunk: int = 64
    size: int = 0
    chunked: bool = False
    content_type: str | None = None


def error_json(message: str, type_: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": None}}


def chat_session(user: str, workflow: dict[str, Any], expires_after: int = 600) -> dict[str, Any]:
    """A ``ChatSession`` exactly as the API returns it (all ten required fields)."""
    now = int(time.time())
    rpm = 10
    return {
        "id": "cksess_" + secrets.token_hex(24),
        "object": "chatkit.session",
        "status": "active",
        "chatkit_configuration": {
            "automatic_thread_titling": {"enabled": True},
            "file_upload": {"enabled": False, "max_file_size": 512, "max_files": 10},
            "history": {"enabled": True, "recent_threads": None},
        },
        "client_secret": "ek_" + secrets.token_hex(24),
        "expires_at": now + expires_after,
        "max_requests_per_1_minute": rpm,
        "rate_limits": {"max_requests_per_1_minute": rpm},
        "user": user,
        "workflow": {
            "id": workflow.get("id"),
            "state_variables": workflow.get("state_variables"),
            "tracing": {"enabled": workflow.get("tracing", {}).get("enabled", True)},
            "version": workflow.get("version"),
        },
    }


@dataclass
class FakeOpenAI:
    """State and scripting. Thread-safe enough for tests: mutate between requests."""

    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    by_workflow: dict[str, Behaviour] = field(default_factory=dict)
    queue: deque[Behaviour] = field(default_factory=deque)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    jwks: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    jwks_up: bool = True
    jwks_delay: float = 0.0
    jwks_hits: int = 0
    jwks_chunk: int = 0  # > 0: the JWKS is streamed in pieces of this size
    default: Behaviour = field(default_factory=Behaviour)
    huge_sent: int = 0
    _hang_generation: int = 0
    models_headers: dict[str, str] = field(
        default_factory=lambda: {"openai-organization": "org-fake", "openai-project": "proj_fake"}
    )

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def reset(self) -> None:
        self.requests.clear()
        self.by_workflow.clear()
        self.queue.clear()
        self.sessions.clear()
        self.jwks = {"keys": []}
        self.jwks_up, self.jwks_delay, self.jwks_hits = True, 0.0, 0
        self.jwks_chunk = 0
        self.default = Behaviour()
        self.huge_sent = 0
        self.release_hangs()

    def release_hangs(self) -> None:
        """End every request held by ``hang`` (polled by the handlers)."""
        self._hang_generation += 1

    def then(self, kind: str, **kw: Any) -> FakeOpenAI:
        """Answer the next request (whatever it is) with this behaviour; chainable."""
        self.queue.append(Behaviour(kind=kind, **kw))
        return self

    def for_workflow(self, workflow_id: str, kind: str, **kw: Any) -> None:
        self.by_workflow[workflow_id] = Behaviour(kind=kind, **kw)

    def session_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/v1/chatkit/sessions"]

    def cancel_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/cancel")]

    # --- the server side -------------------------------------------------------------

    async def _record(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        self.requests.append(Recorded(request.method, request.path, dict(request.headers), body))
        return body

    def _behaviour(self, workflow_id: str | None) -> Behaviour:
        if self.queue:
            return self.queue.popleft()
        if workflow_id and workflow_id in self.by_workflow:
            return self.by_workflow[workflow_id]
        return self.default

    async def _answer(self, request: web.Request, b: Behaviour, ok: Any) -> web.StreamResponse:
        rid = {"x-request-id": "req_" + secrets.token_hex(8)}
        if b.delay:
            await asyncio.sleep(b.delay)
        if b.kind == "ok":
            if b.content_type:
                body = json.dumps(ok()).encode()
                return web.Response(body=body, content_type=b.content_type, headers=rid)
            return web.json_response(ok(), headers=rid)
        if b.kind == "trickle":
            body = json.dumps(ok()).encode()
            resp = web.StreamResponse(headers=rid | {"Content-Type": "application/json"})
            resp.content_length = len(body)
            await resp.prepare(request)
            for i in range(0, len(body), b.chunk):
                await resp.write(body[i : i + b.chunk])
                await asyncio.sleep(b.interval)
            await resp.write_eof()
            return resp
        if b.kind == "reset_mid_body":
            body = json.dumps(ok()).encode()
            resp = web.StreamResponse(headers=rid | {"Content-Type": "application/json"})
            resp.content_length = len(body)
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            await asyncio.sleep(0.05)
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        if b.kind == "truncated":
            body = json.dumps(ok()).encode()
            return web.Response(
                body=body[: len(body) // 2], content_type="application/json", headers=rid
            )
        if b.kind == "gzip":  # the ChatSession gzip-encoded, then ``size`` spaces (valid JSON)
            body = gzip.compress(json.dumps(ok()).encode() + b" " * b.size)
            headers = rid | {"Content-Type": "application/json", "Content-Encoding": "gzip"}
            return web.Response(body=body, headers=headers)
        if b.kind == "huge":
            resp = web.StreamResponse(headers=rid | {"Content-Type": "application/json"})
            if not b.chunked:
                resp.content_length = b.size
            await resp.prepare(request)
            block = b"[" + b" " * 65534 + b"]"
            try:
                while self.huge_sent < b.size:
                    await resp.write(block)
                    self.huge_sent += len(block)
                    if b.interval:
                        await asyncio.sleep(b.interval)
                await resp.write_eof()
            except (ConnectionError, RuntimeError):
                pass  # the client hung up: what it read is counted in huge_sent
            return resp
        if b.kind == "unauthorized":
            msg = "Incorrect API key provided: sk-proj-****abcd. You can find your API key at https://platform.openai.com/account/api-keys."
            return web.json_response(error_json(msg), status=401, headers=rid)
        if b.kind == "forbidden":
            return web.json_response(
                error_json("You do not have access to this resource."), status=403, headers=rid
            )
        if b.kind == "workflow_not_found":
            wf = (request.get(BODY) or {}).get("workflow", {}).get("id", "wf_?")
            return web.json_response(
                error_json(f"Workflow with id '{wf}' not found."), status=404, headers=rid
            )
        if b.kind == "rate_limited":
            headers = rid | ({"Retry-After": b.retry_after} if b.retry_after is not None else {})
            return web.json_response(
                error_json("Rate limit reached for requests", "requests"),
                status=429,
                headers=headers,
            )
        if b.kind == "status":
            body = (
                b.body
                if b.body is not None
                else json.dumps(error_json(f"HTTP {b.status}", "server_error")).encode()
            )
            headers = rid | ({"Retry-After": b.retry_after} if b.retry_after is not None else {})
            return web.Response(
                body=body, status=b.status, content_type="application/json", headers=headers
            )
        if b.kind == "not_json":
            return web.Response(
                text="<html>Bad gateway</html>",
                status=b.status,
                content_type="text/html",
                headers=rid,
            )
        if b.kind == "no_secret":
            data = ok()
            data.pop("client_secret", None)
            return web.json_response(data, headers=rid)
        if b.kind == "raw":
            return web.Response(body=b.body or b"", status=b.status, headers=rid)
        if b.kind == "reset":
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        if b.kind == "hang":
            # never answer, until the client gives up and closes the connection (a handler
            # that slept for an hour kept the fake's shutdown waiting) or release_hangs()
            generation = self._hang_generation
            while (
                request.transport is not None
                and not request.transport.is_closing()
                and generation == self._hang_generation
            ):
                await asyncio.sleep(0.02)
            raise asyncio.CancelledError
        raise AssertionError(f"unknown behaviour {b.kind}")

    async def create_session(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        request[BODY] = body if isinstance(body, dict) else {}
        workflow = request[BODY].get("workflow") or {}
        b = self._behaviour(workflow.get("id"))

        def ok() -> dict[str, Any]:
            seconds = (request[BODY].get("expires_after") or {}).get("seconds", 600)
            session = chat_session(request[BODY].get("user"), workflow, seconds)
            self.sessions[session["id"]] = session
            return session

        return await self._answer(request, b, ok)

    async def cancel_session(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        sid = request.match_info["sid"]
        b = self._behaviour(None)
        if b.kind == "ok" and sid not in self.sessions:
            return web.json_response(
                error_json(f"Chatkit Session with id '{sid}' not found."),
                status=404,
                headers={"x-request-id": "req_" + secrets.token_hex(8)},
            )

        def ok() -> dict[str, Any]:
            session = self.sessions[sid]
            session["status"] = "cancelled"
            return session

        return await self._answer(request, b, ok)

    async def models(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        b = self._behaviour(None)
        headers = dict(self.models_headers)
        if b.kind == "ok":
            data = {
                "object": "list",
                "data": [{"id": "gpt-4.1-mini", "object": "model", "owned_by": "system"}],
            }
            return web.json_response(data, headers=headers | {"x-request-id": "req_models"})
        return await self._answer(request, b, lambda: {})

    async def jwks_doc(self, request: web.Request) -> web.StreamResponse:
        self.jwks_hits += 1
        if self.jwks_delay:
            await asyncio.sleep(self.jwks_delay)
        if not self.jwks_up:
            return web.Response(status=503, text="down")
        if self.jwks_chunk:
            body = json.dumps(self.jwks).encode()
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            await resp.prepare(request)  # chunked transfer encoding
            for i in range(0, len(body), self.jwks_chunk):
                await resp.write(body[i : i + self.jwks_chunk])
                await asyncio.sleep(0.01)
            await resp.write_eof()
            return resp
        return web.json_response(self.jwks)

    async def minted(self, request: web.Request) -> web.StreamResponse:
        """Which user and secret each session was minted for (for load tests)."""
        return web.json_response(
            {
                sid: {"user": s["user"], "client_secret": s["client_secret"]}
                for sid, s in self.sessions.items()
            }
        )


class FakeOpenAIServer(ThreadedServer):
    """Runs ``FakeOpenAI`` on 127.0.0.1:<free port> in its own thread and event loop."""

    def __init__(self) -> None:
        super().__init__()
        self.fake = FakeOpenAI()

    def start(self, port: int = 0) -> FakeOpenAI:
        self.fake.url = self.serve(port)
        return self.fake

    def routes(self, app: web.Application) -> None:
        f = self.fake
        app.router.add_post("/v1/chatkit/sessions", f.create_session)
        app.router.add_post("/v1/chatkit/sessions/{sid}/cancel", f.cancel_session)
        app.router.add_get("/v1/models", f.models)
        app.router.add_get("/jwks.json", f.jwks_doc)
        app.router.add_get("/_fake/sessions", f.minted)

    async def _stop(self) -> None:
        await super()._stop()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:  # handlers still "hanging" for timeout tests
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def stop(self) -> None:
        self.fake.release_hangs()
        self.shutdown()


def main() -> None:
    """Run the fake standalone: ``python -m tests.support.fake_openai --port 0 --delay 0.05``.

    Prints ``http://127.0.0.1:<port>`` on its first line, then serves until killed.
    """
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    server = FakeOpenAIServer()
    fake = server.start(port=args.port)
    fake.default = Behaviour(delay=args.delay)
    print(fake.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
