"""A local fake of OpenAI's Responses API (``POST /v1/responses``), so the real Agents SDK
runs end to end offline.

It speaks the wire format openai-python parses: streamed SSE (``response.created``,
``response.output_item.added``, ``response.content_part.added``,
``response.output_text.delta``/``.done``, ``response.output_item.done``,
``response.completed``; function calls with ``response.function_call_arguments.*``; the
``error`` event) and the non-streamed ``Response`` JSON that ``Runner.run`` asks for.
tests/support/test_fake_responses.py validates every event against openai-python's types.

Tests script replies in order (``fake.script(text("hi"), tool_call("lookup", {...}))``);
an unscripted request is answered by echoing its last user message. Each reply can pause
``delay`` seconds between events, end with an HTTP error or an ``error`` event, or
``hang`` after some deltas until the test (or ``reset``) releases it. Every request is
recorded (``fake.requests``). The server runs in its own thread and loop, so in-process
apps and real ``chatkit-broker serve`` processes can both call it.

Standalone (``python -m tests.support.fake_responses --delay 0.05 --tag``, for load tests that
want the model in its own process), echoes pause between events, end with a random tag so each
reply is unique, and ``GET /_fake/turns`` lists every turn compactly: the agent's instructions
(which name the caller, see ``load_agent``), the last user message and the reply generated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .aioserver import ThreadedServer
from .fake_guardrail_apis import Rules, chat_completion, fill_schema, moderation

__all__ = [
    "FakeResponses",
    "FakeResponsesServer",
    "Reply",
    "garbage",
    "http_error",
    "reset",
    "stream_error",
    "text",
    "tool_call",
]


@dataclass
class Reply:
    """One scripted answer to one ``POST /v1/responses``.

    ``outputs`` are ("message", text) or ("function_call", (name, arguments_json, call_id)).
    ``chunks`` is how many deltas a message is cut into; ``hang_after`` stops the stream
    after that many deltas of the first message until released; ``fail_after`` sends an
    ``error`` event after that many deltas; ``status`` other than 200 answers with an
    OpenAI error JSON body instead of a response.
    """

    outputs: list[tuple[str, Any]] = field(default_factory=list)
    chunks: int = 3
    delay: float = 0.0
    hang_after: int | None = None
    fail_after: int | None = None
    status: int = 200
    message: str = ""
    item_id: str | None = None  # a fixed message id, e.g. "__fake_id__" as Chat Completions gives
    reset_after: int | None = None  # tear the connection down after that many deltas
    garbage: bytes | None = None  # answer 200 text/event-stream with these bytes instead
    usage: bool = True  # False: the completed response carries "usage": null


def text(
    value: str,
    *,
    chunks: int = 3,
    delay: float = 0.0,
    hang_after: int | None = None,
    item_id: str | None = None,
    usage: bool = True,
) -> Reply:
    return Reply(
        outputs=[("message", value)],
        chunks=chunks,
        delay=delay,
        hang_after=hang_after,
        item_id=item_id,
        usage=usage,
    )


def tool_call(name: str, arguments: dict[str, Any], *, call_id: str | None = None) -> Reply:
    call_id = call_id or "call_" + secrets.token_hex(6)
    return Reply(outputs=[("function_call", (name, json.dumps(arguments), call_id))])


def http_error(status: int, message: str = "The fake was told to fail.") -> Reply:
    return Reply(status=status, message=message)


def reset(value: str, *, after: int = 1, chunks: int = 4) -> Reply:
    """A streamed message whose connection is torn down (RST) after ``after`` deltas."""
    return Reply(outputs=[("message", value)], chunks=chunks, reset_after=after)


def garbage(body: bytes) -> Reply:
    """``200 text/event-stream`` whose body is ``body``: not the Responses API at all."""
    return Reply(garbage=body)


def stream_error(
    message: str = "The fake stream failed.",
    *,
    after: int = 1,
    partial: str = "Starting a reply that",
) -> Reply:
    return Reply(outputs=[("message", partial)], fail_after=after, message=message)


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def input(self) -> list[Any]:
        value = self.body.get("input", [])
        return value if isinstance(value, list) else [{"role": "user", "content": value}]

    def texts(self, role: str | None = None) -> list[str]:
        """The text of every input message (optionally of one role), in order."""
        out = []
        for entry in self.input:
            if entry.get("type", "message") != "message" or (role and entry.get("role") != role):
                continue
            content = entry.get("content")
            if isinstance(content, str):
                out.append(content)
                continue
            out.append("".join(part.get("text", "") for part in content or []))
        return out


def _split(value: str, pieces: int) -> list[str]:
    pieces = max(1, min(pieces, len(value) or 1))
    size = -(-len(value) // pieces) if value else 1
    return [value[i : i + size] for i in range(0, len(value), size)] or [""]


def count_tokens(value: Any) -> int:
    """The fake's tokenizer: one token per 4 characters of the JSON, as a rough real one."""
    return len(json.dumps(value, ensure_ascii=False)) // 4 + 1


