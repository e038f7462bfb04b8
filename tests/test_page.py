"""The test page (``broker/static/``) in real Chromium, against a real ``chatkit-broker serve`` process.

There is no internet here, so the ChatKit script URL is answered through request interception
with ``chatkit_stand_in.js``: it defines ``<openai-chatkit>``, records what the page passes to
``setOptions`` on ``window.__chatkitStandIn``, calls ``getClientSecret`` like the real component
and dispatches ``chatkit.*`` events. Each test saves screenshots of the state it reaches, at
desktop and phone width, to ``test-artifacts/`` (gitignored).

Needs Debian's ``/usr/bin/chromium`` and the ``playwright`` package (never a downloaded
browser): without them these tests skip, except under ``CI``, where they fail.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .support import ROOT, WF_SALES, BrokerProcess, need

try:
    from playwright.sync_api import (
        Browser,
        ConsoleMessage,
        Page,
        Route,
        expect,
        sync_playwright,
    )
except ImportError:  # the skip (or, in CI, the failure) happens in the `browser` fixture
    sync_playwright = None

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CHATKIT_JS = "https://cdn.platform.openai.com/deployments/chatkit/chatkit.js"
STAND_IN = (Path(__file__).parent / "chatkit_stand_in.js").read_text()
ARTIFACTS = ROOT / "test-artifacts"
VIEWPORTS = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}
CANT_LOAD = f"the ChatKit script could not be loaded from {CHATKIT_JS} — offline or blocked?"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    need(sync_playwright is not None, "the playwright package is not installed")
    need(CHROMIUM.exists(), f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@dataclass
class Tab:
    """One browser tab, with what its console said."""

    page: Page
    console: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def shot(self, state: str) -> None:
        """Screenshots of the current state at each width, for a person to look at."""
        ARTIFACTS.mkdir(exist_ok=True)
        for name, size in VIEWPORTS.items():
            self.page.set_viewport_size(size)
            self.page.screenshot(path=ARTIFACTS / f"{state}-{name}.png", full_page=True)
        self.page.set_viewport_size(VIEWPORTS["desktop"])

    def stand_in(self) -> dict[str, Any]:
        return self.page.evaluate("JSON.parse(JSON.stringify(window.__chatkitStandIn ?? null))")


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    context = browser.new_context(viewport=VIEWPORTS["desktop"])
    t = Tab(context.new_page())
    t.page.set_default_timeout(10_000)

    def on_console(message: ConsoleMessage) -> None:
        t.console.append(message.text)
        if "Content Security Policy" in message.text:
            t.problems.append(message.text)

    t.page.on("console", on_console)
    t.page.on("pageerror", lambda e: t.problems.append(f"uncaught error: {e}"))
    yield t
    context.close()
    assert not t.problems, "the page logged errors or CSP violations"


def serve_stand_in(route: Route) -> None:
    route.fulfill(body=STAND_IN, content_type="text/javascript")


@pytest.fixture
def live(run_broker: Callable[..., BrokerProcess], base_env: dict[str, str]) -> BrokerProcess:
    return run_broker(base_env)


@pytest.fixture
def mock(run_broker: Callable[..., BrokerProcess]) -> BrokerProcess:
    return run_broker({"BROKER_LOG_FORMAT": "json"}, "--mock")


def open_live(tab: Tab, broker: BrokerProcess, tok: str) -> Page:
    """Open the page in live mode and hand it a token (which makes it load the workflows)."""
    page = tab.page
    page.goto(broker.url + "/")
    expect(page.locator("#mode")).to_have_text("mode: live")
    expect(page.locator("#workflows")).to_contain_text("Paste a token")
    page.fill("#token", tok)
    page.click("#token-save")
    return page


def status(page: Page):
    return page.locator("#status")


# ------------------------------------------------------------------------- live mode


def test_live_mode_mints_before_mount_and_remints_on_refresh(tab: Tab, live, openai, token):
    tab.page.route(CHATKIT_JS, serve_stand_in)
    tok = token("alice")
    page = open_live(tab, live, tok)
    expect(page.locator("#mock-banner")).to_be_hidden()
    expect(page.locator("#workflows button")).to_have_text(["support", "sales"])

    with page.expect_response("**/api/chatkit/session") as first_response:
        page.click("button[data-workflow=support]")
    first = first_response.value.json()
    assert first_response.value.request.post_data_json == {"workflow": "support"}
    assert first_response.value.request.headers["authorization"] == f"Bearer {tok}"
    expect(status(page)).to_have_attribute("data-state", "ready")
    expect(page.locator("#status-text")).to_have_text("ready")

    rec = tab.stand_in()
    assert rec["setOptions"] == [
        {
            "apiKeys": ["getClientSecret"],
            "url": None,
            "domainKey": None,
            "hasFetch": False,
            "hasGetClientSecret": True,
        }
    ]
    # One mint, finished before <openai-chatkit> was connected; getClientSecret(null) got it.
    assert rec["sessionPostsBeforeMount"] == 1
    assert rec["secrets"] == [first["client_secret"]]
    [upstream] = openai.session_requests()
    assert upstream.body["user"] == "alice"

    # The component asks for a new secret: a new mint that names the previous session.
    with page.expect_response("**/api/chatkit/session") as second_response:
        page.evaluate("window.__chatkitStandIn.refresh()")
    assert second_response.value.request.post_data_json == {
        "workflow": "support",
        "previous_session_id": first["session_id"],
    }
    second = second_response.value.json()
    assert tab.stand_in()["secrets"] == [first["client_secret"], second["client_secret"]]
    assert len(openai.session_requests()) == 2
    assert [r.path for r in openai.cancel_requests()] == [
        f"/v1/chatkit/sessions/{first['session_id']}/cancel"
    ]

    # Every chatkit.* event in order, each with a timestamp; every fetch with status and ms.
    events = page.locator("#log .entry[data-kind=chatkit]")
    expect(events.locator(".msg")).to_have_text(
        [
            "chatkit.ready",
            "chatkit.thread.change",
            "chatkit.log",
            "chatkit.thread.load.start",
            "chatkit.thread.load.end",
            "chatkit.response.start",
            "chatkit.response.end",
        ]
    )
    expect(events.locator("time").first).to_have_text(re.compile(r"^\d\d:\d\d:\d\d\.\d{3}$"))
    fetches = page.locator("#log .entry[data-kind=fetch] .msg")
    expect(fetches).to_have_text(
        [
            re.compile(r"^GET /api/chatkit/config → 200 \(\d+ ms\)$"),
            re.compile(r"^GET /api/chatkit/workflows → 200 \(\d+ ms\)$"),
            re.compile(r"^POST /api/chatkit/session → 200 \(\d+ ms\)$"),
            re.compile(r"^POST /api/chatkit/session → 200 \(\d+ ms\)$"),
        ]
    )
    assert any("[chatkit-broker]" in line and "chatkit.ready" in line for line in tab.console)
    # No secret or token ever reaches the log or the console.
    log_text = page.locator("#log").inner_text()
    for secret in (first["client_secret"], second["client_secret"], tok):
        assert secret not in log_text
        assert not any(secret in line for line in tab.console)
    tab.shot("live-ready")

    page.click("#log-clear")
    expect(page.locator("#log .entry")).to_have_count(0)


def test_expired_token_says_to_paste_a_new_one(tab: Tab, live, token):
    page = open_live(tab, live, token("alice", ttl=-3600))
    expect(status(page)).to_have_attribute("data-state", "error")
    expect(page.locator("#status-reason")).to_have_text(
        "token expired or invalid — paste a new one"
    )
    expect(page.locator("#status-detail")).to_contain_text("HTTP 401 · unauthenticated")
    expect(page.locator("#retry")).to_be_enabled()
    expect(page.locator("#workflows button")).to_have_count(0)
    tab.shot("live-401")

    # A fresh token: the workflows appear and the error clears.
    page.fill("#token", token("alice"))
    page.click("#token-save")
    expect(page.locator("#workflows button")).to_have_count(2)
    expect(status(page)).to_have_attribute("data-state", "idle")


def test_token_is_kept_for_the_tab_and_can_be_forgotten(tab: Tab, live, token):
    tok = token("alice")
    page = open_live(tab, live, tok)
    expect(page.locator("#workflows button")).to_have_count(2)
    page.reload()
    expect(page.locator("#workflows button")).to_have_count(2)
    expect(page.locator("#token")).to_have_value(tok)
    page.click("#token-forget")
    expect(page.locator("#workflows")).to_contain_text("Paste a token")
    assert page.evaluate("sessionStorage.length") == 0


def test_workflow_unknown_upstream_shows_the_brokers_hint_then_retry_works(
    tab: Tab, live, openai, token
):
    tab.page.route(CHATKIT_JS, serve_stand_in)
    openai.for_workflow(WF_SALES, "workflow_not_found")
    page = open_live(tab, live, token("alice"))
    with page.expect_response("**/api/chatkit/session") as response:
        page.click("button[data-workflow=sales]")
    assert response.value.status == 502
    error = response.value.json()["error"]
    assert error["code"] == "upstream_workflow_not_found"
    expect(status(page)).to_have_attribute("data-state", "error")
    expect(page.locator("#status-reason")).to_have_text(error["message"])
    expect(page.locator("#status-detail")).to_have_text(
        f"HTTP 502 · upstream_workflow_not_found · request id {error['request_id']}"
    )
    expect(page.locator("#chat openai-chatkit")).to_have_count(0)
    tab.shot("live-502-workflow-not-found")

    openai.by_workflow.clear()  # the workflow got published
    page.click("#retry")
    expect(status(page)).to_have_attribute("data-state", "ready")
    expect(page.locator("#chat openai-chatkit")).to_have_count(1)


def test_chatkit_script_that_cannot_load_is_reported_then_retry_loads_it(tab: Tab, live, token):
    tab.page.route(CHATKIT_JS, lambda route: route.abort())
    page = open_live(tab, live, token("alice"))
    page.click("button[data-workflow=support]")
    expect(status(page)).to_have_attribute("data-state", "error")
    expect(page.locator("#status-reason")).to_have_text(CANT_LOAD)
    expect(page.locator("#chat openai-chatkit")).to_have_count(0)
    tab.shot("script-blocked")

    page.unroute(CHATKIT_JS)
    page.route(CHATKIT_JS, serve_stand_in)
    page.click("#retry")
    expect(status(page)).to_have_attribute("data-state", "ready")
    assert len(tab.stand_in()["secrets"]) == 1


def test_chatkit_script_that_never_defines_the_element_times_out(tab: Tab, live, token):
    tab.page.add_init_script("window.__chatkitBrokerScriptTimeoutMs = 300")
    tab.page.route(
        CHATKIT_JS,
        lambda route: route.fulfill(body="/* not ChatKit */", content_type="text/javascript"),
    )
    page = open_live(tab, live, token("alice"))
    page.click("button[data-workflow=support]")
    expect(page.locator("#status-reason")).to_have_text(
        f"the ChatKit script from {CHATKIT_JS} did not define <openai-chatkit> within 0.3 s"
    )


# ------------------------------------------------------------------------- mock mode


def test_mock_mode_mounts_against_the_mock_backend(tab: Tab, mock, token):
    page = tab.page
    page.route(CHATKIT_JS, serve_stand_in)
    page.goto(mock.url + "/")
    expect(page.locator("#mode")).to_have_text("mode: mock")
    expect(page.locator("#mock-banner")).to_be_visible()
    expect(page.locator("#mock-banner")).to_contain_text("Mock mode")
    expect(page.locator("#token-optional")).to_be_visible()
    config = page.evaluate("fetch('/api/chatkit/config').then((r) => r.json())")
    need(
        config["mock_backend_url"] is not None,
        "this broker does not offer the mock ChatKit backend (openai-chatkit not installed?)",
    )
    # With no workflows configured, mock mode offers its two demo workflows.
    expect(page.locator("#workflows button .wf-label")).to_have_text(
        ["Topic generation", "Post writer"]
    )

    tok = token("carol")
    page.fill("#token", tok)
    page.click("#token-save")
    expect(page.locator("#workflows button")).to_have_count(2)
    minted = []
    page.on("request", lambda r: minted.append(r) if "/api/chatkit/session" in r.url else None)
    with page.expect_request("**/mock/chatkit") as backend_request:
        page.click("button[data-workflow=topic-generation]")
    assert backend_request.value.headers["authorization"] == f"Bearer {tok}"
    expect(status(page)).to_have_attribute("data-state", "ready")

    rec = tab.stand_in()
    assert rec["setOptions"] == [
        {
            "apiKeys": ["domainKey", "fetch", "url"],
            "url": config["mock_backend_url"],
            "domainKey": config["domain_key"],
            "hasFetch": True,
            "hasGetClientSecret": False,
        }
    ]
    [answer] = rec["backend"]
    assert answer["status"] == 200, answer
    assert minted == []  # custom-backend mode: no secret to fetch
    expect(page.locator("#log .entry[data-kind=fetch] .msg").last).to_have_text(
        re.compile(r"^POST /mock/chatkit → 200 \(\d+ ms\)$")
    )
    tab.shot("mock-backend-ready")


def test_mock_mode_without_backend_uses_the_mock_secret_flow(tab: Tab, mock):
    page = tab.page
    page.route(CHATKIT_JS, serve_stand_in)

    def no_backend(route: Route) -> None:
        config = route.fetch().json() | {"mock_backend_url": None, "domain_key": None}
        route.fulfill(json=config)

    page.route("**/api/chatkit/config", no_backend)
    page.goto(mock.url + "/")
    expect(page.locator("#mock-banner")).to_be_visible()
    with page.expect_response("**/api/chatkit/session") as response:
        page.click("button[data-workflow=post-writer]")
    minted = response.value.json()
    assert minted["mock"] is True
    assert minted["client_secret"].startswith("mock_")
    expect(status(page)).to_have_attribute("data-state", "ready")
    assert tab.stand_in()["secrets"] == [minted["client_secret"]]
    expect(page.locator("#log")).to_contain_text(f"session {minted['session_id']}")
    tab.shot("mock-secret-ready")


# ------------------------------------------------------------------------- the files


def test_page_has_no_inline_script_or_style():
    """The page must work under a CSP without 'unsafe-inline' for scripts or styles."""
    html = (ROOT / "broker" / "static" / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline <script>"
    assert not re.search(r"<style\b", html), "inline <style>"
    assert not re.search(r"\sstyle=", html), "style attribute"
    assert not re.search(r"\son[a-z]+=", html), "inline event handler"
    js = (ROOT / "broker" / "static" / "app.js").read_text()
    assert "innerHTML" not in js and 'setAttribute("style"' not in js
