"""Attachments behind a gateway workflow, through real HTTP: the browser (httpx) → the whole
broker (uvicorn) → a server shaped like OpenAI's customer-support sample (uvicorn), whose
upload and preview URLs are on its own host.

Every byte the browser receives (bodies and headers) is kept, and none may name the
backend's host: its URLs are rewritten to signed broker URLs and relayed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import pytest

from broker.app import create_app
from broker.assertion import ASSERTION_HEADER, generate_private_key_pem
from broker.config import load_settings
from tests.support import jwt_kit
from tests.support.asgi_server import bound_socket, run_asgi
from tests.support.chatkit_bodies import create
from tests.support.fake_backend import sse_events
from tests.support.sample_shaped import KitOptions, SampleFiles
from tests.support.sample_shaped import create_app as create_sample

JWT_SECRET = "test-jwt-secret-that-is-at-least-32-bytes!"
SESSION_SECRET = "test-session-secret-that-is-32-bytes-long"
MAX_SIZE = 200_000


def png(size: int = 1000) -> bytes:
    """A real PNG of about ``size`` bytes (an 8-bit grey image, stored uncompressed)."""
    width = max(1, int(size**0.5))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + bytes((x * 7) % 256 for x in range(width)) for _ in range(width))
    header = struct.pack(">IIBBBBB", width, width, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 0))
        + chunk(b"IEND", b"")
    )


@dataclass
class Browser:
    """An httpx client that keeps every byte it received, headers included."""

    client: httpx.AsyncClient
    received: list[bytes] = field(default_factory=list)

    async def keep(self, response: httpx.Response) -> None:
        await response.aread()
        self.received.append(response.content)
        self.received.extend(f"{k}: {v}".encode() for k, v in response.headers.multi_items())


@dataclass
class Stack:
    broker: str
    sample: str
    files: SampleFiles
    browser: Browser

    @property
    def internal(self) -> bytes:
        return urlsplit(self.sample).netloc.encode()

    def leaked(self) -> list[bytes]:
        return [b for b in self.browser.received if self.internal in b]


def token(sub: str = "alice") -> str:
    return jwt_kit.token(sub, key=JWT_SECRET)


def workflows_toml(sample: str, *, direct: bool = True, options: str = "") -> str:
    return f"""
[workflows.support]
server = "{sample}/support/chatkit"
{f'direct_upload_url = "{sample}/support/attachments"' if direct else ""}
idle_timeout = 5
{options}
forward_claims = ["email"]
dictation = true

[workflows.support.files]
accept = ["image/png", "image/jpeg", "application/pdf"]
max_size = {MAX_SIZE}

[workflows.plain]
server = "{sample}/support/chatkit"
"""


def broker_settings(
    tmp_path: Path, sample: str, broker_url: str, *, options: str = "", **env: str
) -> Any:
    (tmp_path / "workflows.toml").write_text(workflows_toml(sample, options=options))
    return load_settings(
        {
            "BROKER_WORKFLOWS_FILE": str(tmp_path / "workflows.toml"),
            "BROKER_JWT_SECRET": JWT_SECRET,
            "BROKER_SESSION_SECRET": SESSION_SECRET,
            "BROKER_ASSERTION_KEY": generate_private_key_pem(),
            "BROKER_PUBLIC_URL": broker_url,
            **env,
        }
    )


@asynccontextmanager
async def running_stack(tmp_path: Path, *, options: str = "", **env: str) -> AsyncIterator[Stack]:
    """The browser, the broker and the sample-shaped server (``options``: lines added to
    the support workflow's table; ``env``: more broker settings)."""
    broker_sock, sample_sock = bound_socket(), bound_socket()
    broker_url = f"http://127.0.0.1:{broker_sock.getsockname()[1]}"
    sample_url = f"http://127.0.0.1:{sample_sock.getsockname()[1]}"
    settings = broker_settings(tmp_path, sample_url, broker_url, options=options, **env)
    sample = create_sample(files=True)
    async with (
        run_asgi(create_app(settings), sock=broker_sock, lifespan="on"),
        run_asgi(sample, sock=sample_sock),
        httpx.AsyncClient(base_url=broker_url, timeout=10) as client,
    ):
        browser = Browser(client)
        client.event_hooks["response"].append(browser.keep)
        yield Stack(broker_url, sample_url, sample.state.attachments, browser)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path) as running:
        yield running


