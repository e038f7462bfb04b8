"""``broker.doctor.runner``: the whole run in order, its JSON schema, and the backend hook.

In-process against the fake OpenAI, with explicit mappings (``tests.support.doctor``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from broker.config import Workflow
from broker.doctor import Check, DoctorContext, Status, backend_checks, run_doctor
from broker.doctor.checks import CheckFn
from tests.support import API_KEY, WF_SALES, WF_SUPPORT
from tests.support.doctor import OTHER_KEY, cancelled_ids, minted_ids


def test_all_good(doctor, doctor_env, openai):
    r = doctor(doctor_env)
    assert r.code == 0, r.out + r.err
    heads = [line for line in r.out.splitlines() if line[:1] in "✔⚠✖○" and line[2:3].isdigit()]
    # check 4 warns: its hosted workflows mint, but they stopped running on 2026-11-30
    assert [h[:2] for h in heads] == ["✔ "] * 3 + ["⚠ "] + ["✔ "] * 2, r.out
    assert [h[2:4] for h in heads] == ["1.", "2.", "3.", "4.", "5.", "6."]
    assert "sk-proj-…fXYZ" in r.line("✔ 2. API key")
    assert "from OPENAI_API_KEY (the shell environment)" in r.out
    assert "organization org-fake, project proj_fake" in r.line("✔ 3.")
    assert "2 of 2 minted, with warnings" in r.line("⚠ 4.")
    assert "minted (a session lasts 600 s) and cancelled, but hosted workflows stopped" in r.line(
        f"⚠ support ({WF_SUPPORT})"
    )
    assert r.line("✔ No check failed; warnings in 4. Workflows")
    assert r.err == ""

    # what went upstream: one GET /models, then per workflow one mint and its cancel, in order
    paths = [(q.method, q.path) for q in openai.requests]
    assert paths[0] == ("GET", "/v1/models")
    assert [p for p in paths if p[1] == "/v1/chatkit/sessions"] == [
        ("POST", "/v1/chatkit/sessions")
    ] * 2
    assert [q.body["workflow"]["id"] for q in openai.session_requests()] == [WF_SUPPORT, WF_SALES]
    assert {q.body["user"] for q in openai.session_requests()} == {"doctor-check"}
    for q in openai.requests:
        assert q.headers["Authorization"] == f"Bearer {API_KEY}"
    assert len(minted_ids(openai)) == 2
    assert cancelled_ids(openai) == minted_ids(openai)
    assert {s["status"] for s in openai.sessions.values()} == {"cancelled"}


# --- the machine-readable report ----------------------------------------------------------------


CHECK_KEYS = {"id", "title", "status", "summary", "details", "fix", "data"}
DATA_KEYS = {
    "config": {"valid", "mode", "problems", "warnings"},
    "key": {"masked", "variable", "origin", "dotenv_masked"},
    "key_works": {"base_url", "http_status", "organization", "project", "request_id"},
    "workflows": {"workflows"},
    "auth": {"methods", "algorithms", "secret_bytes", "jwks_url", "jwks_keys", "token"},
    "domains": {"origins"},
}
WORKFLOW_KEYS = {
    "name", "id", "status", "summary", "details", "fix", "http_status", "request_id",
    "session_id", "expires_in_s", "cancelled",
}  # fmt: skip
TOKEN_KEYS = {"valid", "verified", "user", "claims", "error", "workflows"}


def assert_schema(report: dict[str, Any]) -> None:
    assert set(report) == {
        "schema",
        "ok",
        "exit_code",
        "elapsed_s",
        "timeout_s",
        "timed_out",
        "checks",
    }
    assert report["schema"] == "chatkit-broker-doctor/1"
    assert [c["id"] for c in report["checks"]] == list(DATA_KEYS)
    for c in report["checks"]:
        assert set(c) == CHECK_KEYS
        assert c["status"] in {"pass", "warn", "fail", "skip"}
        assert set(c["data"]) == DATA_KEYS[c["id"]], c["id"]
    for wf in report["checks"][3]["data"]["workflows"]:
        assert set(wf) == WORKFLOW_KEYS
    tok = report["checks"][4]["data"]["token"]
    assert tok is None or set(tok) == TOKEN_KEYS


def test_json_schema_is_stable(doctor, doctor_env, openai, token):
    tok = token("alice", aud="authenticated")
    good = doctor(doctor_env, json=True, token=tok, forbidden=(tok,))
    assert good.code == 0
    assert_schema(good.report)
    assert good.report["ok"] is True and good.report["exit_code"] == 0
    assert good.report["timed_out"] is None and good.report["timeout_s"] == 20.0
    support, sales = good.check("workflows")["data"]["workflows"]
    assert support["status"] == "warn" and support["cancelled"] is True
    assert support["session_id"].startswith("cksess_") and support["expires_in_s"] == 600
    assert "client_secret" not in good.out

    openai.for_workflow(WF_SALES, "workflow_not_found")
    bad = doctor(doctor_env | {"OPENAI_API_KEY": OTHER_KEY}, json=True)
    assert bad.code == 1
    assert_schema(bad.report)
    assert bad.report["ok"] is False and bad.report["exit_code"] == 1
    sales = bad.check("workflows")["data"]["workflows"][1]
    assert sales["status"] == "fail" and sales["http_status"] == 404 and sales["cancelled"] is False
    assert sales["request_id"].startswith("req_")

    invalid = doctor({"BROKER_WORKFLOWS": "x"}, json=True)
    assert invalid.code == 1
    assert_schema(invalid.report)
    assert [c["status"] for c in invalid.report["checks"]] == [
        "fail",
        "fail",
        "skip",
        "skip",
        "skip",
        "skip",
    ]


def test_run_doctor_leaves_no_logging_handler_behind(doctor_env, openai):
    """Each call silenced the broker's logger with a handler it never removed."""
    handlers = list(logging.getLogger("broker").handlers)
    for _ in range(3):
        code, _report = run_doctor(doctor_env, doctor_env, {}, timeout=5)
        assert code == 0
    assert logging.getLogger("broker").handlers == handlers


