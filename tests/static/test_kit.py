"""The front-end kit (``broker/static/chatkit-broker.js``) in real Chromium, against a broker
whose answers each test scripts through request interception.

The page is a blank document on ``http://kit.test`` that imports the module from disk; every
request to ``/api/…`` or a backend URL is answered by ``FakeBroker`` with the broker's real
wire format (the mint answer of SPEC §4, the error body ``{"error": {code, message,
request_id}}``) and recorded, so a test sees exactly what the kit sent.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from ..support import ROOT, need
from ..support.browser import Tab

if TYPE_CHECKING:
    from playwright.sync_api import Route

ORIGIN = "http://kit.test"
KIT = (ROOT / "broker" / "static" / "chatkit-broker.js").read_text()
PROTOCOL = (ROOT / "broker" / "static" / "chatkit-protocol.js").read_text()
BLANK = "<!doctype html><title>kit</title><p>kit test</p>"
JWT = "header.payload.signature"


def mint_answer(n: int, *, backend: bool = False, ttl: float = 600, **extra: Any) -> dict[str, Any]:
    """The broker's answer to POST /api/chatkit/session, hosted or custom (the seam's shape)."""
    answer: dict[str, Any] = {
        "client_secret": f"cks_secret{n}" if backend else f"ek_secret{n}",
        "expires_at": time.time() + ttl,
        "session_id": f"cksess_{n}",
        "workflow": {"name": "demo", "kind": "gateway" if backend else "hosted", "id": None},
        "backend": {"url": "/chatkit/demo", "domain_key": "local-dev"} if backend else None,
        "mock": False,
    }
    return answer | extra


def error(status: int, code: str, message: str, request_id: str, **headers: str):
    body = {"error": {"code": code, "message": message, "request_id": request_id}}
    return {"status": status, "json": body, "headers": {"X-Request-ID": request_id, **headers}}


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeBroker:
    """Answers each path from a script (the last answer repeats) and records every request."""

    answers: dict[str, list[Any]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    hanging: list[Route] = field(default_factory=list)

    def script(self, path: str, *answers: Any) -> None:
        self.answers[path] = list(answers)

    def requests(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    def handle(self, route: Route) -> None:
        request = route.request
        path = request.url.removeprefix(ORIGIN).split("?")[0]
        if path == "/":
            return route.fulfill(body=BLANK, content_type="text/html")
        if path == "/chatkit-broker.js":
            return route.fulfill(body=KIT, content_type="text/javascript")
        if path == "/chatkit-protocol.js":
            return route.fulfill(body=PROTOCOL, content_type="text/javascript")
        body = request.post_data
        self.seen.append(Seen(path, dict(request.headers), json.loads(body) if body else None))
        queue = self.answers.get(path)
        if not queue:
            return route.fulfill(
                status=404,
                json={"error": {"code": "not_found", "message": path, "request_id": "r404"}},
            )
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if callable(answer):
            answer = answer()
        if answer == "abort":
            return route.abort("connectionreset")
        if answer == "hang":  # never answered: the request stays pending until the page gives up
            self.hanging.append(route)
            return None
        if "status" not in answer:  # a plain mint answer
            answer = {"status": 200, "json": answer}
        route.fulfill(**answer)


@pytest.fixture
def kit(tab: Tab) -> tuple[Tab, FakeBroker]:
    fake = FakeBroker()
    tab.page.route(f"{ORIGIN}/**", fake.handle)
    tab.page.goto(ORIGIN + "/")
    tab.page.evaluate(
        """() => { window.__rejections = [];
        addEventListener("unhandledrejection", (e) => window.__rejections.push(String(e.reason))); }"""
    )
    yield tab, fake
    assert tab.page.evaluate("window.__rejections") == [], "an unhandled rejection escaped the kit"


# JS helpers every scenario gets: the module, and errors as plain data.
PRELUDE = """
const kit = await import("/chatkit-broker.js");
const asData = (e) => e instanceof kit.BrokerError
  ? {isBrokerError: true, status: e.status, code: e.code, message: e.message, requestId: e.requestId}
  : {isBrokerError: false, message: String(e)};
const tokens = [];
const getToken = ({afterUnauthorized}) => { tokens.push(afterUnauthorized); return afterUnauthorized ? "fresh.jwt" : "header.payload.signature"; };
const events = [];
const onEvent = (e) => events.push({type: e.type, reason: e.reason ?? null, sessionId: e.sessionId ?? null,
  previousSessionId: e.previousSessionId ?? null, status: e.status ?? null, delayMs: e.delayMs ?? null,
  kind: e.kind ?? null, backendUrl: e.backendUrl ?? null, code: e.error?.code ?? null, name: e.name ?? null});
