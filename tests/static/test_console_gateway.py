"""The protocol console through a real gateway workflow, with the ChatKit script unreachable:
browser (Chromium) → ``chatkit-broker serve`` (gate, ``cks_`` secret, relay, signed assertion)
→ ``python -m examples.chatkit_server`` (verifies the assertion against the broker's JWKS).
Both are real processes on free ports; the reply names the user the broker verified.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from broker.assertion import generate_private_key_pem

from ..support import ROOT, SECRET, BrokerProcess, free_port, log_audit, need
from ..support.browser import CHATKIT_JS, Tab

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips (CI: fails) without playwright
    expect = None


@pytest.fixture
def example_server(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """The example ChatKit server on a free port, trusting a broker on another free port."""
    need((ROOT / "examples" / "chatkit_server").is_dir(), "examples/chatkit_server is missing")
    broker_port, port = free_port(), free_port()
    broker = f"http://127.0.0.1:{broker_port}"
    log = (tmp_path / "example.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "examples.chatkit_server",
            "--port",
            str(port),
            "--broker",
            broker,
            "--issuer",
            broker,
            "--audience",
            "example",
            "--delay",
            "0.05",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(200):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "example.log").read_text())
            time.sleep(0.1)
        yield broker_port, port
    finally:
        proc.terminate()
        proc.wait(10)
        log_audit.collect_file(tmp_path / "example.log")


@pytest.fixture
def gateway_broker(
    run_broker: Callable[..., BrokerProcess], example_server: tuple[int, int], tmp_path: Path
) -> BrokerProcess:
    broker_port, port = example_server
    (tmp_path / "workflows.toml").write_text(
        f'[workflows.example]\nlabel = "Example server"\nserver = "http://127.0.0.1:{port}/chatkit"\n'
    )
    env = {
        "BROKER_WORKFLOWS_FILE": str(tmp_path / "workflows.toml"),
        "BROKER_JWT_SECRET": SECRET,
        "BROKER_SESSION_SECRET": "test-session-secret-that-is-32-bytes-long",
        "BROKER_ASSERTION_KEY": generate_private_key_pem(),
        "BROKER_PUBLIC_URL": f"http://127.0.0.1:{broker_port}",
        "BROKER_LOG_FORMAT": "json",
    }
    return run_broker(env, port=broker_port)


def test_protocol_console_chats_through_a_gateway_workflow(tab: Tab, gateway_broker, token):
    page = tab.page
    page.route(CHATKIT_JS, lambda route: route.abort())
    page.goto(gateway_broker.url + "/")
    page.fill("#token", token("alice"))
    page.click("#token-save")
    expect(page.locator("#workflows button .wf-kind")).to_have_text(["gateway"])
    with page.expect_response("**/api/chatkit/session") as minted:
        page.click("button[data-workflow=example]")
    answer = minted.value.json()
    assert answer["workflow"]["kind"] == "gateway"
    assert answer["client_secret"].startswith("cks_")
    expect(page.locator("#backend dd[data-field=kind]")).to_have_text("gateway")
    expect(page.locator("#backend dd[data-field=url]")).to_have_text("/chatkit/example")
    expect(page.locator("#console")).to_be_visible()

    page.fill("#console-input", "hello gateway")
    page.press("#console-input", "Enter")
    assistant = page.locator("#console-transcript .turn.assistant")
    expect(assistant).to_have_attribute("data-done", "true")
    expect(assistant.locator(".text")).to_have_text("Hello alice, you said: hello gateway")
    logged = page.locator("#log .entry[data-kind=sse] .msg").all_inner_texts()
    assert "threads.create ← thread.item.done" in logged
    assert answer["client_secret"] not in page.locator("#log").inner_text()
    tab.shot("console-gateway")
