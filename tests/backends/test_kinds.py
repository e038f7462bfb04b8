"""The registry of kinds (broker/backends/__init__.py): a kind is its workflow model, its spec
and one registry entry; the loader, the workflow file, app and doctor then need no change.

Shown with a toy kind registered for one test: it is parsed from BROKER_WORKFLOWS and from the
workflow file, built by build_broker, minted for and served over HTTP like any other kind."""

from __future__ import annotations

import json
from typing import ClassVar, Literal

import pytest
from pydantic import StrictStr
from starlette.types import Receive, Scope, Send

from broker.backends import KINDS, MOCK, Admission, Backend, KindSpec, kind_of, specs_for
from broker.config import ConfigError, load_settings
from broker.workflow import Workflow
from tests.support.app import app_client


class EchoWorkflow(Workflow):
    """A toy kind: answers every ChatKit request with its own greeting."""

    target_key = "greeting"
    kind: Literal["echo"] = "echo"
    greeting: StrictStr


class EchoBackend(Backend):
    kind: ClassVar[str] = "echo"

    def __init__(self, sessions) -> None:
        self.sessions = sessions

    async def serve(self, admission: Admission, scope: Scope, receive: Receive, send: Send) -> None:
        body = json.dumps(
            {"greeting": admission.workflow.greeting, "user": admission.identity.user}
        )
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body.encode()})


ECHO = KindSpec(
    "echo",
    lambda ctx: EchoBackend(ctx.secrets),
    workflow=EchoWorkflow,
    shorthand=lambda value: value.startswith("hello"),
)


@pytest.fixture
def echo_kind(monkeypatch):
    monkeypatch.setitem(KINDS, "echo", ECHO)  # the one registry line


async def test_a_new_kind_is_one_registry_entry(echo_kind, base_env, token, tmp_path):
    f = tmp_path / "wf.toml"
    f.write_text('[workflows.wave]\ngreeting = "hello from the file"\n')
    env = base_env | {
        "BROKER_WORKFLOWS": "hi=hello there",
        "BROKER_WORKFLOWS_FILE": str(f),
        "BROKER_SESSION_SECRET": "s" * 40,
    }
    settings = load_settings(env)
    assert [(wf.name, wf.kind, wf.target) for wf in settings.workflows] == [
        ("hi", "echo", "hello there"),
        ("wave", "echo", "hello from the file"),
    ]
    alice = {"Authorization": f"Bearer {token('alice')}"}
    async with app_client(settings) as client:
        minted = await client.post("/api/chatkit/session", json={"workflow": "wave"}, headers=alice)
        assert minted.status_code == 200, minted.text
        secret = minted.json()["client_secret"]
        r = await client.post(
            "/chatkit/wave", content=b"{}", headers={"Authorization": f"Bearer {secret}"}
        )
        assert r.json() == {"greeting": "hello from the file", "user": "alice"}


def test_a_new_kinds_keys_are_checked_by_its_model(echo_kind, tmp_path):
    f = tmp_path / "wf.toml"
    f.write_text('[workflows.wave]\ngreeting = 5\ngreting = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_settings({"BROKER_MOCK": "1", "BROKER_WORKFLOWS_FILE": str(f)})
    text = "\n".join(info.value.problems)
    assert "[workflows.wave]: unknown option 'greting' (did you mean 'greeting'?)" in text
    assert "[workflows.wave]: greeting: input should be a valid string" in text


def test_mock_mode_is_a_spec_like_the_others():
    hosted = load_settings({"BROKER_MOCK": "1"}).workflows
    assert specs_for(True, hosted) == [MOCK]
    assert [s.kind for s in specs_for(False, hosted)] == ["hosted"]
    assert kind_of("hello") is None  # the toy kind is registered only inside its tests