const fast = {retries: 2, baseDelayMs: 10, maxDelayMs: 20};
"""


def run(tab: Tab, body: str) -> Any:
    """Runs an async scenario in the page with the prelude's helpers; returns its result."""
    return tab.page.evaluate(f"async () => {{ {PRELUDE}\n{body} }}")


MintScenario = Callable[..., Any]


# ------------------------------------------------------------------------- hosted


def test_hosted_prefetches_the_first_secret_and_refreshes_with_the_previous_session(kit):
    tab, fake = kit
    fake.script("/api/chatkit/session", mint_answer(1), mint_answer(2))
    result = run(
        tab,
        """
        const api = await kit.createChatKitApi({workflow: "demo", getToken, onEvent});
        const mintsBefore = events.filter((e) => e.type === "mint").length;
        const first = await api.getClientSecret(null);
        const afterFirst = events.filter((e) => e.type === "request").length;
        const second = await api.getClientSecret(first);
        return {keys: Object.keys(api), mintsBefore, first, afterFirst, second, events,
                described: kit.describeApi(api)};
        """,
    )
    assert result["keys"] == ["getClientSecret"]
    # the first secret was minted by createChatKitApi; getClientSecret(null) only hands it over
    assert result["mintsBefore"] == 1
    assert result["afterFirst"] == 1
    assert result["first"] == "ek_secret1"
    assert result["second"] == "ek_secret2"
    first, second = fake.requests("/api/chatkit/session")
    assert first.body == {"workflow": "demo"}
    assert second.body == {"workflow": "demo", "previous_session_id": "cksess_1"}
    assert first.headers["authorization"] == f"Bearer {JWT}"
    assert first.headers["content-type"] == "application/json"
    kinds = [
        (e["type"], e["sessionId"], e["previousSessionId"])
        for e in result["events"]
        if e["type"] in ("mint", "refresh")
    ]
    assert kinds == [("mint", "cksess_1", None), ("refresh", "cksess_2", "cksess_1")]
    assert result["described"]["kind"] == "hosted"
    assert result["described"]["backendUrl"] is None
    # no event carries a secret or the token
    dumped = json.dumps(result["events"])
    assert "ek_secret" not in dumped and JWT not in dumped


def test_a_401_from_the_mint_asks_get_token_once_more(kit):
    tab, fake = kit
    refused = error(401, "unauthenticated", "The token has expired.", "req_401")
    fake.script("/api/chatkit/session", refused, mint_answer(1))
    result = run(
        tab,
        "const api = await kit.createChatKitApi({workflow: 'demo', getToken}); return {tokens, secret: await api.getClientSecret(null)};",
    )
    assert result == {"tokens": [False, True], "secret": "ek_secret1"}
    first, second = fake.requests("/api/chatkit/session")
    assert first.headers["authorization"] == f"Bearer {JWT}"
    assert second.headers["authorization"] == "Bearer fresh.jwt"


def test_a_second_401_is_final_with_the_brokers_facts(kit):
    tab, fake = kit
    fake.script(
        "/api/chatkit/session", error(401, "unauthenticated", "The token has expired.", "req_401")
    )
    result = run(
        tab,
        "try { await kit.createChatKitApi({workflow: 'demo', getToken, retry: fast}); return 'resolved'; }"
        " catch (e) { return {error: asData(e), tokens}; }",
    )
    assert result["error"] == {
        "isBrokerError": True,
        "status": 401,
        "code": "unauthenticated",
        "message": "The token has expired.",
        "requestId": "req_401",
    }
    assert result["tokens"] == [False, True]
    assert len(fake.requests("/api/chatkit/session")) == 2


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (403, "workflow_not_allowed"),
        (400, "invalid_request"),
        (404, "not_found"),
        (502, "upstream_workflow_not_found"),
    ],
)
def test_403_other_4xx_and_configuration_errors_are_final(kit, status, code):
    tab, fake = kit
    fake.script("/api/chatkit/session", error(status, code, "No.", "req_final"))
    result = run(
        tab,
        "try { await kit.createChatKitApi({workflow: 'demo', getToken, retry: fast, onEvent}); return 'resolved'; }"
        " catch (e) { return {error: asData(e), tokens, events}; }",
    )
    assert result["error"]["status"] == status
    assert result["error"]["code"] == code
    assert result["error"]["requestId"] == "req_final"
    assert len(fake.requests("/api/chatkit/session")) == 1
    assert result["tokens"] == [False]
    assert [e["type"] for e in result["events"]] == ["request", "error"]


