"""The test page (``broker/static/``) in real Chromium, against a real ``chatkit-broker serve`` process.

There is no internet here, so the ChatKit script URL is answered through request interception
with ``chatkit_stand_in.js``: it defines ``<openai-chatkit>``, records what the page passes to
``setOptions`` on ``window.__chatkitStandIn``, calls ``getClientSecret`` (hosted) or POSTs to
``api.url`` through ``api.fetch`` (custom backends) like the real component, and dispatches
``chatkit.*`` events. With the script blocked instead, the page's protocol console chats with
the real mock backend. Each test saves screenshots of the state it reaches, at desktop and
phone width, to ``test-artifacts/`` (gitignored).

Needs Debian's ``/usr/bin/chromium`` and the ``playwright`` package (never a downloaded
browser): without them these tests skip, except under ``CI``, where they fail.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator

import pytest

from tests.support import ROOT, WF_SALES, BrokerProcess
from tests.support.adversarial import broker_process
from tests.support.browser import CHATKIT_JS, Tab, serve_stand_in
from tests.support.env import hosted_env
from tests.support.fake_openai import FakeOpenAI

with contextlib.suppress(ImportError):  # without playwright the `browser` fixture skips (CI: fails)
    from playwright.sync_api import Page, Route, expect

CANT_LOAD = f"the ChatKit script could not be loaded from {CHATKIT_JS} — offline or blocked?"


# One broker of each mode for the module (starting one costs 1-4 s of CPU, 15 tests use them):
# the tests share their registries and the mock's threads, so none counts what another could
# have added; the per-user mint limit is raised for the same reason.
SHARED = {"BROKER_RATE_LIMIT": "1000/minute"}


@pytest.fixture(scope="module")
def live_broker(fake_server: FakeOpenAI, tmp_path_factory) -> Iterator[BrokerProcess]:
    env = {**hosted_env(fake_server.base_url), **SHARED}
    with broker_process(env, tmp_path_factory.mktemp("page-live")) as bp:
        yield bp


@pytest.fixture
def live(live_broker: BrokerProcess, openai: FakeOpenAI) -> BrokerProcess:
    """The module's live broker, its fake OpenAI reset for this test."""
    return live_broker


@pytest.fixture(scope="module")
def mock(tmp_path_factory) -> Iterator[BrokerProcess]:
    env = {"BROKER_LOG_FORMAT": "json", **SHARED}
    with broker_process(env, tmp_path_factory.mktemp("page-mock"), "--mock") as bp:
        yield bp


def open_live(tab: Tab, broker: BrokerProcess, tok: str, query: str = "") -> Page:
    """Open the page in live mode and hand it a token (which makes it load the workflows)."""
    page = tab.page
    page.goto(broker.url + "/" + query)
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
    expect(page.locator("#workflows button .wf-label")).to_have_text(["support", "sales"])
    expect(page.locator("#workflows button .wf-kind")).to_have_text(["hosted", "hosted"])

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
    tab.page.route(
        CHATKIT_JS,
        lambda route: route.fulfill(body="/* not ChatKit */", content_type="text/javascript"),
    )
    page = open_live(tab, live, token("alice"), query="?chatkit_timeout_ms=300")
    page.click("button[data-workflow=support]")
    expect(page.locator("#status-reason")).to_have_text(
        f"the ChatKit script from {CHATKIT_JS} did not define <openai-chatkit> within 0.3 s"
    )


# ------------------------------------------------------------------------- mock mode


def open_mock(tab: Tab, broker: BrokerProcess) -> Page:
    page = tab.page
    page.goto(broker.url + "/")
    expect(page.locator("#mode")).to_have_text("mode: mock")
    expect(page.locator("#mock-banner")).to_be_visible()
    # With no workflows configured, mock mode offers its two demo workflows.
    expect(page.locator("#workflows button .wf-label")).to_have_text(
        ["Topic generation", "Post writer"]
    )
    expect(page.locator("#workflows button .wf-kind")).to_have_text(["mock", "mock"])
    return page