async def session(stack: Stack, user: str = "alice") -> dict[str, Any]:
    minted = await stack.browser.client.post(
        "/api/chatkit/session",
        json={"workflow": "support"},
        headers={"Authorization": f"Bearer {token(user)}"},
    )
    assert minted.status_code == 200, minted.text
    return minted.json()


async def chatkit(stack: Stack, secret: str, body: dict[str, Any]) -> httpx.Response:
    return await stack.browser.client.post(
        "/chatkit/support", json=body, headers={"Authorization": f"Bearer {secret}"}
    )


async def attach(stack: Stack, secret: str, name: str = "photo.png", size: int = 1000) -> Any:
    body = {
        "type": "attachments.create",
        "params": {"name": name, "size": size, "mime_type": "image/png"},
    }
    answer = await chatkit(stack, secret, body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def upload_path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def test_two_phase_upload_preview_and_a_message_never_show_the_backend_host(
    stack: Stack,
) -> None:
    minted = await session(stack)
    backend = minted["backend"]
    assert backend["upload_strategy"]["type"] == "direct"
    assert backend["upload_strategy"]["uploadUrl"].startswith(
        "/api/files/gateway/support/upload?t="
    )
    assert backend["attachments"]["enabled"] is True
    assert backend["attachments"]["max_size"] == MAX_SIZE
    assert backend["dictation"] == {"enabled": True}
    secret = minted["client_secret"]
    image = png(5000)

    attachment = await attach(stack, secret)
    descriptor = attachment["upload_descriptor"]
    assert descriptor["url"].startswith(f"{stack.broker}/api/files/gateway/support/")
    assert descriptor["method"] == "POST" and descriptor["headers"] == {}
    assert attachment["preview_url"].startswith(f"{stack.broker}/api/files/gateway/support/")

    # the upload: multipart, as ChatKit posts it, with no header but the URL's signature
    uploaded = await stack.browser.client.post(
        upload_path(descriptor["url"]), files={"file": ("photo.png", image, "image/png")}
    )
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["id"] == attachment["id"]
    assert uploaded.json()["preview_url"].startswith(stack.broker)
    (seen,) = stack.files.uploads
    assert seen.complete and seen.size == len(image)
    assert stack.files.files[attachment["id"]] == image
    claims = jwt.decode(seen.headers[ASSERTION_HEADER.lower()], options={"verify_signature": False})
    assert claims["sub"] == "alice" and claims["aud"] == "support"
    assert claims["htm"] == "POST" and claims["htu"].endswith(f"/{attachment['id']}/upload")
    assert "authorization" not in seen.headers  # the browser's credentials stay with the broker

    again = await stack.browser.client.post(
        upload_path(descriptor["url"]), files={"file": ("photo.png", image, "image/png")}
    )
    assert again.status_code == 403 and "already been used" in again.json()["error"]["message"]

    preview = await stack.browser.client.get(upload_path(attachment["preview_url"]))
    assert preview.status_code == 200
    assert preview.content == image
    assert preview.headers["content-type"] == "image/png"
    assert preview.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in preview.headers["content-security-policy"]

    # a message carrying it: the stream's user message has the attachment, rewritten
    message = create("what is on this picture?")
    message["params"]["input"]["attachments"] = [attachment["id"]]
    streamed = await chatkit(stack, secret, message)
    assert streamed.status_code == 200
    events = sse_events(streamed.content)
    items = [e["item"] for e in events if e["type"] == "thread.item.done"]
    (user_message,) = [i for i in items if i["type"] == "user_message"]
    (sent,) = user_message["attachments"]
    assert sent["id"] == attachment["id"] and sent["preview_url"].startswith(stack.broker)
    thread_id = next(e["thread"]["id"] for e in events if e["type"] == "thread.created")

    read = await chatkit(
        stack, secret, {"type": "threads.get_by_id", "params": {"thread_id": thread_id}}
    )
    (first,) = [i for i in read.json()["items"]["data"] if i["type"] == "user_message"]
    again_preview = first["attachments"][0]["preview_url"]
    shown = await stack.browser.client.get(upload_path(again_preview))
    assert shown.content == image
    listed = await chatkit(
        stack, secret, {"type": "items.list", "params": {"thread_id": thread_id}}
    )
    assert listed.status_code == 200

    assert len(stack.browser.received) > 10
    assert stack.leaked() == []


async def test_a_direct_upload_is_relayed_with_the_session_secret(stack: Stack) -> None:
    minted = await session(stack)
    image = png(2000)
    url = minted["backend"]["upload_strategy"]["uploadUrl"].split("?", 1)[0]
    refused = await stack.browser.client.post(url, files={"file": ("a.png", image, "image/png")})
    assert refused.status_code == 401
    answer = await stack.browser.client.post(
        url,
        files={"file": ("a.png", image, "image/png")},
        headers={"Authorization": f"Bearer {minted['client_secret']}"},
    )
    assert answer.status_code == 200, answer.text
    attachment = answer.json()
    assert attachment["preview_url"].startswith(f"{stack.broker}/api/files/gateway/support/")
    assert stack.files.files[attachment["id"]] == image
    claims = jwt.decode(
        stack.files.uploads[-1].headers[ASSERTION_HEADER.lower()],
        options={"verify_signature": False},
    )
    assert claims["sub"] == "alice" and claims["sid"] == minted["session_id"]
    preview = await stack.browser.client.get(upload_path(attachment["preview_url"]))
    assert preview.content == image
    assert stack.leaked() == []


async def test_the_signed_direct_upload_url_works_without_the_kits_fetch(stack: Stack) -> None:
    """ChatKit may post a direct upload with the browser's own fetch (no session secret):
    the mint answer's ``uploadUrl`` carries a capability for that user, workflow, session."""
    minted = await session(stack)
    image = png(2000)
    signed = minted["backend"]["upload_strategy"]["uploadUrl"]
    answer = await stack.browser.client.post(signed, files={"file": ("a.png", image, "image/png")})
    assert answer.status_code == 200, answer.text
    assert stack.files.files[answer.json()["id"]] == image
    claims = jwt.decode(
        stack.files.uploads[-1].headers[ASSERTION_HEADER.lower()],
        options={"verify_signature": False},
    )
    assert claims["sub"] == "alice" and claims["sid"] == minted["session_id"]
    token = signed.split("?t=", 1)[1]
    elsewhere = await stack.browser.client.post(
        f"/api/files/gateway/plain/upload?t={token}",
        files={"file": ("a.png", image, "image/png")},
    )
    assert elsewhere.status_code == 404  # no files for that workflow at all
    forged = await stack.browser.client.post(
        f"/api/files/gateway/support/upload?t={token[:-4]}AAAA",
        files={"file": ("a.png", image, "image/png")},
    )
    assert forged.status_code == 403
    assert len(stack.files.uploads) == 1
    assert stack.leaked() == []


async def test_urls_are_bound_to_their_file_and_verb_and_expire_when_forged(stack: Stack) -> None:
    alice = (await session(stack))["client_secret"]
    bob = (await session(stack, "bob"))["client_secret"]
    mine = await attach(stack, alice)
    theirs = await attach(stack, bob)
    upload, preview = mine["upload_descriptor"]["url"], mine["preview_url"]
    token = urlsplit(upload).query.removeprefix("t=")
    client = stack.browser.client
    # bob's token on alice's attachment path, a preview token used to upload, a forged one
    swapped = upload_path(theirs["upload_descriptor"]["url"]).replace(theirs["id"], mine["id"])
    attempts = [
        await client.post(swapped, content=png()),
        await client.post(upload_path(preview).replace("/preview?", "/upload?"), content=png()),
        await client.post(upload_path(upload)[:-8] + "AAAAAAAA", content=png()),
        await client.post(upload_path(upload).split("?")[0], content=png()),
        await client.get(f"/api/files/gateway/plain/{mine['id']}/preview?t={token}"),
    ]
    assert [a.status_code for a in attempts] == [403, 403, 403, 403, 403]
    assert all(a.json()["error"]["code"] == "forbidden" for a in attempts)
    assert stack.files.uploads == []  # nothing reached the backend


async def test_an_oversize_upload_is_a_413_and_nothing_is_forwarded(stack: Stack) -> None:
    secret = (await session(stack))["client_secret"]
    too_big = await chatkit(
        stack,
        secret,
        {
            "type": "attachments.create",
            "params": {"name": "x.png", "size": MAX_SIZE + 1, "mime_type": "image/png"},
        },
    )
    assert too_big.status_code == 413
    wrong_type = await chatkit(
        stack,
        secret,
        {
            "type": "attachments.create",
            "params": {"name": "x", "size": 1, "mime_type": "text/html"},
        },
    )
    assert wrong_type.status_code == 415
    attachment = await attach(stack, secret)
    answer = await stack.browser.client.post(
        upload_path(attachment["upload_descriptor"]["url"]), content=b"\x89PNG" + bytes(MAX_SIZE)
    )
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "payload_too_large"
    assert stack.files.uploads == []


async def test_a_chunked_oversize_upload_is_aborted_at_the_backend(stack: Stack) -> None:
    secret = (await session(stack))["client_secret"]
    attachment = await attach(stack, secret)

    async def body() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        for _ in range(8):
            yield bytes(40_000)
            await asyncio.sleep(0.02)

    answer = await stack.browser.client.post(
        upload_path(attachment["upload_descriptor"]["url"]), content=body()
    )
    assert answer.status_code == 413
    await _backend_done(stack)
    (seen,) = stack.files.uploads
    assert not seen.complete  # the backend saw the request break off
    assert attachment["id"] not in stack.files.files


async def test_an_upload_cut_off_half_way_is_aborted_at_the_backend(stack: Stack) -> None:
    secret = (await session(stack))["client_secret"]
    attachment = await attach(stack, secret)
    url = urlsplit(attachment["upload_descriptor"]["url"])
    host, port = url.hostname, url.port
    assert host and port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"POST {url.path}?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        "Content-Type: image/png\r\nContent-Length: 100000\r\n\r\n".encode()
        + png(1000)
    )
    await writer.drain()
    for _ in range(200):
        if stack.files.uploads:
            break
        await asyncio.sleep(0.02)
    writer.close()  # half-way: the rest never comes
    await _backend_done(stack)
    (seen,) = stack.files.uploads
    assert not seen.complete  # the backend saw the request break off
    assert attachment["id"] not in stack.files.files
    del reader