def test_5xx_and_network_errors_are_retried_with_back_off_then_succeed(kit):
    tab, fake = kit
    fake.script(
        "/api/chatkit/session",
        error(503, "upstream_unavailable", "OpenAI is unreachable.", "req_503"),
        "abort",
        mint_answer(1),
    )
    result = run(
        tab,
        "const api = await kit.createChatKitApi({workflow: 'demo', getToken, retry: fast, onEvent});"
        " return {secret: await api.getClientSecret(null), events};",
    )
    assert result["secret"] == "ek_secret1"
    retries = [e for e in result["events"] if e["type"] == "retry"]
    assert [r["code"] for r in retries] == ["upstream_unavailable", "network_error"]
    assert all(5 <= r["delayMs"] <= 20 for r in retries)
    assert len(fake.requests("/api/chatkit/session")) == 3


def test_retry_after_is_honoured(kit):
    tab, fake = kit
    fake.script(
        "/api/chatkit/session",
        error(429, "rate_limited", "Too many mints.", "req_429", **{"Retry-After": "1"}),
        mint_answer(1),
    )
    result = run(
        tab,
        "const t0 = performance.now(); await kit.createChatKitApi({workflow: 'demo', getToken, retry: fast, onEvent});"
        " return {ms: performance.now() - t0, events};",
    )
    [retry] = [e for e in result["events"] if e["type"] == "retry"]
    assert retry["delayMs"] == 1000
    assert result["ms"] >= 950


def test_a_broker_that_keeps_failing_surfaces_one_error_after_the_retries(kit):
    tab, fake = kit
    fake.script(
        "/api/chatkit/session", error(500, "internal_error", "Something went wrong.", "req_500")
    )
    result = run(
        tab,
        "try { await kit.createChatKitApi({workflow: 'demo', getToken, retry: fast, onEvent}); return 'resolved'; }"
        " catch (e) { return {error: asData(e), errors: events.filter((e) => e.type === 'error').length}; }",
    )
    assert result["error"]["code"] == "internal_error"
    assert result["error"]["requestId"] == "req_500"
    assert result["errors"] == 1
    assert len(fake.requests("/api/chatkit/session")) == 3  # the first try and two retries


def test_a_broker_that_never_answers_times_out_and_is_retried(kit):
    tab, fake = kit
    fake.script("/api/chatkit/session", "hang", mint_answer(1))
    result = run(
        tab,
        "const api = await kit.createChatKitApi({workflow: 'demo', getToken, retry: fast, timeoutMs: 300, onEvent});"
        " return {secret: await api.getClientSecret(null), events};",
    )
    assert result["secret"] == "ek_secret1"
    [retry] = [e for e in result["events"] if e["type"] == "retry"]
    assert retry["code"] == "timeout"
    assert len(fake.requests("/api/chatkit/session")) == 2


def test_a_broker_that_keeps_hanging_is_one_timeout_error(kit):
    tab, fake = kit
    fake.script("/api/chatkit/session", "hang")
    result = run(
        tab,
        "const t0 = performance.now();"
        " try { await kit.createChatKitApi({workflow: 'demo', getToken, retry: fast, timeoutMs: 200}); return 'resolved'; }"
        " catch (e) { return {error: asData(e), ms: performance.now() - t0}; }",
    )
    assert result["error"]["code"] == "timeout"
    assert (
        result["error"]["message"]
        == "The broker did not answer POST /api/chatkit/session within 0.2 s."
    )
    assert len(fake.requests("/api/chatkit/session")) == 3  # the first try and two retries
    assert result["ms"] < 3000


def test_a_retry_after_longer_than_the_kit_waits_surfaces_at_once(kit):
    tab, fake = kit
    fake.script(
        "/api/chatkit/session",
        error(429, "rate_limited", "Slow down.", "req_429", **{"Retry-After": "3600"}),
    )
    result = run(
        tab,
        "try { await kit.createChatKitApi({workflow: 'demo', getToken}); } catch (e) { return asData(e); }",
    )
    assert result["code"] == "rate_limited"
    assert len(fake.requests("/api/chatkit/session")) == 1


@pytest.mark.parametrize(
    ("answer", "status", "retried"),
    [
        (
            {
                "status": 200,
                "body": "<html><body>Welcome to nginx</body></html>",
                "content_type": "text/html",
                "headers": {"X-Request-ID": "req_html"},
            },
            200,
            False,
        ),
        (
            {"status": 200, "json": {"ok": True}, "headers": {"X-Request-ID": "req_html"}},
            200,
            False,
        ),
        (
            {
                "status": 200,
                "body": '{"client_secret": "ek_trunc',
                "content_type": "application/json",
                "headers": {"X-Request-ID": "req_html"},
            },
            200,
            False,
        ),
        (
            {
                "status": 502,
                "body": "<html>502 Bad Gateway</html>",
                "content_type": "text/html",
                "headers": {"X-Request-ID": "req_html"},
            },
            502,
            True,
        ),
    ],
    ids=["html-200", "json-not-a-session", "truncated-json", "proxy-502-page"],
)
def test_garbage_or_a_proxys_page_is_one_clear_error(kit, answer, status, retried):
    tab, fake = kit
    fake.script("/api/chatkit/session", answer)
    result = run(
        tab,
        "try { await kit.createChatKitApi({workflow: 'demo', getToken, retry: fast}); return 'resolved'; }"
        " catch (e) { return asData(e); }",
    )
    assert result["isBrokerError"] is True
    assert result["code"] == "bad_response"
    assert result["status"] == status
    assert result["requestId"] == "req_html"
    assert "nginx" not in result["message"] and "Bad Gateway" not in result["message"]
    assert len(fake.requests("/api/chatkit/session")) == (3 if retried else 1)


