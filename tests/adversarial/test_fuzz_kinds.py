"""schemathesis over a broker that serves the custom kinds: a real ``chatkit-broker serve``
with a gateway workflow (the example ChatKit server in its own process, verifying every
assertion against the broker's JWKS) and an agent workflow (SQLite, the fake Responses API in
its own process), so ``/.well-known/jwks.json``, ``/chatkit/{name}`` of both kinds, the runs
and the threads routes are generated from the document this broker serves.

As tests/adversarial/test_fuzz.py: valid and deliberately invalid requests, with a valid token, a
generated header or none; never a 5xx, every answer one the document allows, every error in
the SPEC shape; and no secret in either process's log. ``{name}`` is the gateway's, the
agent's or whatever schemathesis made up, so both kinds get most of the cases.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from schemathesis import GenerationMode

from broker.assertion import generate_private_key_pem
from tests.support import ROOT, BrokerProcess, free_port
from tests.support.adversarial import SecretWatch, broker_process, live_env, make_token
from tests.support.fuzz import ANSWER_WITHIN, check_answer, examples, sign_in
from tests.support.load import spawn

FUZZ = examples(250)
SESSION_SECRET = "fuzz-kinds-session-secret-at-least-32-bytes"
WORKFLOWS = ("example", "support")  # the gateway's and the agent's

watch = SecretWatch()
FIGURES: Counter[str] = Counter()


@dataclass
class Kinds:
    broker: BrokerProcess
    logs: list[Path]


@pytest.fixture(scope="module")
def kinds(tmp_path_factory) -> Iterator[Kinds]:
    where = tmp_path_factory.mktemp("fuzz-kinds")
    broker_port, backend_port = free_port(), free_port()
    broker_url = f"http://127.0.0.1:{broker_port}"
    (where / "workflows.toml").write_text(
        f'[workflows.example]\nserver = "http://127.0.0.1:{backend_port}/chatkit"\n'
        f'[workflows.support]\nagent = "{ROOT}/tests/support/load_agent.py:agent"\n'
    )
    watch.add(SESSION_SECRET)
    with (
        spawn("tests.support.fake_responses", log_path=where / "model.log", url_on_stdout=True) as (
            _,
            model,
        ),
        spawn(
            "tests.support.recording_chatkit",
            *("--port", str(backend_port), "--broker", broker_url, "--delay", "0"),
            log_path=where / "chatkit-server.log",
            url_on_stdout=True,
        ),
    ):
        env = live_env(
            model + "/v1",
            BROKER_WORKFLOWS=None,
            BROKER_WORKFLOWS_FILE=str(where / "workflows.toml"),
            BROKER_SESSION_SECRET=SESSION_SECRET,
            BROKER_ASSERTION_KEY=generate_private_key_pem(),
            BROKER_PUBLIC_URL=broker_url,
            BROKER_DATABASE_URL=f"sqlite:///{where / 'threads.sqlite3'}",
        )
        with broker_process(env, where, port=broker_port) as bp:
            yield Kinds(bp, [where / "chatkit-server.log", bp.log_path])


def _token() -> str:
    token = make_token("kinds-fuzzer", ttl=600)
    watch.add(token)
    return token


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schemathesis_over_the_gateway_and_agent_kinds(kinds: Kinds, mode) -> None:
    bp = kinds.broker
    doc = httpx.get(bp.url + "/openapi.json").json()
    assert {"/.well-known/jwks.json", "/chatkit/{name}", "/api/threads"} <= set(doc["paths"])
    strategy = schemathesis.openapi.from_dict(doc).as_strategy(generation_mode=mode)
    statuses: Counter[tuple[str, int]] = Counter()

    @FUZZ
    @given(
        case=strategy,
        auth=st.sampled_from(["valid", "generated", "none"]),
        workflow=st.sampled_from([*WORKFLOWS, None]),
    )
    def run(case, auth, workflow):
        sign_in(case, auth, _token)
        if workflow and case.path_parameters and "name" in case.path_parameters:
            case.path_parameters = {**case.path_parameters, "name": workflow}
        response = case.call(base_url=bp.url, timeout=ANSWER_WITHIN)
        target = case.path_parameters.get("name") if case.path_parameters else None
        kind = {"example": "gateway", "support": "agent"}.get(target, "other")
        statuses[
            (
                f"{case.path} {kind}" if case.path.startswith("/chatkit") else case.path,
                response.status_code,
            )
        ] += 1
        check_answer(case, response, mode, watch)

    run()
    FIGURES[mode.value] += sum(statuses.values())
    by_path: dict[str, dict[int, int]] = {}
    for (path, status), n in sorted(statuses.items()):
        by_path.setdefault(path, {})[status] = n
    print(f"\nschemathesis kinds {mode.value}: {sum(statuses.values())} requests")
    for path, counts in by_path.items():
        print(f"  {path}: {counts}")
    fuzzed = set(by_path)
    if mode is GenerationMode.POSITIVE:  # (the JWKS route has nothing to make invalid)
        assert {"/.well-known/jwks.json", "/chatkit/{name} gateway"} <= fuzzed
    assert fuzzed & {"/chatkit/{name} gateway", "/chatkit/{name} agent"}


def test_no_secret_in_the_logs_of_the_fuzzed_kinds(kinds: Kinds) -> None:
    """Last in the module: what the fuzzers sent and got reached neither the broker's log
    nor the example server's."""
    lines = 0
    for path in kinds.logs:
        text = path.read_text(errors="replace")
        lines += watch.check(text)
        assert "Traceback" not in text, path.name
    print(f"fuzz kinds requests: {dict(FIGURES)}; log lines checked {lines}")
