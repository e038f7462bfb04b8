"""``broker.doctor.checks.workflows`` (check 4): each hosted workflow minted for real and
cancelled; OpenAI's errors explained; other kinds left to their backends."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from broker.assertion import generate_private_key_pem
from broker.config import Workflow
from broker.doctor import Budget, DoctorContext, KeyFacts, KeyWorks, Status
from broker.doctor.checks import workflows
from broker.http import HttpPool
from tests.support import API_KEY, SECRET, WF_SALES, WF_SUPPORT, app_client, auth
from tests.support.doctor import OTHER_KEY, cancelled_ids, minted_ids

SESSION_SECRET = "session-secret-that-is-at-least-32-bytes!"
RETIRED = "but hosted workflows stopped running on 2026-11-30"


def test_404_for_one_workflow_of_two(doctor, doctor_env, openai):
    openai.models_headers = {"openai-organization": "org-acme", "openai-project": "proj_marketing"}
    openai.for_workflow(WF_SALES, "workflow_not_found")
    r = doctor(doctor_env)
    assert r.code == 1
    assert r.line("✖ 4. Workflows").endswith("1 of 2 failed")
    assert r.line(f"⚠ support ({WF_SUPPORT})")  # it minted, but hosted workflows are retired
    assert "OpenAI says this workflow was not found (HTTP 404)" in r.line(f"✖ sales ({WF_SALES})")
    flat = " ".join(r.out.split())
    assert f"\"Workflow with id '{WF_SALES}' not found.\"" in flat
    assert "An API key only sees the workflows of its own project" in flat
    assert "belongs to project proj_marketing" in flat
    assert "(sk-proj-…fXYZ, OPENAI_API_KEY from the shell environment)" in flat
    assert "The same key minted the other workflow(s)" in flat
    # the fix leads to migration (hosted workflows stopped on 2026-11-30), the old causes after
    assert (
        "fix: export it from Agent Builder (Code → Agents SDK → Python) and run "
        "`chatkit-broker migrate EXPORT.py --name sales`"
    ) in flat
    assert f"if {WF_SALES} should still run, check it is published" in flat
    assert flat.count("they stopped running on 2026-11-30") == 2  # a warning for each wf_
    assert "✖ 1 check failed (4. Workflows); exit 1." in r.out
    # only the support session was minted, and it was cancelled
    assert len(minted_ids(openai)) == 1
    assert cancelled_ids(openai) == minted_ids(openai)


def test_404_on_every_workflow_names_the_usual_causes(doctor, doctor_env, openai):
    openai.for_workflow(WF_SUPPORT, "workflow_not_found")
    openai.for_workflow(WF_SALES, "workflow_not_found")
    r = doctor(doctor_env, json=True)
    assert r.code == 1
    entries = r.check("workflows")["data"]["workflows"]
    assert [e["status"] for e in entries] == ["fail", "fail"]
    assert [e["http_status"] for e in entries] == [404, 404]
    assert "another project than the workflow" in " ".join(entries[0]["details"])
    # since 2026-11-30 the likeliest cause is the shutdown itself: say so, and where to go
    details = " ".join(entries[0]["details"])
    assert "OpenAI shut Agent Builder down" in details
    assert "gateway workflow" in details and "agent workflow" in details
    assert "proj_fake" in " ".join(entries[0]["details"])
    assert entries[0]["fix"].startswith("export it from Agent Builder")
    assert "chatkit-broker migrate EXPORT.py --name support" in entries[0]["fix"]
    assert openai.cancel_requests() == []


def test_404_with_a_stray_shell_key_names_it(doctor, doctor_env, openai):
    """What check 2 found (the shell's key shadowing .env's) reaches check 4's explanation."""
    env = {k: v for k, v in doctor_env.items() if k != "OPENAI_API_KEY"}
    openai.for_workflow(WF_SALES, "workflow_not_found")
    r = doctor(env | {"OPENAI_API_KEY": OTHER_KEY}, dotenv={"OPENAI_API_KEY": API_KEY}, json=True)
    sales = r.check("workflows")["data"]["workflows"][1]
    assert sales["status"] == "fail"
    assert "(sk-proj-…wxyz, OPENAI_API_KEY from the shell environment)" in sales["details"][1]
    assert sales["details"][2] == (
        "Check 2 found the shell's OPENAI_API_KEY (sk-proj-…wxyz) overriding the one in .env "
        "(sk-proj-…fXYZ): that is the most likely cause."
    )
    assert sales["fix"] == (
        "run 'unset OPENAI_API_KEY' so the .env key is used, and run doctor again"
    )