def test_mock_mode_mounts_chatkit_against_the_backend_with_the_session_secret(
    tab: Tab, mock, token
):
    page = open_mock(tab, mock)
    page.route(CHATKIT_JS, serve_stand_in)
    expect(page.locator("#token-optional")).to_be_visible()
    tok = token("carol")
    page.fill("#token", tok)
    page.click("#token-save")
    expect(page.locator("#workflows button")).to_have_count(2)

    with page.expect_response("**/api/chatkit/session") as minted:
        page.click("button[data-workflow=topic-generation]")
    answer = minted.value.json()
    assert minted.value.request.headers["authorization"] == f"Bearer {tok}"
    # the broker's own session secret, for the mock backend behind /chatkit/<name>
    assert answer["client_secret"].startswith("cks_")
    assert answer["workflow"]["kind"] == "mock"
    backend = answer["backend"]
    assert backend["url"] == "/chatkit/topic-generation" and backend["domain_key"] == "local-dev"
    assert backend["attachments"]["enabled"] is True
    expect(status(page)).to_have_attribute("data-state", "ready")

    rec = tab.stand_in()
    assert rec["setOptions"] == [
        {
            # uploadStrategy: mock mode accepts files (two-phase, from the mint answer)
            "apiKeys": ["domainKey", "fetch", "uploadStrategy", "url"],
            "url": backend["url"],
            "domainKey": backend["domain_key"],
            "hasFetch": True,
            "hasGetClientSecret": False,
        }
    ]
    [reply] = rec["backend"]
    assert reply["status"] == 200, reply
    # The backend got the broker's session secret, not the app's JWT.
    backend_requests = [
        r for r in tab.requests if r.url.endswith(backend["url"]) and r.method == "POST"
    ]
    assert [r.headers["authorization"] for r in backend_requests] == [
        f"Bearer {answer['client_secret']}"
    ]
    expect(page.locator("#backend dd[data-field=kind]")).to_have_text("mock")
    expect(page.locator("#backend dd[data-field=url]")).to_have_text(backend["url"])
    expect(page.locator("#backend dd[data-field=session]")).to_have_text(answer["session_id"])
    expect(page.locator("#log .entry[data-kind=fetch] .msg").last).to_have_text(
        re.compile(rf"^POST {re.escape(backend['url'])} → 200 \(\d+ ms\)$")
    )
    assert answer["client_secret"] not in page.locator("#log").inner_text()
    tab.shot("mock-chatkit-ready")

    # Sign out: every session of this user is cancelled and the chat goes away.
    with page.expect_response("**/api/chatkit/session/cancel") as cancelled:
        page.click("#sign-out")
    assert cancelled.value.request.post_data_json == {"all": True}
    count = len(cancelled.value.json()["cancelled"])
    assert count >= 1
    expect(page.locator("#log .entry[data-kind=kit] .msg").last).to_have_text(
        f"signed out: {count} session{'' if count == 1 else 's'} cancelled"
    )
    expect(status(page)).to_have_attribute("data-state", "idle")
    expect(page.locator("#chat openai-chatkit")).to_have_count(0)
    expect(page.locator("#backend dd[data-field=kind]")).to_have_text("—")


def sse_log(page: Page):
    return page.locator("#log .entry[data-kind=sse] .msg")


