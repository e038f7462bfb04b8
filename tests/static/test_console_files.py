"""Files through the test page's protocol console, in Chromium against a real ``chatkit-broker
serve``: pick a file → ``attachments.create`` → the bytes to the signed upload URL → a message
carrying the attachment → the image's preview rendered from its signed preview URL (an
``<img>`` with no header, under the page's Content-Security-Policy). Once in mock mode (the
canned reply describes what arrived) and once on an agent workflow whose model is the fake
Responses API (which records the ``input_image`` it received). The ChatKit script is blocked,
so the console takes ChatKit's place.
"""

from __future__ import annotations

import base64
import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..support import ROOT, SECRET, BrokerProcess
from ..support.browser import CHATKIT_JS, Tab
from ..support.fake_responses import FakeResponses, text

try:
    from playwright.sync_api import Page, expect
except ImportError:  # the `browser` fixture skips (CI: fails) without playwright
    expect = None


def png(width: int = 8, height: int = 6) -> bytes:
    """A real (decodable) PNG, all orange: the browser must be able to draw the preview."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\xff\x88\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


PNG = png(64, 48)


def attach_and_send(page: Page, tmp_path: Path, message: str) -> dict[str, Any]:
    """Attach dot.png through the file picker, wait for its upload, send ``message``; returns
    the attachments.create answer the page received."""
    (tmp_path / "dot.png").write_bytes(PNG)
    expect(page.locator("#console-attach")).to_be_visible()
    with page.expect_response(lambda r: "/api/files/" in r.url and "/upload" in r.url) as up:
        page.set_input_files("#console-file", str(tmp_path / "dot.png"))
    assert up.value.status == 200, up.value.text()
    assert "authorization" not in up.value.request.headers  # a signed URL, no bearer
    chip = page.locator("#console-pending .pending-file")
    expect(chip).to_have_attribute("data-state", "ready")
    expect(chip.locator(".name")).to_have_text("dot.png")
    expect(chip.locator("img.thumb")).to_have_js_property("naturalWidth", 64)
    page.fill("#console-input", message)
    page.press("#console-input", "Enter")
    assistant = page.locator("#console-transcript .turn.assistant")
    expect(assistant.last).to_have_attribute("data-done", "true")
    expect(page.locator("#console-pending")).to_be_hidden()
    user = page.locator("#console-transcript .turn.user").last
    expect(user.locator(".text")).to_have_text(message)
    figure = user.locator("figure.attachment")
    expect(figure.locator("figcaption")).to_have_text("dot.png · image/png")
    preview = figure.locator("img.preview")
    # the preview rendered: the browser fetched the signed URL and decoded the PNG
    expect(preview).to_have_js_property("naturalWidth", 64)
    src = preview.get_attribute("src") or ""
    assert "/api/files/atc_" in src and "/preview?t=" in src, src
    return {"src": src, "figure": figure}


SIGNED = re.compile(r"[?&]t=[A-Za-z0-9._~%-]{8,}")


def no_signed_url_in_the_log(tab: Tab, src: str) -> None:
    """The page's event log (and the browser console it mirrors) shows the streamed items,
    whose attachments carry signed preview URLs: the signatures are left out."""
    log_text = tab.page.locator("#log").inner_text()
    assert "/preview?t=…" in log_text  # the URL is shown, its signature is not
    assert not SIGNED.search(log_text), SIGNED.search(log_text)
    assert not any(SIGNED.search(line) for line in tab.console)
    assert src.split("?t=", 1)[1] not in log_text
    assert tab.problems == [], tab.problems  # no CSP violation, no uncaught error


def test_console_attaches_an_image_in_mock_mode_and_shows_its_preview(
    tab: Tab, run_broker: Callable[..., BrokerProcess], tmp_path: Path
):
    broker = run_broker({"BROKER_LOG_FORMAT": "json"}, "--mock")
    page = tab.page
    page.route(CHATKIT_JS, lambda route: route.abort())
    page.goto(broker.url + "/")
    expect(page.locator("#mode")).to_have_text("mode: mock")
    page.click("button[data-workflow=post-writer]")
    expect(page.locator("#console")).to_be_visible()
    accept = page.locator("#console-file").get_attribute("accept") or ""
    assert "image/png" in accept and "application/pdf" in accept

    shown = attach_and_send(page, tmp_path, "what is this?")
    reply = page.locator("#console-transcript .turn.assistant .text").last
    expect(reply).to_contain_text(f'[attached "dot.png": image/png, {len(PNG)} bytes, received]')
    logged = page.locator("#log .entry[data-kind=fetch] .msg").all_inner_texts()
    assert any(
        line.startswith("POST /api/files/atc_") and "/upload?… → 200" in line for line in logged
    )
    tab.shot("console-attachment-mock")

    # a file the workflow's policy refuses (by content): the chip says why, nothing is sent
    (tmp_path / "notes.txt").write_text("plain text, not an image\n")
    page.set_input_files("#console-file", str(tmp_path / "notes.txt"))
    chip = page.locator("#console-pending .pending-file")
    expect(chip).to_have_attribute("data-state", "failed")
    expect(chip.locator(".file-state")).to_contain_text("failed:")
    chip.locator("button").click()
    expect(page.locator("#console-pending")).to_be_hidden()

    # the thread read back (threads.get_by_id) still shows the preview, freshly signed
    page.click("#console-threads")
    page.locator("#console-thread-list button").first.click()
    again = page.locator("#console-transcript .turn.user figure.attachment img.preview")
    expect(again).to_have_js_property("naturalWidth", 64)
    no_signed_url_in_the_log(tab, shown["src"])


def test_console_attaches_an_image_on_an_agent_workflow_and_the_model_sees_it(
    tab: Tab,
    run_broker: Callable[..., BrokerProcess],
    responses: FakeResponses,
    tmp_path: Path,
    token,
):
    env = {
        # a file path: serve runs in a temporary directory, where no package `examples` is
        "BROKER_WORKFLOWS": f"support={ROOT}/examples/agent/support_agent.py:agent",
        "OPENAI_API_KEY": "sk-test-console-files",
        "OPENAI_BASE_URL": responses.base_url,
        "BROKER_JWT_SECRET": SECRET,
        "BROKER_SESSION_SECRET": "test-session-secret-that-is-32-bytes-long",
        "BROKER_DATABASE_URL": f"sqlite:///{tmp_path / 'threads.sqlite3'}",
        "BROKER_FILES_STORAGE": str(tmp_path / "files"),
        "BROKER_LOG_FORMAT": "json",
    }
    broker = run_broker(env)
    responses.script(text("An orange square."))
    page = tab.page
    page.route(CHATKIT_JS, lambda route: route.abort())
    page.goto(broker.url + "/")
    page.fill("#token", token("alice"))
    page.click("#token-save")
    expect(page.locator("#workflows button .wf-kind")).to_have_text(["agent"])
    page.click("button[data-workflow=support]")
    expect(page.locator("#console")).to_be_visible()

    shown = attach_and_send(page, tmp_path, "Describe the picture")
    expect(page.locator("#console-transcript .turn.assistant .text").last).to_have_text(
        "An orange square."
    )
    # the model received the image itself, as input_image, with the text
    calls = [r for r in responses.requests if r.path == "/v1/responses"]
    users = [e["content"] for r in calls for e in r.input if e.get("role") == "user"]
    parts = next(c for c in users if isinstance(c, list) and len(c) > 1)
    assert [p["type"] for p in parts] == ["input_text", "input_image"], parts
    assert parts[1]["image_url"] == "data:image/png;base64," + base64.b64encode(PNG).decode()
    # the file is on disk under its attachment id, and the preview is the same bytes
    [stored] = [f for f in (tmp_path / "files").iterdir() if f.is_file()]
    assert stored.read_bytes() == PNG and stored.name in shown["src"]
    tab.shot("console-attachment-agent")
    no_signed_url_in_the_log(tab, shown["src"])
