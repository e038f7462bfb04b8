"""Files on agent workflows through the broker's HTTP surface: mint, ``attachments.create``
at ``POST /chatkit/<workflow>``, the signed upload URL, a message carrying the id, and what
the fake Responses API received."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.config import load_settings

from ...files.test_audio import CLIPS, FORMATS
from ...support import app_client, auth
from ...support.fake_responses import FakeResponses, text
from .harness import done_text, sse

SESSION_SECRET = "session-secret-that-is-at-least-32-bytes!"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"


def message(text_: str, attachments: list[str] | None = None) -> dict[str, Any]:
    return {
        "content": [{"type": "input_text", "text": text_}],
        "attachments": attachments or [],
        "inference_options": {},
    }


@pytest.fixture
def files_dir(tmp_path: Path) -> Path:
    return tmp_path / "files"


@pytest.fixture
def files_env(
    base_env: dict[str, str], responses: FakeResponses, tmp_path: Path, files_dir: Path
) -> dict[str, str]:
    workflows = tmp_path / "workflows.toml"
    workflows.write_text(
        '[workflows.support]\nagent = "examples.agent.support_agent:agent"\n'
        '[workflows.strict]\nagent = "examples.agent.support_agent:agent"\n'
        '[workflows.strict.files]\nmax_size = 2000\naccept = ["image/png", "text/plain"]\n'
        "max_per_message = 1\nmax_pending = 3\n"
        '[workflows.nofiles]\nagent = "examples.agent.support_agent:agent"\n'
        "[workflows.nofiles.files]\nenabled = false\n"
    )
    return {
        **base_env,
        "OPENAI_BASE_URL": responses.base_url,
        "BROKER_WORKFLOWS": "",
        "BROKER_WORKFLOWS_FILE": str(workflows),
        "BROKER_SESSION_SECRET": SESSION_SECRET,
        "BROKER_DATABASE_URL": f"sqlite:///{tmp_path / 'threads.sqlite3'}",
        "BROKER_FILES_STORAGE": str(files_dir),
    }


@pytest.fixture
async def client(files_env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(load_settings(files_env)) as c:
        yield c


async def chatkit(
    client: httpx.AsyncClient, workflow: str, credential: str, type_: str, **params: Any
) -> httpx.Response:
    return await client.post(
        f"/chatkit/{workflow}", json={"type": type_, "params": params}, headers=auth(credential)
    )


async def create(
    client: httpx.AsyncClient, cred: str, name: str, mime: str, size: int, wf: str = "support"
) -> httpx.Response:
    return await chatkit(
        client, wf, cred, "attachments.create", name=name, size=size, mime_type=mime
    )


async def upload(
    client: httpx.AsyncClient, url: str, data: bytes, name: str = "f"
) -> httpx.Response:
    """As ChatKit's two-phase upload posts it: multipart, the bytes in the part ``file``."""
    return await client.post(url, files={"file": (name, data, "application/octet-stream")})


def stored(files_dir: Path) -> list[str]:
    if not files_dir.exists():
        return []
    return sorted(p.name for p in files_dir.iterdir() if p.is_file())