async def _backend_done(stack: Stack) -> None:
    for _ in range(500):
        if stack.files.uploads and stack.files.uploads[-1].done:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the backend's upload route never finished")


async def test_a_backend_redirect_is_not_followed_nor_shown(stack: Stack) -> None:
    secret = (await session(stack))["client_secret"]
    attachment = await attach(stack, secret)
    stack.files.redirect = True
    upload = await stack.browser.client.post(
        upload_path(attachment["upload_descriptor"]["url"]), content=png()
    )
    preview = await stack.browser.client.get(upload_path(attachment["preview_url"]))
    for answer in (upload, preview):
        assert answer.status_code == 502
        assert answer.json()["error"]["code"] == "backend_error"
        assert "location" not in answer.headers
    assert all(b"elsewhere.test" not in b for b in stack.browser.received)
    assert stack.leaked() == []


async def test_descriptor_headers_reach_the_backend_not_the_browser(stack: Stack) -> None:
    stack.files.upload_headers = {"X-Upload-Key": "backend-only-value"}
    secret = (await session(stack))["client_secret"]
    attachment = await attach(stack, secret)
    assert attachment["upload_descriptor"]["headers"] == {}
    answer = await stack.browser.client.put(
        upload_path(attachment["upload_descriptor"]["url"]),
        content=png(),
        headers={"Content-Type": "image/png"},
    )
    assert answer.status_code == 200, answer.text
    (seen,) = stack.files.uploads
    assert seen.method == "POST"  # as the descriptor said
    assert seen.headers["x-upload-key"] == "backend-only-value"
    assert all(b"backend-only-value" not in b for b in stack.browser.received)