def test_403_on_mint_is_a_key_problem(doctor, doctor_env, openai):
    openai.for_workflow(WF_SUPPORT, "forbidden")
    r = doctor(doctor_env)
    assert r.code == 1
    assert "the key was refused for ChatKit" in r.line(f"✖ support ({WF_SUPPORT})")
    assert "HTTP 403" in r.out
    assert r.line(f"⚠ sales ({WF_SALES})")
    assert cancelled_ids(openai) == minted_ids(openai) and len(minted_ids(openai)) == 1


def test_400_shows_the_apis_message_which_the_service_never_forwards(doctor, doctor_env, openai):
    message = "Invalid 'expires_after.seconds': integer above maximum value."
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()
    openai.for_workflow(WF_SALES, "status", status=400, body=body)
    r = doctor(doctor_env)
    assert r.code == 1
    assert "OpenAI rejected the session request" in r.line(f"✖ sales ({WF_SALES})")
    assert message in " ".join(r.out.split())


async def test_the_service_still_never_forwards_a_400_body(make_settings, openai, token):
    message = "Invalid 'expires_after.seconds': integer above maximum value."
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()
    openai.for_workflow(WF_SUPPORT, "status", status=400, body=body)
    async with app_client(make_settings()) as c:
        r = await c.post(
            "/api/chatkit/session", json={"workflow": "support"}, headers=auth(token())
        )
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_error"
    assert "expires_after" not in r.text and "maximum" not in r.text


# --- time bound ---------------------------------------------------------------------------------


def test_timeout_on_a_workflow_names_it_and_cancels_what_was_minted(doctor, doctor_env, openai):
    # answers too late (and then without a session, so nothing is created behind the test's back)
    openai.for_workflow(WF_SALES, "status", status=200, delay=5)
    r = doctor(doctor_env, timeout=1.5)
    assert r.code == 1
    assert r.elapsed < 4.5
    assert r.line(f"⚠ support ({WF_SUPPORT})")
    line = " ".join(r.out.split())
    assert f"✖ sales ({WF_SALES}): timed out: the --timeout budget of 1.5 s ran out" in line
    assert "The --timeout budget of 1.5 s ran out during check 4 (workflow sales)." in line
    assert r.err == ""
    support = [q for q in openai.session_requests() if q.body["workflow"]["id"] == WF_SUPPORT]
    assert len(support) == 1
    [support_session] = [s for s in openai.sessions.values() if s["workflow"]["id"] == WF_SUPPORT]
    assert cancelled_ids(openai) == {support_session["id"]}


def test_upstream_timeout_shorter_than_the_budget(doctor, doctor_env, openai):
    openai.for_workflow(WF_SUPPORT, "status", status=200, delay=3)
    env = doctor_env | {"BROKER_UPSTREAM_TIMEOUT": "0.5", "BROKER_UPSTREAM_RETRIES": "0"}
    r = doctor(env, json=True)
    assert r.code == 1
    assert r.report["timed_out"] is None
    support, sales = r.check("workflows")["data"]["workflows"]
    assert support["status"] == "fail" and "BROKER_UPSTREAM_TIMEOUT" in support["summary"]
    assert sales["status"] == "warn" and sales["cancelled"] is True


# --- workflows of other kinds -------------------------------------------------------------------


@pytest.fixture
def all_kinds_served(monkeypatch):
    """A broker that serves gateway and agent workflows too (config refuses them until then)."""
    monkeypatch.setattr("broker.config.SERVED_KINDS", frozenset({"hosted", "gateway", "agent"}))


