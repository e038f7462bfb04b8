"""Hostile text in every field (issue 23): a real ``chatkit-broker serve`` with two agent
workflows on a SQLite file and on PostgreSQL, and requests whose one text field — of a
ChatKit request at ``/chatkit/<name>`` (any type, built from chatkit-python's own models,
tests/support/chatkit_requests.py) or of an ``/api/…`` route (body, path or query) — is
replaced by a NUL, a lone surrogate, RTL marks, a 1 MB string or JSON that is not a string.

Each answer must be a success or a 4xx in the SPEC error shape, never a 5xx; the broker's log
must hold no traceback and no 5xx. (NULs and lone surrogates found 500s on PostgreSQL and at
the runs route.)
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ...support.adversarial import SecretWatch, broker_process, live_env, make_token
from ...support.chatkit_requests import valid_requests
from ...support.contract import assert_spec_error
from ...support.fake_responses import FakeResponses
from ...support.rawhttp import RawResponse, exchange, request_bytes

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "120"))
SESSION_SECRET = "hostile-session-secret-that-is-32-bytes-or-more"
ROOT = Path(__file__).resolve().parents[3]
# file paths: serve runs in a temporary directory, where no package `examples` is
AGENTS = (
    f"support={ROOT}/examples/agent/support_agent.py:agent,"
    f"triage={ROOT}/examples/agent/builder_export.py:run_workflow"
)
HOSTILE: list[Any] = [
    "\x00",
    "thr_\x00",
    "a\x00b",
    "\ud800",
    "a\udfffb",
    "\u202egnp.exe",
    "\u200f\u202b\u2067\u0645\u0631\u062d\u0628\u0627\u2069",  # RLM, RLE, RLI, Arabic, PDI
    "x" * 1_000_000,
    None,
    0,
    -1,
    2**64,
    1.5e308,
    True,
    [],
    {},
    ["\x00"],
    {"a": "\ud800"},
]
watch = SecretWatch()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def broker(
    request: pytest.FixtureRequest, tmp_path_factory, responses_server: FakeResponses
) -> Iterator[tuple[str, dict[str, list[str]], Any]]:
    """A serving broker on each database; alice has a thread with items, and a session secret."""
    tmp = tmp_path_factory.mktemp(f"hostile-{request.param}")
    if request.param == "sqlite":
        db = f"sqlite:///{tmp / 'threads.sqlite3'}"
    else:
        db = request.getfixturevalue("pg_url")
        request.getfixturevalue("empty_database")(db)
    env = live_env(
        responses_server.base_url,
        BROKER_WORKFLOWS=AGENTS,
        BROKER_DATABASE_URL=db,
        BROKER_SESSION_SECRET=SESSION_SECRET,
    )
    watch.add(SESSION_SECRET)
    with broker_process(env, tmp) as bp:
        alice = make_token("alice")
        watch.add(alice)
        headers = {"Authorization": f"Bearer {alice}"}
        with httpx.Client(base_url=bp.url, headers=headers, timeout=30) as http:
            created = http.post(
                "/chatkit/support",
                json={
                    "type": "threads.create",
                    "params": {
                        "input": {
                            "content": [{"type": "input_text", "text": "hello"}],
                            "attachments": [],
                            "inference_options": {},
                        }
                    },
                },
            )
            assert created.status_code == 200, created.text
            thread = created.text.split('"thread": {"id": "', 1)[-1].split('"', 1)[0]
            if not thread.startswith("thr_"):
                thread = json.loads(created.text.split("data: ", 1)[1].split("\n", 1)[0])["thread"][
                    "id"
                ]
            listed = http.get(f"/api/threads/{thread}/items").json()["data"]
            minted = http.post("/api/chatkit/session", json={"workflow": "support"}).json()
            watch.add(minted["client_secret"])
        ids = {
            "thread": [thread],
            "item": [i["id"] for i in listed],
            "session": [minted["session_id"]],
        }
        yield bp.url, ids, bp
        logged = bp.logs()
    assert "Traceback" not in logged
    assert '"status":5' not in logged, [
        line for line in logged.splitlines() if '"status":5' in line
    ]
    watch.check(logged)


def leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a string, number, bool or null inside ``value`` (its text fields and more)."""
    if isinstance(value, dict):
        found = [p for k, v in value.items() for p in leaves(v, (*path, k))]
    elif isinstance(value, list):
        found = [p for i, v in enumerate(value) for p in leaves(v, (*path, i))]
    else:
        return [path]
    return found or [path]


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: replaced(value[head], rest, new)}
    copy = list(value)
    copy[head] = replaced(copy[head], rest, new)
    return copy