async def test_a_workflow_without_files_refuses_attachments(stack: Stack) -> None:
    minted = await stack.browser.client.post(
        "/api/chatkit/session",
        json={"workflow": "plain"},
        headers={"Authorization": f"Bearer {token()}"},
    )
    backend = minted.json()["backend"]
    assert backend["attachments"] == {"enabled": False}
    assert backend["dictation"] == {"enabled": False}
    assert "upload_strategy" not in backend
    refused = await stack.browser.client.post(
        "/chatkit/plain",
        json={
            "type": "attachments.create",
            "params": {"name": "a", "size": 1, "mime_type": "image/png"},
        },
        headers={"Authorization": f"Bearer {minted.json()['client_secret']}"},
    )
    assert refused.status_code == 400


async def test_a_backend_that_is_down_is_a_503_for_uploads_and_previews(tmp_path: Path) -> None:
    broker_sock, gone = bound_socket(), socket.socket()
    gone.bind(("127.0.0.1", 0))
    sample_url = f"http://127.0.0.1:{gone.getsockname()[1]}"  # bound, never listening
    broker_url = f"http://127.0.0.1:{broker_sock.getsockname()[1]}"
    settings = broker_settings(tmp_path, sample_url, broker_url)
    app = create_app(settings)
    async with (
        run_asgi(app, sock=broker_sock, lifespan="on"),
        httpx.AsyncClient(base_url=broker_url, timeout=10) as client,
    ):
        backend = app.state.broker.backends.for_workflow(settings.workflow_named("support"))
        urls = backend.files.urls({"headers": []}, "support", "alice", {})
        body = json.dumps(
            {
                "type": "image",
                "id": "atc_1",
                "name": "a.png",
                "mime_type": "image/png",
                "upload_descriptor": {"url": f"{sample_url}/up", "method": "POST"},
                "preview_url": f"{sample_url}/see",
            }
        ).encode()
        rewritten = json.loads(urls.body(body))
        upload = await client.post(
            upload_path(rewritten["upload_descriptor"]["url"]), content=png()
        )
        # nothing was uploaded: the URL is not spent, a retry meets the same 503
        retry = await client.post(upload_path(rewritten["upload_descriptor"]["url"]), content=png())
        preview = await client.get(upload_path(rewritten["preview_url"]))
    gone.close()
    for answer in (upload, retry, preview):
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "backend_unavailable"
        assert answer.json()["error"]["request_id"]
        assert sample_url.encode() not in answer.content