def test_gateway_and_agent_workflows_are_listed_not_minted(
    doctor, doctor_env, openai, all_kinds_served
):
    env = doctor_env | {
        "BROKER_WORKFLOWS": (
            f"support={WF_SUPPORT},chat=https://chat.example.com/chatkit,assist=examples.agent.support_agent:agent"
        ),
        "BROKER_SESSION_SECRET": SESSION_SECRET,
    }
    r = doctor(env)
    # check 4 passes; the gateway backend's own check (7) cannot reach chat.example.com
    assert r.code == 1, r.out
    assert r.line("✖ 7. Gateway workflows")
    assert r.line("⚠ 4. Workflows").endswith(
        "1 of 1 minted, with warnings; 2 gateway and agent workflows checked by their backends"
    )
    assert r.line(
        f"⚠ support ({WF_SUPPORT}): minted (a session lasts 600 s) and cancelled, {RETIRED}"
    )
    assert r.line(
        "○ chat (https://chat.example.com/chatkit): skipped: a gateway workflow, checked by its backend"
    )
    assert r.line(
        "○ assist (examples.agent.support_agent:agent): skipped: an agent workflow, checked by its backend"
    )
    # only the hosted workflow went to OpenAI
    assert [q.body["workflow"]["id"] for q in openai.session_requests()] == [WF_SUPPORT]
    assert cancelled_ids(openai) == minted_ids(openai) and len(minted_ids(openai)) == 1

    entries = doctor(env, json=True).check("workflows")["data"]["workflows"]
    assert [(e["name"], e["id"], e["status"]) for e in entries] == [
        ("support", WF_SUPPORT, "warn"),
        ("chat", None, "skip"),
        ("assist", None, "skip"),
    ]


def test_gateway_workflows_only_need_no_openai_key(doctor, openai, all_kinds_served):
    env = {
        "BROKER_WORKFLOWS": "chat=https://chat.example.com/chatkit",
        "BROKER_SESSION_SECRET": SESSION_SECRET,
        "BROKER_ASSERTION_KEY": generate_private_key_pem(),  # else check 1 warns
        "BROKER_JWT_SECRET": SECRET,
        "BROKER_JWT_AUDIENCE": "authenticated",
    }
    r = doctor(env, json=True)
    assert r.check("config")["status"] == "pass"
    # the gateway backend's own check probes the (unreachable) server
    assert r.check("gateway")["status"] == "fail"
    assert "cannot be reached" in r.check("gateway")["data"]["workflows"][0]["summary"]
    assert r.code == 1
    key = r.check("key")
    assert key["status"] == "skip"
    assert key["summary"] == "none (no workflow calls OpenAI: gateway workflows only)"
    assert r.check("key_works")["status"] == "skip"
    workflows = r.check("workflows")
    assert workflows["status"] == "skip"
    assert (
        workflows["summary"]
        == "no hosted workflow to mint; 1 gateway workflow checked by its backend"
    )
    assert [e["status"] for e in workflows["data"]["workflows"]] == ["skip"]
    assert openai.requests == []


async def test_the_check_alone_over_hand_built_settings(make_settings, openai):
    """The check as the runner calls it: a context, and the facts checks 2 and 3 handed on."""
    base = make_settings()
    gateway = Workflow(name="chat", label="Chat", kind="gateway", server="https://chat.example.com")
    settings = replace(base, workflows=(gateway, *base.workflows))
    ctx = DoctorContext({}, {}, {}, settings, (), HttpPool(limit=2), Budget(5.0))
    key = KeyFacts(usable=True, label="sk-proj-…fXYZ, OPENAI_API_KEY from .env")
    try:
        check = await workflows.check(ctx, key, KeyWorks(passed=True, project="proj_fake"))
        refused = await workflows.check(ctx, key, KeyWorks(passed=False))
    finally:
        await ctx.http.close()
    assert [(i.title, i.status) for i in check.items] == [
        ("chat (https://chat.example.com)", Status.SKIP),
        (f"support ({WF_SUPPORT})", Status.WARN),
        (f"sales ({WF_SALES})", Status.WARN),
    ]
    # a hosted workflow that still mints is a visible warning (they stopped on 2026-11-30),
    # with the way out as its fix; the run's exit code stays 0 (warnings allowed)
    assert check.status is Status.WARN
    assert (
        check.summary == "2 of 2 minted, with warnings; 1 gateway workflow checked by its backend"
    )
    assert check.items[1].summary.endswith(RETIRED)
    assert check.items[1].fix == (
        "export it from Agent Builder (Code → Agents SDK → Python) and run "
        "`chatkit-broker migrate EXPORT.py --name support`"
    )
    assert len(minted_ids(openai)) == 2 and cancelled_ids(openai) == minted_ids(openai)
    assert refused.status is Status.SKIP and refused.items == []
    assert refused.summary == "skipped: check 3 (key and project) did not pass"