def as_text(value: Any) -> str:
    """A hostile value where only text fits (a path or query): the value, or its JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def encoded(text: str) -> str:
    """Percent-encoded; a lone surrogate as the bytes a broken client would send for it."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def api_requests(ids: dict[str, list[str]]) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, route, fields): the ``/api/…`` routes with every field they read."""
    thread, item, session = ids["thread"][0], ids["item"][0], ids["session"][0]
    return [
        ("POST", "/api/chatkit/session", {"body": {"workflow": "support"}}),
        (
            "POST",
            "/api/chatkit/session",
            {"body": {"workflow": "support", "previous_session_id": session}},
        ),
        ("POST", "/api/chatkit/session/cancel", {"body": {"session_id": session}}),
        ("POST", "/api/chatkit/session/cancel", {"body": {"all": True}}),
        (
            "POST",
            "/api/workflows/{name}/runs",
            {"path": {"name": "support"}, "body": {"input": "hi", "thread_id": thread}},
        ),
        (
            "POST",
            "/api/workflows/{name}/runs",
            {"path": {"name": "support"}, "body": {"input": {"order": 42, "note": "x"}}},
        ),
        (
            "GET",
            "/api/threads",
            {"query": {"workflow": "support", "limit": "5", "after": thread, "order": "desc"}},
        ),
        (
            "GET",
            "/api/threads/{thread}/items",
            {"path": {"thread": thread}, "query": {"limit": "5", "after": item, "order": "asc"}},
        ),
    ]


def send_api(
    http: httpx.Client, method: str, route: str, fields: dict[str, Any]
) -> httpx.Response | RawResponse:
    path = route.format(**{k: encoded(as_text(v)) for k, v in fields.get("path", {}).items()})
    query = "&".join(
        f"{encoded(k)}={encoded(as_text(v))}" for k, v in fields.get("query", {}).items()
    )
    url = path + (f"?{query}" if query else "")
    if len(url) > 60_000:  # more than httpx sends: over the broker's head cap (431)
        headers = [(b"Authorization", http.headers["Authorization"].encode())]
        return exchange(str(http.base_url), request_bytes(method, url, headers, b""))
    if method == "GET":
        return http.get(url)
    content = json.dumps(fields.get("body", {})).encode()  # ASCII: lone surrogates as \ud800
    return http.post(url, content=content, headers={"Content-Type": "application/json"})


def check(r: httpx.Response | RawResponse, what: Any) -> int:
    """The status, after checking it is no 5xx and an error is in the SPEC shape."""
    if isinstance(r, RawResponse):
        status, body, headers = r.status, r.body, r.headers
    else:
        status, body, headers = r.status_code, r.content, r.headers
    assert status < 500, (what, status, body[:300])
    if status >= 400:
        assert_spec_error(status, body, headers)
    return status


tally: Counter[str] = Counter()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_hostile_text_in_any_field_is_never_a_5xx(broker, data: st.DataObject) -> None:
    url, ids, _ = broker
    hostile = HOSTILE[data.draw(st.integers(0, len(HOSTILE) - 1), label="HOSTILE[i]")]
    credential = make_token("alice")
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {credential}"}, timeout=30
    ) as http:
        if data.draw(st.booleans(), label="chatkit"):
            body = data.draw(valid_requests(ids), label="request")
            path = data.draw(st.sampled_from(leaves(body)), label="field")
            body = replaced(body, path, hostile)
            workflow = data.draw(st.sampled_from(["support", "triage"]), label="workflow")
            r = http.post(
                f"/chatkit/{workflow}",
                content=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            tally[f"chatkit {check(r, (body.get('type'), path))}"] += 1
            return
        method, route, fields = data.draw(st.sampled_from(api_requests(ids)), label="route")
        part = data.draw(st.sampled_from(sorted(fields)), label="part")
        key = data.draw(st.sampled_from(leaves(fields[part])), label="field")
        fields = {**fields, part: replaced(fields[part], key, hostile)}
        r = send_api(http, method, route, fields)
        tally[f"api {check(r, (route, part, key))}"] += 1


def test_hostile_text_report(broker) -> None:
    """Prints how the answers fell (run with -s); fails if the property test sent nothing."""
    print(dict(sorted(tally.items())))
    assert sum(tally.values()) > 0