async def test_an_image_and_a_pdf_reach_the_model_and_the_preview_renders(
    client, token: Callable[..., str], responses: FakeResponses, files_dir: Path
) -> None:
    minted = await client.post(
        "/api/chatkit/session", json={"workflow": "support"}, headers=auth(token("alice"))
    )
    session = minted.json()
    assert session["backend"]["upload_strategy"] == {"type": "two_phase"}
    kit = session["backend"]["attachments"]
    assert kit["enabled"] is True and kit["max_size"] == 20 * 1024 * 1024
    assert set(kit["accept"]) == {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "application/pdf",
    }
    secret = session["client_secret"]

    r = await create(client, secret, "photo.png", "image/png", len(PNG))
    assert r.status_code == 200, r.text
    image = r.json()
    assert image["type"] == "image" and image["id"].startswith("atc_")
    assert "metadata" not in image or image["metadata"] is None
    up = image["upload_descriptor"]
    assert up["method"] == "POST" and up["url"].startswith("http://127.0.0.1:8000/api/files/")
    # the preview answers nothing before the upload
    assert (await client.get(image["preview_url"])).status_code == 404
    r = await upload(client, up["url"], PNG, "photo.png")
    assert r.status_code == 200, r.text
    assert r.json()["size"] == len(PNG)
    assert stored(files_dir) == [image["id"]]
    # used once: a second upload to the same URL is refused
    r = await upload(client, up["url"], PNG)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"

    r = await create(client, secret, "report.pdf", "application/pdf", len(PDF))
    pdf = r.json()
    assert pdf["type"] == "file"
    assert (await upload(client, pdf["upload_descriptor"]["url"], PDF)).status_code == 200

    responses.script(text("A cat and a report."), text("Still a cat."))
    r = await chatkit(
        client,
        "support",
        secret,
        "threads.create",
        input=message("What are these?", [image["id"], pdf["id"]]),
    )
    assert r.status_code == 200, r.text
    events = sse(r.text)
    assert done_text(events) == "A cat and a report."
    thread_id = events[0]["thread"]["id"]
    parts = _user_parts(responses.requests[-1].input)
    kinds = [p["type"] for p in parts[-1]]
    assert kinds == ["input_text", "input_image", "input_file"], kinds
    img = parts[-1][1]["image_url"]
    assert img == "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert (
        parts[-1][2]["file_data"] == "data:application/pdf;base64," + base64.b64encode(PDF).decode()
    )
    assert parts[-1][2]["filename"] == "report.pdf"

    # a later turn still shows the files to the model (history)
    r = await chatkit(
        client,
        "support",
        secret,
        "threads.add_user_message",
        thread_id=thread_id,
        input=message("And now?"),
    )
    assert done_text(sse(r.text)) == "Still a cat."
    history = _user_parts(responses.requests[-1].input)
    assert [p["type"] for p in history[0]] == ["input_text", "input_image", "input_file"]

    # the thread shows the image with a fresh preview URL that renders without a header
    r = await chatkit(client, "support", secret, "threads.get_by_id", thread_id=thread_id)
    item = r.json()["items"]["data"][0]
    shown = item["attachments"][0]
    assert shown["id"] == image["id"] and "metadata" not in json.dumps(item)
    preview = await httpx.AsyncClient(transport=client._transport).get(shown["preview_url"])
    assert preview.status_code == 200 and preview.content == PNG
    assert preview.headers["content-type"] == "image/png"
    assert preview.headers["x-content-type-options"] == "nosniff"

    # deleting the thread deletes its files
    r = await chatkit(client, "support", secret, "threads.delete", thread_id=thread_id)
    assert r.status_code == 200
    assert stored(files_dir) == []
    assert (await client.get(shown["preview_url"])).status_code == 404