# --- the backend hook ---------------------------------------------------------------------------


def test_checks_a_backend_contributes_run_after_the_six_and_count(doctor_env, openai):
    """A contributed check gets the same context (settings, pool, budget) and fails the run."""
    seen: list[DoctorContext] = []

    async def gateway_server_answers(ctx: DoctorContext) -> Check:
        seen.append(ctx)
        async with ctx.http().get(openai.url + "/jwks.json") as resp:  # the pool is open
            status = resp.status
        check = Check("gateway", "Gateway servers", data={"http_status": status})
        return check.set(Status.FAIL, f"https://chat.example.com answered HTTP {status}", "fix it")

    code, text = run_doctor(
        doctor_env, doctor_env, {}, as_json=False, width=400, extra=[gateway_server_answers]
    )
    assert code == 1
    assert "✖ 7. Gateway servers: https://chat.example.com answered HTTP 200" in text
    assert "fix: fix it" in text
    assert "✖ 1 check failed (7. Gateway servers); exit 1." in text
    [ctx] = seen
    assert ctx.settings is not None and [w.name for w in ctx.settings.workflows] == [
        "support",
        "sales",
    ]

    code, text = run_doctor(doctor_env, doctor_env, {}, as_json=True, extra=[])
    assert code == 0 and '"id": "gateway"' not in text


def test_backend_checks_are_looked_up_by_the_kinds_in_use(make_settings):
    calls: list[str] = []

    async def one(ctx: DoctorContext) -> Check:  # never run here
        raise AssertionError

    def hosted(settings) -> list[CheckFn]:
        calls.append("hosted")
        return [one]

    def gateway(settings) -> list[CheckFn]:
        calls.append("gateway")
        return [one, one]

    by_kind = {"hosted": hosted, "gateway": gateway}
    assert backend_checks(make_settings(), by_kind) == [one]
    assert calls == ["hosted"]  # no gateway workflow configured
    assert backend_checks(None, by_kind) == []
    assert backend_checks(make_settings(BROKER_MOCK="1"), by_kind) == []
    assert backend_checks(make_settings()) == []  # nothing registered yet

    hosted_and_gateway = replace(
        make_settings(),
        workflows=(
            Workflow(name="chat", label="Chat", kind="gateway", server="https://chat.example.com"),
            *make_settings().workflows,
        ),
    )
    calls.clear()
    assert backend_checks(hosted_and_gateway, by_kind) == [one, one, one]
    assert calls == ["gateway", "hosted"]  # in the order the kinds first appear
