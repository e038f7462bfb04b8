"""The example ChatKit server (examples/chatkit_server) with a record of every turn it
answered: the identity in the assertion it verified (user, session id), the thread, what
the user said and the reply it streamed — ``GET /_fake/turns``. For load tests through a
gateway workflow, which check each user's reply against it.

``python -m tests.support.recording_chatkit --port P --broker URL --delay 0.05`` prints its
URL on the first line once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import warnings
from collections.abc import AsyncIterator
from typing import Any

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # chatkit.widgets at import
    from chatkit.types import AssistantMessageItem, ThreadItemDoneEvent

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from examples.chatkit_server import app as example

TURNS: list[dict[str, Any]] = []


class RecordingServer(example.GreetingServer):
    """The example's server; each finished turn appended to ``TURNS``."""

    async def respond(self, thread, input_user_message, context) -> AsyncIterator[Any]:
        reply = ""
        async for event in super().respond(thread, input_user_message, context):
            if isinstance(event, ThreadItemDoneEvent) and isinstance(
                event.item, AssistantMessageItem
            ):
                reply = "".join(part.text for part in event.item.content)
            yield event
        TURNS.append(
            {
                "user": context.user,
                "session_id": context.session_id,
                "workflow": context.workflow,
                "thread": thread.id,
                "said": example._text(input_user_message) if input_user_message else None,
                "reply": reply,
            }
        )


async def turns(request: Request) -> JSONResponse:
    return JSONResponse(TURNS)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--broker", required=True)
    parser.add_argument("--audience", default="example")
    parser.add_argument("--delay", type=float, default=0.05)
    args = parser.parse_args()
    import uvicorn

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("chatkit").setLevel(logging.WARNING)

    example.GreetingServer = RecordingServer  # create_app builds the module's server class
    options = example.Options(
        broker=args.broker, audience=args.audience, issuer=args.broker, delay=args.delay
    )
    # the test-only route beside the example (which refuses anything without an assertion)
    app = Starlette(
        routes=[
            Route("/_fake/turns", turns, methods=["GET"]),
            Mount("", app=example.create_app(options)),
        ]
    )
    config = uvicorn.Config(
        app, host="127.0.0.1", port=args.port, log_level="warning", backlog=2048, lifespan="off"
    )
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        print(f"http://127.0.0.1:{args.port}", flush=True)
        await task

    asyncio.run(serve())


if __name__ == "__main__":
    main()