async def test_another_users_attachment_is_a_404_from_a_user_scoped_backend(
    tmp_path: Path,
) -> None:
    """With the backend kit's user-scoped stores, the assertion the broker signs for each
    request makes another user's attachment the backend's 404, relayed as it is."""
    broker_sock, sample_sock = bound_socket(), bound_socket()
    broker_url = f"http://127.0.0.1:{broker_sock.getsockname()[1]}"
    sample_url = f"http://127.0.0.1:{sample_sock.getsockname()[1]}"
    settings = broker_settings(tmp_path, sample_url, broker_url)
    sample = create_sample(
        KitOptions(f"{broker_url}/.well-known/jwks.json", "support", broker_url), files=True
    )
    async with (
        run_asgi(create_app(settings), sock=broker_sock, lifespan="on"),
        run_asgi(sample, sock=sample_sock),
        httpx.AsyncClient(base_url=broker_url, timeout=10) as client,
    ):
        stack = Stack(broker_url, sample_url, sample.state.attachments, Browser(client))
        client.event_hooks["response"].append(stack.browser.keep)
        alice = (await session(stack))["client_secret"]
        bob = (await session(stack, "bob"))["client_secret"]
        mine = await attach(stack, alice)
        stolen = await chatkit(
            stack, bob, {"type": "attachments.delete", "params": {"attachment_id": mine["id"]}}
        )
        unknown = await chatkit(
            stack, bob, {"type": "attachments.delete", "params": {"attachment_id": "atc_nope"}}
        )
        assert stolen.status_code == unknown.status_code == 404
        # the preview relay's assertion (GET, an empty body) passes the kit's middleware
        stack.files.files[mine["id"]] = image = png()
        preview = await client.get(upload_path(mine["preview_url"]))
        assert preview.status_code == 200 and preview.content == image
        assert stack.leaked() == []


async def test_the_openapi_document_names_the_file_relay_routes(stack: Stack) -> None:
    doc = (await stack.browser.client.get("/openapi.json")).json()
    base = "/api/files/gateway/{workflow}"
    assert set(doc["paths"][f"{base}/{{attachment_id}}/upload"]) == {"post", "put"}
    assert set(doc["paths"][f"{base}/{{attachment_id}}/preview"]) == {"get"}
    assert set(doc["paths"][f"{base}/upload"]) == {"post"}


async def test_dictation_is_relayed_to_the_server(stack: Stack) -> None:
    secret = (await session(stack))["client_secret"]
    audio = b"\x1a\x45\xdf\xa3" + bytes(2000)  # a webm header, then silence
    answer = await chatkit(
        stack,
        secret,
        {
            "type": "input.transcribe",
            "params": {
                "audio_base64": base64.b64encode(audio).decode(),
                "mime_type": "audio/webm;codecs=opus",
            },
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"text": f"heard {len(audio)} bytes of audio/webm"}