@pytest.mark.parametrize(
    ("get_token", "code"),
    [
        ("() => { throw new Error('sign-in popup closed'); }", "token_error"),
        ("async () => { throw new Error('sign-in popup closed'); }", "token_error"),
        ("() => undefined", "no_token"),
        ("async () => ''", "no_token"),
    ],
)
def test_a_get_token_that_throws_or_returns_nothing_is_one_clear_error(kit, get_token, code):
    tab, fake = kit
    fake.script("/api/chatkit/session", mint_answer(1))
    result = run(
        tab,
        f"try {{ await kit.createChatKitApi({{workflow: 'demo', getToken: {get_token}}}); return 'resolved'; }} catch (e) {{ return asData(e); }}",
    )
    assert result["code"] == code
    assert result["status"] == 0
    if code == "token_error":
        assert "sign-in popup closed" in result["message"]
    assert fake.requests("/api/chatkit/session") == []


def test_without_get_token_no_authorization_is_sent(kit):
    tab, fake = kit
    fake.script("/api/chatkit/session", mint_answer(1))
    run(tab, "await kit.createChatKitApi({workflow: 'demo'});")
    [seen] = fake.requests("/api/chatkit/session")
    assert "authorization" not in seen.headers


def test_the_broker_option_sends_requests_to_that_origin(kit):
    tab, fake = kit
    fake.script("/api/chatkit/session", mint_answer(1, backend=True))
    result = run(
        tab,
        "const api = await kit.createChatKitApi({workflow: 'demo', getToken, broker: 'http://kit.test/'}); return api.url;",
    )
    assert result == "http://kit.test/chatkit/demo"


# ------------------------------------------------------------------------- custom backends


def test_custom_backend_fetch_carries_the_session_secret(kit):
    tab, fake = kit
    fake.script("/api/chatkit/session", mint_answer(1, backend=True))
    fake.script("/chatkit/demo", {"status": 200, "json": {"data": [], "has_more": False}})
    result = run(
        tab,
        """
        const api = await kit.createChatKitApi({workflow: "demo", getToken, onEvent});
        const res = await api.fetch(api.url, {method: "POST", headers: {"Content-Type": "application/json"},
          body: JSON.stringify({type: "threads.list", params: {}})});
        return {keys: Object.keys(api).sort(), url: api.url, domainKey: api.domainKey, status: res.status,
                body: await res.json(), described: kit.describeApi(api), events};
        """,
    )
    assert result["keys"] == ["domainKey", "fetch", "url"]
    assert result["url"] == "/chatkit/demo"
    assert result["domainKey"] == "local-dev"
    assert result["status"] == 200
    [seen] = fake.requests("/chatkit/demo")
    assert seen.headers["authorization"] == "Bearer cks_secret1"
    assert seen.headers["content-type"] == "application/json"
    assert seen.body == {"type": "threads.list", "params": {}}
    assert result["described"] | {"expiresAt": 0} == {
        "workflow": "demo",
        "kind": "gateway",
        "backendUrl": "/chatkit/demo",
        "attachments": None,
        "sessionId": "cksess_1",
        "expiresAt": 0,
    }
    assert "cks_secret" not in json.dumps(result["events"])


def test_custom_backend_secret_is_renewed_before_it_expires(kit):
    tab, fake = kit
    # The first secret lives 2 s; with a 1.5 s margin the second request must not use it.
    fake.script(
        "/api/chatkit/session",
        lambda: mint_answer(1, backend=True, ttl=2),
        lambda: mint_answer(2, backend=True),
    )
    fake.script("/chatkit/demo", {"status": 200, "json": {"data": [], "has_more": False}})
    result = run(
        tab,
        """
        const api = await kit.createChatKitApi({workflow: "demo", getToken, onEvent, refreshMarginMs: 1500});
        const send = () => api.fetch(api.url, {method: "POST", body: "{}"});
        await send();
        await new Promise((r) => setTimeout(r, 1200));
        await send();
        await send();
        return events.filter((e) => e.type === "refresh");
        """,
    )
    assert [s.headers["authorization"] for s in fake.requests("/chatkit/demo")] == [
        "Bearer cks_secret1",
        "Bearer cks_secret2",
        "Bearer cks_secret2",
    ]
    _, second = fake.requests("/api/chatkit/session")
    assert second.body == {"workflow": "demo", "previous_session_id": "cksess_1"}
    [refresh] = result
    assert refresh["reason"] == "the secret is about to expire"