def test_protocol_console_chats_with_the_mock_backend_when_chatkit_is_blocked(tab: Tab, mock):
    page = open_mock(tab, mock)
    page.route(CHATKIT_JS, lambda route: route.abort())
    with page.expect_response("**/api/chatkit/session") as minted:
        page.click("button[data-workflow=post-writer]")
    answer = minted.value.json()
    backend_url = answer["backend"]["url"]
    assert backend_url == "/chatkit/post-writer"
    assert answer["client_secret"].startswith("cks_")

    # a working state, explained: amber, not the red "error" (the backend answers below)
    expect(status(page)).to_have_attribute("data-state", "console")
    expect(page.locator("#status-text")).to_have_text("working — through the protocol console")
    expect(page.locator("#status-reason")).to_contain_text("ChatKit's script could not load")
    expect(page.locator("#status-reason")).to_contain_text("the broker and the backend work")
    expect(page.locator("#status-detail")).to_have_text(CANT_LOAD)
    amber = page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--warn')")
    dot = page.locator("#status .dot").evaluate("e => getComputedStyle(e).backgroundColor")
    assert dot == page.evaluate(
        "c => { const e = document.createElement('i'); e.style.color = c; document.body.append(e);"
        " const v = getComputedStyle(e).color; e.remove(); return v; }",
        amber.strip(),
    )
    detail = page.locator("#status-detail").evaluate("e => getComputedStyle(e).backgroundColor")
    assert detail != page.evaluate(  # no red box either
        "() => { const e = document.createElement('i'); e.style.color = 'var(--err-soft)';"
        " document.body.append(e); const v = getComputedStyle(e).color; e.remove(); return v; }"
    )
    expect(page.locator("#retry")).to_be_enabled()
    console = page.locator("#console")
    expect(console).to_be_visible()
    expect(console.locator("h2")).to_have_text("Protocol console diagnostic view")
    expect(console).to_contain_text("it is not a replacement for ChatKit")
    expect(page.locator("#console-url")).to_have_text(backend_url)
    expect(page.locator("#console-thread")).to_have_text("new thread")
    tab.shot("console-empty")

    # threads.create: the reply streams in, every event lands in the log
    page.fill("#console-input", "hello broker")
    page.press("#console-input", "Enter")
    assistant = page.locator("#console-transcript .turn.assistant")
    expect(assistant).to_have_attribute("data-done", "true")
    expect(assistant.locator(".text")).to_contain_text("You wrote:\n\n> hello broker")
    expect(page.locator("#console-transcript .turn.user .text")).to_have_text("hello broker")
    expect(page.locator("#console-thread")).to_have_text(re.compile(r"^thread \S+ · hello broker$"))
    logged = sse_log(page).all_inner_texts()
    for event in ("thread.created", "thread.item.added", "thread.item.updated", "thread.item.done"):
        assert f"threads.create ← {event}" in logged, logged
    deltas = [e for e in logged if e == "threads.create ← thread.item.updated"]
    assert len(deltas) >= 4  # text deltas, not one lump

    # threads.add_user_message on the same thread
    page.fill("#console-input", "second message")
    page.click("#console-send")
    expect(assistant).to_have_count(2)
    expect(assistant.nth(1)).to_have_attribute("data-done", "true")
    expect(sse_log(page).last).to_have_text("threads.add_user_message ← thread.item.done")
    tab.shot("console-reply")

    # threads.list
    page.click("#console-threads")
    # newest first (other tests of the module may have left threads of the mock user)
    expect(page.locator("#console-thread-list button span").first).to_have_text("hello broker")
    tab.shot("console-threads")

    # a new thread whose reply ends with an error event; Retry retries after the user message
    page.click("#console-new")
    expect(page.locator("#console-transcript")).to_contain_text("Send a message to start a thread")
    page.fill("#console-input", "/error please")
    page.click("#console-send")
    expect(page.locator("#console-error")).to_be_visible()
    expect(page.locator("#console-error-reason")).to_have_text(
        "[mock] /error ended this stream with an error event on purpose."
    )
    expect(page.locator("#console-transcript .turn.assistant")).to_have_attribute(
        "data-done", "true"
    )
    tab.shot("console-backend-error")
    page.click("#console-retry")
    expect(sse_log(page).last).to_have_text("threads.retry_after_item ← error")
    expect(page.locator("#console-transcript .turn.user")).to_have_count(1)

    # no secret in the log or the console
    log_text = page.locator("#log").inner_text()
    assert answer["client_secret"] not in log_text
    assert not any(answer["client_secret"] in line for line in tab.console)


def test_retry_from_the_console_state_mounts_chatkit_once_its_script_loads(tab: Tab, mock):
    page = open_mock(tab, mock)
    page.route(CHATKIT_JS, lambda route: route.abort())
    page.click("button[data-workflow=post-writer]")
    expect(status(page)).to_have_attribute("data-state", "console")
    expect(page.locator("#console")).to_be_visible()
    tab.shot("console-state")

    page.unroute(CHATKIT_JS)
    page.route(CHATKIT_JS, serve_stand_in)
    page.click("#retry")
    expect(status(page)).to_have_attribute("data-state", "ready")
    expect(page.locator("#console")).to_be_hidden()
    expect(page.locator("#chat openai-chatkit")).to_have_count(1)


def test_protocol_console_reports_a_stream_cut_mid_reply_and_retry_recovers(tab: Tab, mock):
    page = open_mock(tab, mock)
    page.route(CHATKIT_JS, lambda route: route.abort())
    with page.expect_response("**/api/chatkit/session") as minted:
        page.click("button[data-workflow=topic-generation]")
    backend_url = minted.value.json()["backend"]["url"]
    expect(page.locator("#console")).to_be_visible()

    cut: dict[str, str] = {}

    def cut_before_the_reply_is_done(route: Route) -> None:
        """The real backend's stream, cut off before the assistant message is done."""
        response = route.fetch()
        events = response.text().split("\n\n")
        done = max(i for i, e in enumerate(events) if '"thread.item.done"' in e)
        cut["request_id"] = response.headers["x-request-id"]
        route.fulfill(response=response, body="\n\n".join(events[:done]) + "\n\n")

    page.route(f"**{backend_url}", cut_before_the_reply_is_done, times=1)
    page.fill("#console-input", "cut me off")
    page.click("#console-send")
    expect(page.locator("#console-error-reason")).to_have_text(
        "The backend closed the stream for threads.create in the middle of a reply."
    )
    expect(page.locator("#console-error-detail")).to_have_text(
        f"HTTP 200 · stream_interrupted · request id {cut['request_id']}"
    )
    expect(page.locator("#console-transcript .turn.assistant")).to_have_attribute(
        "data-done", "true"
    )
    tab.shot("console-stream-cut")

    page.click("#console-retry")
    expect(page.locator("#console-error")).to_be_hidden()
    assistant = page.locator("#console-transcript .turn.assistant")
    expect(assistant).to_have_count(1)
    expect(assistant.locator(".text")).to_contain_text("> cut me off")
    expect(sse_log(page).last).to_have_text("threads.retry_after_item ← thread.item.done")