def _usage(body: dict[str, Any], output: list[dict[str, Any]]) -> dict[str, Any]:
    """Usage as the real API reports it: tokens of the request's input and of the output."""
    input_tokens = count_tokens([body.get("instructions"), body.get("input"), body.get("tools")])
    output_tokens = count_tokens(output)
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def response_object(
    resp_id: str,
    model: str,
    output: list[dict[str, Any]],
    status: str,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": resp_id,
        "object": "response",
        "created_at": int(time.time()),
        "model": model,
        "status": status,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
    }


def message_item(item_id: str, value: str, status: str) -> dict[str, Any]:
    content = (
        []
        if status == "in_progress"
        else [{"type": "output_text", "text": value, "annotations": [], "logprobs": []}]
    )
    return {
        "type": "message",
        "id": item_id,
        "role": "assistant",
        "status": status,
        "content": content,
    }


def function_item(
    item_id: str, name: str, arguments: str, call_id: str, status: str
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments if status == "completed" else "",
        "status": status,
    }


class FakeResponses:
    """The fake's state: scripted replies, recorded requests, hanging streams."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[Recorded] = []
        self._script: deque[Reply] = deque()
        self._release: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.hanging = threading.Event()  # set while a reply hangs, for tests to wait on
        self.disconnected = threading.Event()  # set when a client hung up on a stream
        # standalone load mode (main()): how echoes stream, and the compact turn record
        self.echo_delay = 0.0
        self.echo_tag = False
        self.keep_requests = True
        self.turns: list[dict[str, Any]] = []
        # what /v1/moderations and /v1/chat/completions flag (fake_guardrail_apis.py)
        self.rules = Rules()
        self.http_errors: dict[str, int] = {}  # path -> status to answer instead, for faults
        #: the usage of every response served with one (model, usage), for tests to sum
        self.served: list[tuple[str, dict[str, Any]]] = []

    @property
    def base_url(self) -> str:
        """What to pass as the OpenAI base URL (``…/v1``)."""
        return self.url + "/v1"

    def script(self, *replies: Reply) -> None:
        self._script.extend(replies)

    def reset(self) -> None:
        self.release()
        self._script.clear()
        self.requests.clear()
        self.turns.clear()
        self.hanging.clear()
        self.disconnected.clear()
        self.rules = Rules()
        self.http_errors.clear()
        self.served.clear()

    def tokens_served(self) -> int:
        """Total tokens of every usage the fake reported (what the broker should have counted)."""
        return sum(u["total_tokens"] for _, u in self.served)

    def _report(self, reply: Reply, body: dict[str, Any], model: str, output: list[Any]) -> Any:
        if not reply.usage:
            return None
        usage = _usage(body, output)
        self.served.append((model, usage))
        return usage

    def calls(self, path: str) -> list[Recorded]:
        """The recorded requests to one endpoint, e.g. ``"/v1/moderations"``."""
        return [r for r in self.requests if r.path == path]

    async def transcription(self, request: web.Request) -> web.Response:
        """``POST /v1/audio/transcriptions`` (multipart: ``file``, ``model``): answers
        ``{"text", "usage"}`` as OpenAI does for the gpt-4o transcribe models; the text names
        what arrived, and the request is recorded with the file's name, type and size."""
        status = self.http_errors.get(request.path)
        if status:
            body = {"error": {"message": "The fake was told to fail.", "type": "server_error"}}
            return web.json_response(body, status=status)
        fields: dict[str, Any] = {}
        reader = await request.multipart()
        async for part in reader:
            data = await part.read()  # type: ignore[union-attr]
            if part.name == "file":  # type: ignore[union-attr]
                fields["file"] = {
                    "filename": part.filename,  # type: ignore[union-attr]
                    "content_type": part.headers.get("Content-Type"),  # type: ignore[union-attr]
                    "size": len(data),
                }
            else:
                fields[str(part.name)] = data.decode()  # type: ignore[union-attr]
        self.requests.append(Recorded(request.path, dict(request.headers), fields))
        if "file" not in fields or "model" not in fields:
            body = {
                "error": {"message": "file and model are required", "type": "invalid_request_error"}
            }
            return web.json_response(body, status=400)
        size = fields["file"]["size"]
        return web.json_response(
            {
                "text": f"transcribed {size} bytes with {fields['model']}",
                "usage": {"type": "duration", "seconds": 2},
            }
        )

    async def guardrail_api(self, request: web.Request) -> web.Response:
        """``POST /v1/chat/completions`` and ``POST /v1/moderations`` (fake_guardrail_apis)."""
        try:
            body = await request.json()
        except ValueError:
            return web.json_response(_error("The body is not JSON."), status=400)
        self.requests.append(Recorded(request.path, dict(request.headers), body))
        status = self.http_errors.get(request.path)
        if status is not None:
            return web.json_response(_error("The fake was told to fail."), status=status)
        if request.path.endswith("/moderations"):
            return web.json_response(moderation(body, self.rules))
        if body.get("stream"):
            return web.json_response(
                _error("This fake answers Chat Completions unstreamed only."), status=400
            )
        answer = chat_completion(body, self.rules)
        # usage as the real API reports it (counted like the Responses answers), and served
        prompt = count_tokens(body.get("messages"))
        completion = count_tokens(answer["choices"][0]["message"]["content"])
        answer["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }
        self.served.append((answer["model"], answer["usage"]))
        return web.json_response(answer)

    async def models(self, request: web.Request) -> web.Response:
        """``GET /v1/models``, as doctor's key check reads it (the key's project in headers)."""
        data = {"object": "list", "data": [{"id": "gpt-4.1-mini", "object": "model"}]}
        headers = {"openai-organization": "org-fake", "openai-project": "proj_fake"}
        return web.json_response(data, headers=headers | {"x-request-id": "req_models"})

    async def _hold(self, request: web.Request) -> bool:
        """Hang until ``release``: True then, False as soon as the client hangs up (noticed
        while hanging, so a test waits for that event instead of guessing how long the
        client takes to hang up before it releases the reply)."""
        assert self._release is not None
        while True:
            try:
                await asyncio.wait_for(self._release.wait(), 0.05)
                return True
            except TimeoutError:
                transport = request.transport
                if transport is None or transport.is_closing():
                    return False

    def release(self) -> None:
        """Let every hanging reply finish."""
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self._loop = asyncio.get_running_loop()
        if self._release is None or self._release.is_set():
            self._release = asyncio.Event()
        try:
            body = await request.json()
        except ValueError:
            return web.json_response(_error("The body is not JSON."), status=400)
        recorded = Recorded(request.path, dict(request.headers), body)
        if self.keep_requests:
            self.requests.append(recorded)
        reply = self._script.popleft() if self._script else self._echo(body)
        said = recorded.texts("user")
        self.turns.append(
            {
                "instructions": body.get("instructions"),
                "said": said[-1] if said else None,
                "reply": "".join(v for kind, v in reply.outputs if kind == "message"),
            }
        )
        if reply.status != 200:
            return web.json_response(_error(reply.message), status=reply.status)
        model = str(body.get("model") or "gpt-fake")
        if body.get("stream"):
            return await self._stream(request, reply, model, body)
        return web.json_response(self._final(reply, model, body))

    def _echo(self, body: dict[str, Any]) -> Reply:
        texts = Recorded("", {}, body).texts("user")
        tag = f" #{secrets.token_hex(6)}" if self.echo_tag else ""
        said = f"echo: {texts[-1] if texts else ''}{tag}"
        fmt = (body.get("text") or {}).get("format") or {}
        if fmt.get("type") == "json_schema":  # an agent with an output_type: valid JSON of it
            said = json.dumps(fill_schema(fmt.get("schema") or {}, flagged=False, text=said))
        return text(said, delay=self.echo_delay)

    async def turns_endpoint(self, request: web.Request) -> web.Response:
        return web.json_response(self.turns)

    async def usage_endpoint(self, request: web.Request) -> web.Response:
        """``GET /_fake/usage``: what the fake reported, for a broker's usage to be checked."""
        return web.json_response({"calls": len(self.served), "total_tokens": self.tokens_served()})

    def _final(self, reply: Reply, model: str, body: dict[str, Any]) -> dict[str, Any]:
        output = []
        for kind, value in reply.outputs:
            if kind == "message":
                output.append(message_item("msg_" + secrets.token_hex(12), value, "completed"))
            else:
                name, arguments, call_id = value
                output.append(
                    function_item(
                        "fc_" + secrets.token_hex(12), name, arguments, call_id, "completed"
                    )
                )
        usage = self._report(reply, body, model, output)
        return response_object("resp_" + secrets.token_hex(12), model, output, "completed", usage)

    async def _stream(
        self, request: web.Request, reply: Reply, model: str, body: dict[str, Any]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        if reply.garbage is not None:
            await resp.write(reply.garbage)
            await resp.write_eof()
            return resp
        seq = 0
        resp_id = "resp_" + secrets.token_hex(12)

        async def send(event: dict[str, Any]) -> None:
            nonlocal seq
            if reply.delay and seq:
                await asyncio.sleep(reply.delay)
            event = {"type": event.pop("type"), "sequence_number": seq, **event}
            seq += 1
            await resp.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())

        try:
            await send(
                {
                    "type": "response.created",
                    "response": response_object(resp_id, model, [], "in_progress"),
                }
            )
            done: list[dict[str, Any]] = []
            deltas_sent = 0
            for index, (kind, value) in enumerate(reply.outputs):
                if kind == "function_call":
                    name, arguments, call_id = value
                    item_id = "fc_" + secrets.token_hex(12)
                    await send(
                        {
                            "type": "response.output_item.added",
                            "output_index": index,
                            "item": function_item(item_id, name, arguments, call_id, "in_progress"),
                        }
                    )
                    await send(
                        {
                            "type": "response.function_call_arguments.delta",
                            "item_id": item_id,
                            "output_index": index,
                            "delta": arguments,
                        }
                    )
                    await send(
                        {
                            "type": "response.function_call_arguments.done",
                            "item_id": item_id,
                            "output_index": index,
                            "arguments": arguments,
                            "name": name,
                        }
                    )
                    item = function_item(item_id, name, arguments, call_id, "completed")
                    await send(
                        {"type": "response.output_item.done", "output_index": index, "item": item}
                    )
                    done.append(item)
                    continue
                item_id = reply.item_id or "msg_" + secrets.token_hex(12)
                where = {"item_id": item_id, "output_index": index, "content_index": 0}
                await send(
                    {
                        "type": "response.output_item.added",
                        "output_index": index,
                        "item": message_item(item_id, value, "in_progress"),
                    }
                )
                await send(
                    {
                        "type": "response.content_part.added",
                        **where,
                        "part": {
                            "type": "output_text",
                            "text": "",
                            "annotations": [],
                            "logprobs": [],
                        },
                    }
                )
                for delta in _split(value, reply.chunks):
                    if reply.fail_after is not None and deltas_sent >= reply.fail_after:
                        await send(
                            {
                                "type": "error",
                                "code": "server_error",
                                "message": reply.message,
                                "param": None,
                            }
                        )
                        return resp
                    if reply.reset_after is not None and deltas_sent >= reply.reset_after:
                        assert request.transport is not None
                        request.transport.abort()  # RST mid-body
                        self.disconnected.set()
                        return resp
                    if reply.hang_after is not None and deltas_sent >= reply.hang_after:
                        self.hanging.set()
                        if not await self._hold(request):
                            self.disconnected.set()  # the client hung up on the silent reply
                            return resp
                    await send(
                        {
                            "type": "response.output_text.delta",
                            **where,
                            "delta": delta,
                            "logprobs": [],
                        }
                    )
                    deltas_sent += 1
                await send(
                    {"type": "response.output_text.done", **where, "text": value, "logprobs": []}
                )
                part = {"type": "output_text", "text": value, "annotations": [], "logprobs": []}
                await send({"type": "response.content_part.done", **where, "part": part})
                item = message_item(item_id, value, "completed")
                await send(
                    {"type": "response.output_item.done", "output_index": index, "item": item}
                )
                done.append(item)
            await send(
                {
                    "type": "response.completed",
                    "response": response_object(
                        resp_id, model, done, "completed", self._report(reply, body, model, done)
                    ),
                }
            )
            await resp.write_eof()
        except ConnectionResetError:
            self.disconnected.set()  # the client hung up: nothing more to send
        except asyncio.CancelledError:
            self.disconnected.set()
            raise
        return resp


def _error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


class FakeResponsesServer(ThreadedServer):
    """Runs ``FakeResponses`` on 127.0.0.1:<free port> in its own thread and event loop."""

    client_max_size = 8 * 1024 * 1024
    backlog = 1024

    def __init__(self) -> None:
        super().__init__()
        self.fake = FakeResponses()

    def start(self, port: int = 0) -> FakeResponses:
        self.fake.url = self.serve(port)
        return self.fake

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/responses", self.fake.handle)
        app.router.add_post("/v1/chat/completions", self.fake.guardrail_api)
        app.router.add_post("/v1/moderations", self.fake.guardrail_api)
        app.router.add_post("/v1/audio/transcriptions", self.fake.transcription)
        app.router.add_get("/v1/models", self.fake.models)
        app.router.add_get("/_fake/turns", self.fake.turns_endpoint)
        app.router.add_get("/_fake/usage", self.fake.usage_endpoint)

    def stop(self) -> None:
        self.fake.release()
        self.shutdown()


def main() -> None:
    """Run the fake standalone: ``python -m tests.support.fake_responses --delay 0.05 --tag``.

    Prints ``http://127.0.0.1:<port>`` on its first line, then serves until killed.
    """
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between events")
    parser.add_argument("--tag", action="store_true", help="end each echo with a random tag")
    args = parser.parse_args()
    server = FakeResponsesServer()
    fake = server.start(port=args.port)
    fake.echo_delay, fake.echo_tag, fake.keep_requests = args.delay, args.tag, False
    print(fake.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