def _user_parts(items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [
        entry["content"]
        for entry in items
        if entry.get("role") == "user" and isinstance(entry.get("content"), list)
    ]


async def test_another_users_attachment_is_the_same_404_as_an_unknown_one(
    client, token, responses
) -> None:
    r = await create(client, token("alice"), "a.png", "image/png", len(PNG))
    image = r.json()
    assert (await upload(client, image["upload_descriptor"]["url"], PNG)).status_code == 200
    for ident in (image["id"], "atc_" + "0" * 32):
        r = await chatkit(
            client, "support", token("bob"), "threads.create", input=message("mine?", [ident])
        )
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert r.json()["error"]["message"] == f"Attachment {ident} not found."
        r = await chatkit(
            client, "support", token("bob"), "attachments.delete", attachment_id=ident
        )
        assert r.status_code == 404
    # alice's preview URL is bound to her and to that file: bob cannot re-use it for another id
    url = image["preview_url"]
    other = url.replace(image["id"], "atc_" + "1" * 32)
    assert (await client.get(other)).status_code == 403
    # an upload URL is not a preview URL (verbs are signed apart)
    token_part = image["upload_descriptor"]["url"].split("?t=")[1]
    assert (await client.get(url.split("?t=")[0] + "?t=" + token_part)).status_code == 403
    # nor in another workflow of the same user
    r = await chatkit(
        client, "strict", token("alice"), "threads.create", input=message("x", [image["id"]])
    )
    assert r.status_code == 404


async def test_bad_files_are_refused_and_nothing_is_stored(client, token, files_dir: Path) -> None:
    alice = token("alice")
    # over the limit, declared: 413 at create
    r = await create(client, alice, "big.png", "image/png", 5000, wf="strict")
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    # declared small, sent large: 413 while reading, nothing stored
    r = await create(client, alice, "big.png", "image/png", 100, wf="strict")
    url = r.json()["upload_descriptor"]["url"]
    r = await upload(client, url, PNG + b"\x00" * 3000)
    assert r.status_code == 413
    assert stored(files_dir) == []
    # a type not accepted, declared: 415
    r = await create(client, alice, "doc.pdf", "application/pdf", 100, wf="strict")
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    # a PDF named and declared as a PNG: 415 by content
    r = await create(client, alice, "photo.png", "image/png", len(PDF))
    r = await upload(client, r.json()["upload_descriptor"]["url"], PDF, "photo.png")
    assert r.status_code == 415 and "application/pdf" in r.json()["error"]["message"]
    # an executable declared as text
    r = await create(client, alice, "notes.txt", "text/plain", 10, wf="strict")
    r = await upload(client, r.json()["upload_descriptor"]["url"], b"MZ\x90\x00\x03\x00\x00\x00")
    assert r.status_code == 415
    # 0 bytes: 400, nothing stored
    r = await create(client, alice, "empty.png", "image/png", 0)
    empty = r.json()
    r = await upload(client, empty["upload_descriptor"]["url"], b"")
    assert r.status_code == 400 and "empty" in r.json()["error"]["message"]
    assert stored(files_dir) == []
    # a failed upload leaves the attachment unusable
    r = await chatkit(client, "support", alice, "threads.create", input=message("x", [empty["id"]]))
    assert r.status_code == 400 and "not been uploaded" in r.json()["error"]["message"]
    # an expired or forged URL
    r = await upload(client, url.split("?t=")[0] + "?t=forged", PNG)
    assert r.status_code == 403
    r = await upload(client, url.split("?t=")[0], PNG)
    assert r.status_code == 403
    # a workflow with files off refuses attachments.create
    r = await create(client, alice, "a.png", "image/png", 10, wf="nofiles")
    assert r.status_code == 400
    minted = await client.post(
        "/api/chatkit/session", json={"workflow": "nofiles"}, headers=auth(alice)
    )
    assert minted.json()["backend"]["attachments"] == {"enabled": False}


async def test_names_are_stored_and_shown_safely(client, token, responses) -> None:
    alice = token("alice")
    for name, shown in (
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\a\\evil.png", "evil.png"),
        ("bell\x07\nnew\x00line.png", "bellnewline.png"),
        ("x" * 1024 + ".png", "x" * 254 + "…"),
        ("", "file"),
    ):
        r = await create(client, alice, name, "image/png", len(PNG))
        assert r.status_code == 200, r.text
        assert r.json()["name"] == shown


async def test_creates_without_uploads_are_limited_per_user(client, token) -> None:
    alice = token("alice")
    for _ in range(3):
        r = await create(client, alice, "a.png", "image/png", 10, wf="strict")
        assert r.status_code == 200
    r = await create(client, alice, "a.png", "image/png", 10, wf="strict")
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
    # another user is not affected
    assert (
        await create(client, token("bob"), "a.png", "image/png", 10, wf="strict")
    ).status_code == 200


async def test_max_per_message_and_unsent_files_are_swept(client, token, files_dir: Path) -> None:
    alice = token("alice")
    ids = []
    for _ in range(2):
        r = await create(client, alice, "a.png", "image/png", len(PNG), wf="strict")
        ids.append(r.json()["id"])
        assert (await upload(client, r.json()["upload_descriptor"]["url"], PNG)).status_code == 200
    r = await chatkit(client, "strict", alice, "threads.create", input=message("x", ids))
    assert r.status_code == 400 and "at most 1" in r.json()["error"]["message"]
    assert len(stored(files_dir)) == 2
    backend = next(b for b in client.app.state.broker.backends if hasattr(b, "files"))
    assert await backend.store.sweep(time.time() + 3601) == 2
    assert stored(files_dir) == []
    r = await chatkit(client, "strict", alice, "threads.create", input=message("x", ids[:1]))
    assert r.status_code == 404


async def test_attachments_delete_removes_the_bytes(client, token, files_dir: Path) -> None:
    alice = token("alice")
    r = await create(client, alice, "a.png", "image/png", len(PNG))
    image = r.json()
    await upload(client, image["upload_descriptor"]["url"], PNG)
    assert stored(files_dir) == [image["id"]]
    r = await chatkit(client, "support", alice, "attachments.delete", attachment_id=image["id"])
    assert r.status_code == 200
    assert stored(files_dir) == []
    assert (await client.get(image["preview_url"])).status_code == 404


async def test_a_large_file_streams_past_the_json_body_limits(
    client, token, files_dir: Path
) -> None:
    alice = token("alice")
    big = PNG + bytes(3 * 1024 * 1024)  # 3 MB: far past the 256 KiB ChatKit body cap
    r = await create(client, alice, "big.png", "image/png", len(big))
    r = await upload(client, r.json()["upload_descriptor"]["url"], big)
    assert r.status_code == 200, r.text
    assert (files_dir / r.json()["id"]).read_bytes() == big
    # raw bytes (curl --data-binary) are accepted too
    r = await create(client, alice, "b.pdf", "application/pdf", len(PDF))
    r = await client.put(r.json()["upload_descriptor"]["url"], content=PDF)
    assert r.status_code == 200 and r.json()["mime_type"] == "application/pdf"


async def test_a_run_with_an_attachment_shows_it_to_the_model(client, token, responses) -> None:
    alice = token("alice")
    r = await create(client, alice, "a.png", "image/png", len(PNG))
    image = r.json()
    await upload(client, image["upload_descriptor"]["url"], PNG)
    responses.script(text("A picture."))
    r = await client.post(
        "/api/workflows/support/runs",
        json={"input": "What is it?", "attachments": [image["id"]]},
        headers=auth(alice),
    )
    assert r.status_code == 200, r.text
    assert r.json()["output"] == "A picture."
    parts = _user_parts(responses.requests[-1].input)[-1]
    assert [p["type"] for p in parts] == ["input_text", "input_image"]
    # another user's id: the same 404 as an unknown one, and no run
    before = len(responses.requests)
    r = await client.post(
        "/api/workflows/support/runs",
        json={"input": "x", "attachments": [image["id"]]},
        headers=auth(token("bob")),
    )
    assert r.status_code == 404 and len(responses.requests) == before
    r = await client.post(
        "/api/workflows/support/runs",
        json={"input": "x", "attachments": "atc_1"},
        headers=auth(alice),
    )
    assert r.status_code == 400
    # the thread's items (server-side API) carry a preview URL signed for this host and user
    thread_id = (await client.get("/api/threads?workflow=support", headers=auth(alice))).json()[
        "data"
    ][0]["id"]
    items = (await client.get(f"/api/threads/{thread_id}/items", headers=auth(alice))).json()
    url = items["data"][0]["attachments"][0]["preview_url"]
    assert url.startswith("http://127.0.0.1:8000/api/files/")
    assert (await client.get(url)).content == PNG


async def test_an_upload_cut_off_half_way_stores_nothing(files_env, token, files_dir: Path) -> None:
    """Over a real socket: the client sends half the body it announced and hangs up."""
    import asyncio

    from broker.app import build_broker, create_app

    from ...support.asgi_server import run_asgi

    settings = load_settings(files_env)
    app = create_app(settings, broker=build_broker(settings))
    async with run_asgi(app, lifespan="on") as base, httpx.AsyncClient(base_url=base) as http:
        alice = token("alice")
        r = await create(http, alice, "half.png", "image/png", 200_000)
        image = r.json()
        url = httpx.URL(image["upload_descriptor"]["url"])
        assert url.host == "127.0.0.1" and str(url.port) in base
        _reader, writer = await asyncio.open_connection(url.host, url.port)
        head = (
            f"POST {url.raw_path.decode()} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 200000\r\n\r\n"
        )
        writer.write(head.encode() + PNG + bytes(50_000))
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.close()
        for _ in range(50):
            await asyncio.sleep(0.05)
            r = await chatkit(
                http, "support", alice, "threads.create", input=message("x", [image["id"]])
            )
            if r.status_code == 400:
                break
        assert r.status_code == 400 and "not been uploaded" in r.json()["error"]["message"]
        assert stored(files_dir) == []
        assert list((files_dir / ".partial").iterdir()) == []
        # and the URL cannot be used again to smuggle the rest in
        r = await upload(http, image["upload_descriptor"]["url"], PNG)
        assert r.status_code == 403


async def test_storage_unreachable_is_a_503_naming_it_and_chat_still_works(
    files_env, token, responses, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the directory should be")
    async with app_client(
        load_settings(files_env | {"BROKER_FILES_STORAGE": str(blocker / "x")})
    ) as client:
        alice = token("alice")
        r = await create(client, alice, "a.png", "image/png", len(PNG))
        r = await upload(client, r.json()["upload_descriptor"]["url"], PNG)
        assert r.status_code == 503
        error = r.json()["error"]
        assert error["code"] == "file_storage_unavailable" and "not-a-dir" in error["message"]
        responses.script(text("Hello without files."))
        r = await chatkit(client, "support", alice, "threads.create", input=message("hi"))
        assert done_text(sse(r.text)) == "Hello without files."


async def test_dictation_goes_to_openais_transcription_endpoint(
    client, token, responses: FakeResponses
) -> None:
    alice = token("alice")
    minted = await client.post(
        "/api/chatkit/session", json={"workflow": "support"}, headers=auth(alice)
    )
    assert minted.json()["backend"]["dictation"] == {"enabled": True}
    audio = (CLIPS / "chrome-3s.webm").read_bytes()
    r = await chatkit(
        client,
        "support",
        alice,
        "input.transcribe",
        audio_base64=base64.b64encode(audio).decode(),
        mime_type="audio/webm;codecs=opus",
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"text": f"transcribed {len(audio)} bytes with gpt-4o-mini-transcribe"}
    [call] = responses.calls("/v1/audio/transcriptions")
    assert (
        call.body["file"]["content_type"] == "audio/webm"
        and call.body["model"] == "gpt-4o-mini-transcribe"
    )
    # not audio at all: 415, nothing sent
    r = await chatkit(
        client, "support", alice, "input.transcribe", audio_base64="AAAA", mime_type="image/png"
    )
    assert r.status_code == 415
    # OpenAI failing is a 502 naming it, never a traceback
    responses.http_errors["/v1/audio/transcriptions"] = 500
    ogg = base64.b64encode((CLIPS / "clip-3s.ogg").read_bytes()).decode()
    r = await chatkit(
        client, "support", alice, "input.transcribe", audio_base64=ogg, mime_type="audio/ogg"
    )
    assert r.status_code == 502 and "transcription" in r.json()["error"]["message"]


async def test_a_thousand_creates_without_uploads_are_limited_per_user(
    client, token, files_dir
) -> None:
    alice = token("alice")
    codes = [
        (await create(client, alice, f"{n}.png", "image/png", 10)).status_code for n in range(1000)
    ]
    assert codes[:20] == [200] * 20 and set(codes[20:]) == {429}
    assert stored(files_dir) == []  # creates store no bytes
    backend = next(b for b in client.app.state.broker.backends if hasattr(b, "files"))
    assert await backend.store.pending_count("alice", "support") == 20


async def test_a_background_run_by_a_key_takes_the_named_users_attachment(
    client, files_env, token, responses
) -> None:
    """A key acting for alice names her upload: the run, queued, shows it to the model; the
    same id for bob (whose upload it is not) is the 404 an unknown id gets, and nothing runs."""
    from .test_service_keys import make_key, poll

    key = await make_key(files_env["BROKER_DATABASE_URL"], ["support"], act_for_users=True)
    r = await create(client, token("alice"), "a.png", "image/png", len(PNG))
    image = r.json()
    await upload(client, image["upload_descriptor"]["url"], PNG)
    before = len(responses.requests)
    body = {"input": "x", "attachments": [image["id"]], "background": True}
    r = await client.post(
        "/api/workflows/support/runs", json=body | {"user": "bob"}, headers=auth(key)
    )
    assert r.status_code == 404, r.text
    responses.script(text("A picture, later."))
    r = await client.post(
        "/api/workflows/support/runs", json=body | {"user": "alice"}, headers=auth(key)
    )
    assert r.status_code == 202, r.text
    done = await poll(client, r.json()["id"], auth(key))
    assert done["status"] == "completed" and done["output"] == "A picture, later.", done
    assert len(responses.requests) == before + 1  # bob's POST ran nothing
    parts = _user_parts(responses.requests[-1].input)[-1]
    assert [p["type"] for p in parts] == ["input_text", "input_image"]


async def test_dictation_takes_every_format_browsers_record_and_refuses_long_or_unreadable_audio(
    files_env: dict[str, str], token, responses: FakeResponses
) -> None:
    env = files_env | {"BROKER_TRANSCRIBE_MAX_SECONDS": "2.5"}
    async with app_client(load_settings(env)) as client:
        alice = token("alice")

        async def transcribe(data: bytes, mime_type: str) -> httpx.Response:
            audio = base64.b64encode(data).decode()
            return await chatkit(
                client,
                "support",
                alice,
                "input.transcribe",
                audio_base64=audio,
                mime_type=mime_type,
            )

        # every clip is 3 s: over this broker's 2.5 s, a 413 naming both, nothing sent
        for name, mime_type in FORMATS.items():
            r = await transcribe((CLIPS / name).read_bytes(), mime_type)
            assert r.status_code == 413, (name, r.text)
            error = r.json()["error"]
            assert error["code"] == "payload_too_large"
            assert "at most 2.5 s" in error["message"] and " s long" in error["message"]
        # bytes that are not audio of the declared type: a 415, nothing sent
        for data, mime_type in [
            (b"\x1aE\xdf\xa3" + bytes(1000), "audio/webm;codecs=opus"),
            ((CLIPS / "clip-3s.mp3").read_bytes(), "audio/ogg"),
            (bytes(300), "audio/wav"),
        ]:
            r = await transcribe(data, mime_type)
            assert r.status_code == 415, r.text
            assert r.json()["error"]["message"].startswith("The recording could not be read as")
        assert responses.calls("/v1/audio/transcriptions") == []
        # half of a clip (1.5 s, a recording cut short) is within the limit and goes through
        half = (CLIPS / "chrome-3s.webm").read_bytes()
        half = half[: len(half) // 2]
        r = await transcribe(half, "audio/webm")
        assert r.status_code == 200, r.text
        assert r.json() == {"text": f"transcribed {len(half)} bytes with gpt-4o-mini-transcribe"}

    # the default (120 s) takes each format
    async with app_client(load_settings(files_env)) as client:
        for name, mime_type in FORMATS.items():
            audio = base64.b64encode((CLIPS / name).read_bytes()).decode()
            r = await chatkit(
                client,
                "support",
                alice,
                "input.transcribe",
                audio_base64=audio,
                mime_type=mime_type,
            )
            assert r.status_code == 200, (name, r.text)
    assert len(responses.calls("/v1/audio/transcriptions")) == 1 + len(FORMATS)