def test_custom_backend_secret_that_expired_is_renewed(kit):
    tab, fake = kit
    fake.script(
        "/api/chatkit/session",
        lambda: mint_answer(1, backend=True, ttl=1),
        lambda: mint_answer(2, backend=True),
    )
    fake.script("/chatkit/demo", {"status": 200, "json": {}})
    run(
        tab,
        """
        const api = await kit.createChatKitApi({workflow: "demo", getToken});
        await new Promise((r) => setTimeout(r, 1300));
        await api.fetch(api.url, {method: "POST", body: "{}"});
        """,
    )
    assert [s.headers["authorization"] for s in fake.requests("/chatkit/demo")] == [
        "Bearer cks_secret2"
    ]


def test_a_401_from_the_backend_re_mints_once_and_replays_the_request(kit):
    tab, fake = kit
    fake.script(
        "/api/chatkit/session",
        mint_answer(1, backend=True),
        mint_answer(2, backend=True),
        mint_answer(3, backend=True),
    )
    refused = error(401, "unauthenticated", "This session secret was cancelled.", "req_b401")
    fake.script("/chatkit/demo", refused, {"status": 200, "json": {"ok": 1}}, refused)
    result = run(
        tab,
        """
        const api = await kit.createChatKitApi({workflow: "demo", getToken});
        const body = JSON.stringify({type: "threads.list", params: {}});
        const ok = await api.fetch(api.url, {method: "POST", body});
        const refused = await api.fetch(api.url, {method: "POST", body});
        return {ok: ok.status, refused: refused.status, refusedBody: await refused.json()};
        """,
    )
    # first call: 401, re-mint, replay → 200; second: 401, re-mint, replay → 401 handed to ChatKit
    assert result["ok"] == 200
    assert result["refused"] == 401
    assert result["refusedBody"]["error"]["request_id"] == "req_b401"
    auths = [s.headers["authorization"] for s in fake.requests("/chatkit/demo")]
    assert auths == [
        "Bearer cks_secret1",
        "Bearer cks_secret2",
        "Bearer cks_secret2",
        "Bearer cks_secret3",
    ]
    assert [s.body for s in fake.requests("/chatkit/demo")] == [
        {"type": "threads.list", "params": {}}
    ] * 4
    mints = fake.requests("/api/chatkit/session")
    assert [m.body.get("previous_session_id") for m in mints] == [None, "cksess_1", "cksess_2"]


def test_a_backend_that_cannot_be_reached_is_a_broker_error(kit):
    tab, fake = kit
    fake.script("/api/chatkit/session", mint_answer(1, backend=True))
    fake.script("/chatkit/demo", "abort")
    result = run(
        tab,
        "const api = await kit.createChatKitApi({workflow: 'demo', getToken});"
        " try { await api.fetch(api.url, {method: 'POST', body: '{}'}); return 'resolved'; } catch (e) { return asData(e); }",
    )
    assert result["code"] == "network_error"
    assert "/chatkit/demo" in result["message"]


# ------------------------------------------------------------------------- connectChatKit


STAND_IN_ELEMENT = """
class FakeChatKit extends HTMLElement {
  setOptions(options) { (window.__options ||= []).push(options); }
}
"""