# ------------------------------------------------------------------------- the files


def test_page_has_no_inline_script_or_style():
    """The page must work under a CSP without 'unsafe-inline' for scripts or styles."""
    html = (ROOT / "broker" / "static" / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline <script>"
    assert not re.search(r"<style\b", html), "inline <style>"
    assert not re.search(r"\sstyle=", html), "style attribute"
    assert not re.search(r"\son[a-z]+=", html), "inline event handler"
    for path in (ROOT / "broker" / "static").glob("*.js"):
        js = path.read_text()
        assert "innerHTML" not in js and 'setAttribute("style"' not in js, path.name
        assert "insertAdjacentHTML" not in js and "document.write" not in js, path.name
        assert "__chatkitBroker" not in js, f"{path.name} has a test hook"


# ------------------------------------------------------------------------- every kind


@pytest.mark.parametrize("kind", ["hosted", "gateway", "agent", "mock"])
def test_the_page_connects_every_backend_kind_through_the_kit(tab: Tab, mock, kind):
    """The mint answer alone decides the mode (SPEC: ``backend`` null for hosted, else
    ``{url, domain_key}``); the page shows the kind and URL and hands ChatKit what the kit built."""
    page = tab.page
    page.route(CHATKIT_JS, serve_stand_in)
    custom = kind != "hosted"
    secret = f"cks_{kind}_secret" if custom else "ek_hosted_secret"
    answer = {
        "client_secret": secret,
        "expires_at": int(time.time()) + 600,
        "session_id": f"cksess_{kind}",
        "workflow": {"name": "post-writer", "kind": kind, "id": None if custom else "wf_x"},
        "backend": {"url": "/chatkit/post-writer", "domain_key": "local-dev"} if custom else None,
        "mock": kind == "mock",
    }
    page.route("**/api/chatkit/session", lambda route: route.fulfill(json=answer))
    backend_auth: list[str] = []

    def backend(route: Route) -> None:
        backend_auth.append(route.request.headers.get("authorization", ""))
        route.fulfill(json={"data": [], "has_more": False})

    page.route("**/chatkit/post-writer", backend)
    page.goto(mock.url + "/")
    page.click("button[data-workflow=post-writer]")
    expect(status(page)).to_have_attribute("data-state", "ready")
    expect(page.locator("#backend dd[data-field=kind]")).to_have_text(kind)
    expect(page.locator("#backend dd[data-field=url]")).to_have_text(
        "/chatkit/post-writer" if custom else "OpenAI (hosted; ChatKit talks to api.openai.com)"
    )
    [options] = tab.stand_in()["setOptions"]
    if custom:
        assert options["apiKeys"] == ["domainKey", "fetch", "url"]
        assert options["url"] == "/chatkit/post-writer"
        assert options["domainKey"] == "local-dev"
        assert backend_auth == [f"Bearer {secret}"]
    else:
        assert options["apiKeys"] == ["getClientSecret"]
        assert tab.stand_in()["secrets"] == [secret]
        assert backend_auth == []
    assert secret not in page.locator("#log").inner_text()
    tab.shot(f"kind-{kind}")


def test_protocol_console_resends_a_message_the_backend_never_got(tab: Tab, mock):
    page = open_mock(tab, mock)
    page.route(CHATKIT_JS, lambda route: route.abort())
    with page.expect_response("**/api/chatkit/session") as minted:
        page.click("button[data-workflow=topic-generation]")
    backend_url = minted.value.json()["backend"]["url"]
    expect(page.locator("#console")).to_be_visible()

    page.route(f"**{backend_url}", lambda route: route.abort("connectionreset"), times=1)
    page.fill("#console-input", "are you there?")
    page.click("#console-send")
    expect(page.locator("#console-error-reason")).to_contain_text(
        f"Could not reach the ChatKit backend at {backend_url}"
    )
    expect(page.locator("#console-transcript .turn")).to_have_count(0)
    tab.shot("console-network-error")

    page.click("#console-retry")  # nothing reached the thread: the same message goes again
    expect(page.locator("#console-transcript .turn.user .text")).to_have_text("are you there?")
    expect(page.locator("#console-transcript .turn.assistant")).to_have_attribute(
        "data-done", "true"
    )
    expect(sse_log(page).last).to_have_text("threads.create ← thread.item.done")