def test_connect_chatkit_waits_for_the_element_mints_and_forwards_events(kit):
    tab, fake = kit
    fake.script("/api/chatkit/session", mint_answer(1), mint_answer(2))
    fake.script(
        "/api/chatkit/session/cancel",
        {"status": 200, "json": {"cancelled": ["cksess_1", "cksess_0"]}},
    )
    result = run(
        tab,
        STAND_IN_ELEMENT
        + """
        const el = document.createElement("openai-chatkit");
        document.body.append(el);
        const pending = kit.connectChatKit(el, {workflow: "demo", getToken, onEvent, theme: {colorScheme: "dark"}});
        await new Promise((r) => setTimeout(r, 100));
        const setBeforeDefined = (window.__options || []).length;
        customElements.define("openai-chatkit", FakeChatKit);
        const chat = await pending;
        const [options] = window.__options;
        el.dispatchEvent(new CustomEvent("chatkit.ready"));
        el.dispatchEvent(new CustomEvent("chatkit.thread.change", {detail: {threadId: "thr_1"}}));
        const secret = await options.api.getClientSecret(null);
        const cancelled = await chat.signOut();
        let after;
        try { await options.api.getClientSecret(secret); } catch (e) { after = asData(e); }
        chat.disconnect();
        el.dispatchEvent(new CustomEvent("chatkit.log", {detail: {name: "late"}}));
        return {setBeforeDefined, optionKeys: Object.keys(options).sort(), theme: options.theme, sameApi: options.api === chat.api,
                secret, cancelled, after, events, entries: chat.events.entries.map((e) => e.type)};
        """,
    )
    assert result["setBeforeDefined"] == 0
    assert result["optionKeys"] == ["api", "theme"]
    assert result["theme"] == {"colorScheme": "dark"}
    assert result["sameApi"] is True
    assert result["secret"] == "ek_secret1"
    assert result["cancelled"] == ["cksess_1", "cksess_0"]
    assert result["after"]["code"] == "signed_out"
    [cancel] = fake.requests("/api/chatkit/session/cancel")
    assert cancel.body == {"all": True}
    assert cancel.headers["authorization"] == f"Bearer {JWT}"
    chatkit = [(e["name"]) for e in result["events"] if e["type"] == "chatkit"]
    assert chatkit == ["chatkit.ready", "chatkit.thread.change"]  # nothing after disconnect()
    assert result["entries"] == ["request", "mint", "chatkit", "chatkit", "request", "signout"]
    assert len(fake.requests("/api/chatkit/session")) == 1  # no mint after sign-out


def test_aborting_stops_a_mint_in_back_off(kit):
    tab, fake = kit
    fake.script("/api/chatkit/session", error(503, "upstream_unavailable", "Down.", "req_503"))
    result = run(
        tab,
        """
        const abort = new AbortController();
        const pending = kit.createChatKitApi({workflow: "demo", getToken, signal: abort.signal,
          retry: {retries: 5, baseDelayMs: 5000}});
        await new Promise((r) => setTimeout(r, 200));
        abort.abort();
        try { await pending; return "resolved"; } catch (e) { return asData(e); }
        """,
    )
    assert result["code"] == "aborted"
    assert len(fake.requests("/api/chatkit/session")) == 1


# ------------------------------------------------------------------------- the protocol client


def chatkit_types() -> Any:
    """chatkit-python's own models (the mock extra), to hold the fixtures to the real wire format."""
    try:
        from pydantic import TypeAdapter

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # chatkit.widgets at import
            from chatkit.types import ChatKitReq, ThreadStreamEvent
    except ImportError:
        need(False, "openai-chatkit is not installed (pip install '.[mock]')")
    return TypeAdapter(ThreadStreamEvent), TypeAdapter(ChatKitReq)


def sse(*events: dict[str, Any]) -> str:
    """A server-sent-event body; every event must parse as chatkit's ThreadStreamEvent."""
    stream_event, _ = chatkit_types()
    for event in events:
        stream_event.validate_python(event)
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events)


def assert_chatkit_request(body: Any) -> None:
    _, request = chatkit_types()
    request.validate_python(body)


ITEM = {
    "id": "msg_1",
    "thread_id": "thr_1",
    "created_at": "2026-12-01T10:00:00",
    "type": "assistant_message",
}


def test_protocol_stream_closed_mid_reply_is_one_error_with_the_request_id(kit):
    tab, fake = kit
    fake.script("/api/chatkit/session", mint_answer(1, backend=True))
    cut = sse(
        {
            "type": "thread.created",
            "thread": {
                "id": "thr_1",
                "title": None,
                "created_at": "2026-12-01T10:00:00",
                "status": {"type": "active"},
                "metadata": {},
                "items": {"data": [], "has_more": False},
            },
        },
        {"type": "thread.item.added", "item": ITEM | {"content": []}},
        {
            "type": "thread.item.updated",
            "item_id": "msg_1",
            "update": {
                "type": "assistant_message.content_part.text_delta",
                "content_index": 0,
                "delta": "Hel",
            },
        },
    )
    fake.script(
        "/chatkit/demo",
        {
            "status": 200,
            "body": cut,
            "content_type": "text/event-stream",
            "headers": {"X-Request-ID": "req_cut"},
        },
    )
    result = run(
        tab,
        """
        const {ProtocolClient, emptyTranscript} = await import("/chatkit-protocol.js");
        const api = await kit.createChatKitApi({workflow: "demo", getToken});
        const seen = [];
        const client = new ProtocolClient({url: api.url, fetch: api.fetch, onEvent: (e) => seen.push(e.type)});
        const t = emptyTranscript();
        try { await client.createThread("hi", t); return "resolved"; }
        catch (e) { return {error: asData(e), seen, t}; }
        """,
    )
    assert result["error"]["code"] == "stream_interrupted"
    assert result["error"]["requestId"] == "req_cut"
    assert "middle of a reply" in result["error"]["message"]
    assert result["seen"] == ["thread.created", "thread.item.added", "thread.item.updated"]
    assert result["t"]["threadId"] == "thr_1"
    assert result["t"]["messages"] == [
        {
            "id": "msg_1",
            "role": "assistant",
            "text": "Hel",
            "parts": ["Hel"],
            "attachments": [],
            "done": True,
        }
    ]
    [seen] = fake.requests("/chatkit/demo")
    assert_chatkit_request(seen.body)
    assert seen.body == {
        "type": "threads.create",
        "params": {
            "input": {
                "content": [{"type": "input_text", "text": "hi"}],
                "attachments": [],
                "inference_options": {},
            }
        },
    }


def test_protocol_stream_with_an_error_event_is_not_an_interruption(kit):
    tab, fake = kit
    fake.script("/api/chatkit/session", mint_answer(1, backend=True))
    body = sse(
        {"type": "thread.item.added", "item": ITEM | {"content": []}},
        {
            "type": "error",
            "code": "custom",
            "message": "[mock] failing on purpose",
            "allow_retry": True,
        },
    )
    fake.script("/chatkit/demo", {"status": 200, "body": body, "content_type": "text/event-stream"})
    result = run(
        tab,
        """
        const {ProtocolClient, emptyTranscript} = await import("/chatkit-protocol.js");
        const api = await kit.createChatKitApi({workflow: "demo", getToken});
        const t = emptyTranscript();
        await new ProtocolClient({url: api.url, fetch: api.fetch}).addUserMessage("thr_1", "hi", t);
        return t.error;
        """,
    )
    assert result == {"message": "[mock] failing on purpose", "allowRetry": True}


def test_protocol_error_answer_is_a_broker_error(kit):
    tab, fake = kit
    fake.script("/api/chatkit/session", mint_answer(1, backend=True))
    fake.script(
        "/chatkit/demo", error(502, "backend_error", "The ChatKit server answered 500.", "req_be")
    )
    result = run(
        tab,
        """
        const {ProtocolClient} = await import("/chatkit-protocol.js");
        const api = await kit.createChatKitApi({workflow: "demo", getToken});
        try { await new ProtocolClient({url: api.url, fetch: api.fetch}).listThreads(); } catch (e) { return asData(e); }
        """,
    )
    assert result == {
        "isBrokerError": True,
        "status": 502,
        "code": "backend_error",
        "message": "The ChatKit server answered 500.",
        "requestId": "req_be",
    }


def test_protocol_events_split_anywhere_parse_the_same(kit):
    """Chunks cut mid-line, CRLF line ends, comments and multi-line data (the SSE rules)."""
    tab, _ = kit
    added = {"type": "thread.item.added", "item": ITEM | {"content": []}}
    delta = {
        "type": "thread.item.updated",
        "item_id": "msg_1",
        "update": {
            "type": "assistant_message.content_part.text_delta",
            "content_index": 0,
            "delta": "a\nb",
        },
    }
    done = {
        "type": "thread.item.done",
        "item": ITEM | {"content": [{"type": "output_text", "text": "a\nb", "annotations": []}]},
    }
    body = sse(added, delta, done)
    body = ": keep-alive\r\n\r\n" + body.replace("\n\n", "\r\n\r\n", 1)
    # the last event's JSON split over two data lines, which SSE joins with a newline
    last = json.dumps(done)
    cut = last.index(", ") + 1  # between two JSON tokens, where the joining newline is harmless
    body = body.replace(f"data: {last}", f"data: {last[:cut]}\ndata: {last[cut:]}")
    result = run(
        tab,
        f"""
        const {{readEvents}} = await import("/chatkit-protocol.js");
        const text = {json.dumps(body)};
        const bytes = new TextEncoder().encode(text);
        const results = [];
        for (const size of [1, 3, 7, 64, bytes.length]) {{
          const stream = new ReadableStream({{start(c) {{
            for (let i = 0; i < bytes.length; i += size) c.enqueue(bytes.slice(i, i + size));
            c.close();
          }}}});
          const seen = [];
          for await (const e of readEvents(new Response(stream), "test")) seen.push(e.type === "thread.item.updated" ? e.update.delta : e.type);
          results.push(seen);
        }}
        return results;
        """,
    )
    assert all(r == result[0] for r in result), result
    assert result[0] == ["thread.item.added", "a\nb", "thread.item.done"]


def test_protocol_stream_that_errors_mid_body_is_interrupted(kit):
    tab, _ = kit
    first = sse({"type": "thread.item.added", "item": ITEM | {"content": []}})
    result = run(
        tab,
        f"""
        const {{readEvents}} = await import("/chatkit-protocol.js");
        const stream = new ReadableStream({{start(c) {{
          c.enqueue(new TextEncoder().encode({json.dumps(first)} + "data: {{\\"type\\": \\"thr"));
          setTimeout(() => c.error(new TypeError("network error")), 20);
        }}}});
        const res = new Response(stream, {{headers: {{"X-Request-ID": "req_reset"}}}});
        const seen = [];
        try {{ for await (const e of readEvents(res, "threads.create")) seen.push(e.type); return "resolved"; }}
        catch (e) {{ return {{error: asData(e), seen}}; }}
        """,
    )
    assert result["seen"] == ["thread.item.added"]
    assert result["error"]["code"] == "stream_interrupted"
    assert result["error"]["requestId"] == "req_reset"
    assert (
        result["error"]["message"]
        == "The backend's stream for threads.create broke off after 1 events."
    )


def test_a_prefetched_hosted_secret_that_expired_is_not_handed_over(kit):
    tab, fake = kit
    fake.script("/api/chatkit/session", lambda: mint_answer(1, ttl=1), lambda: mint_answer(2))
    result = run(
        tab,
        "const api = await kit.createChatKitApi({workflow: 'demo', getToken});"
        " await new Promise((r) => setTimeout(r, 1300)); return api.getClientSecret(null);",
    )
    assert result == "ek_secret2"
    assert fake.requests("/api/chatkit/session")[1].body["previous_session_id"] == "cksess_1"


def test_an_error_that_is_only_a_string_keeps_its_words(kit):
    tab, fake = kit
    fake.script("/api/chatkit/session", {"status": 400, "json": {"error": "Missing workflow id"}})
    result = run(
        tab,
        "try { await kit.createChatKitApi({workflow: 'demo', getToken}); } catch (e) { return asData(e); }",
    )
    assert result["message"] == "Missing workflow id"
    assert result["code"] == "http_400"


def test_protocol_transcript_follows_each_content_part(kit):
    tab, _ = kit
    part = {"type": "output_text", "text": "", "annotations": []}

    def delta(i: int, text: str) -> dict[str, Any]:
        update = {"type": "assistant_message.content_part.text_delta", "content_index": i}
        return {
            "type": "thread.item.updated",
            "item_id": "msg_1",
            "update": update | {"delta": text},
        }

    events = [
        {"type": "thread.item.added", "item": ITEM | {"content": []}},
        {
            "type": "thread.item.updated",
            "item_id": "msg_1",
            "update": {
                "type": "assistant_message.content_part.added",
                "content_index": 0,
                "content": part,
            },
        },
        delta(0, "One "),
        {
            "type": "thread.item.updated",
            "item_id": "msg_1",
            "update": {
                "type": "assistant_message.content_part.added",
                "content_index": 1,
                "content": part,
            },
        },
        delta(1, "two."),
        delta(0, "and "),
    ]
    sse(*events)  # each one is a valid ThreadStreamEvent
    result = run(
        tab,
        f"""
        const {{applyEvent, emptyTranscript}} = await import("/chatkit-protocol.js");
        const t = emptyTranscript();
        for (const e of {json.dumps(events)}) applyEvent(t, e);
        return t.messages;
        """,
    )
    assert result == [
        {
            "id": "msg_1",
            "role": "assistant",
            "text": "One and two.",
            "parts": ["One and ", "two."],
            "attachments": [],
            "done": False,
        }
    ]


def test_connect_chatkit_turns_attachments_on_from_the_workflows_file_policy(kit):
    tab, fake = kit
    policy = {
        "enabled": True,
        "max_size": 2000,
        "max_count": 2,
        "accept": {"image/png": [".png"]},
    }
    backend = {
        "url": "/chatkit/demo",
        "domain_key": "local-dev",
        "upload_strategy": {"type": "two_phase"},
        "attachments": policy,
        "dictation": {"enabled": True},
    }
    fake.script("/api/chatkit/session", mint_answer(1, backend=True) | {"backend": backend})
    result = run(
        tab,
        STAND_IN_ELEMENT
        + """
        customElements.define("openai-chatkit", FakeChatKit);
        const el = document.createElement("openai-chatkit");
        document.body.append(el);
        await kit.connectChatKit(el, {workflow: "demo", getToken,
          composer: {placeholder: "Ask", attachments: {maxSize: 999999}}});
        const [options] = window.__options;
        const off = kit.composerFor({attachments: {enabled: true}}, {attachments: {enabled: false}});
        return {composer: options.composer, strategy: options.api.uploadStrategy, off};
        """,
    )
    assert result["strategy"] == {"type": "two_phase"}
    # the page's own options stay; it cannot raise the workflow's limits
    assert result["composer"] == {
        "placeholder": "Ask",
        "dictation": {"enabled": True},
        "attachments": {
            "enabled": True,
            "maxSize": 2000,
            "maxCount": 2,
            "accept": {"image/png": [".png"]},
        },
    }
    assert result["off"] == {"attachments": {"enabled": False}}
