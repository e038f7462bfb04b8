"""``broker.doctor.report``: the text and JSON renderings, terminals, and the last-resort scrub."""

from __future__ import annotations

import json

from broker.doctor import Check, Report, Status, render_json, render_text, scrub
from broker.doctor.report import render_width
from tests.support import API_KEY, WF_SALES


def test_text_report_fits_100_columns_when_piped(doctor, doctor_env, openai):
    openai.for_workflow(WF_SALES, "workflow_not_found")
    r = doctor(doctor_env)
    wide = max(len(line) for line in r.out.splitlines())
    narrow = doctor(doctor_env, width=100)  # what render_width() gives a pipe (see test_cli)
    assert wide > 100
    assert max(len(line) for line in narrow.out.splitlines()) <= 100
    assert " ".join(narrow.out.split()).count("fix: export it from Agent Builder") == 2


def test_render_width_follows_columns_within_bounds():
    assert render_width({"COLUMNS": "250"}) == 250
    assert render_width({"COLUMNS": "20"}) == 60  # never narrower than 60


def test_a_terminal_that_cannot_print_the_symbols(doctor, doctor_env):
    r = doctor(doctor_env, encoding="ascii")
    assert r.code == 0
    assert r.line("+ 1. Configuration") and r.line("! 4. Workflows")
    assert "sk-proj-...fXYZ" in r.out
    j = doctor(doctor_env, json=True, encoding="ascii")
    assert j.out.isascii()
    assert j.report["checks"][1]["data"]["masked"] == "sk-proj-…fXYZ"


def _report(*checks: Check, timed_out: str | None = None) -> Report:
    return Report(checks, elapsed=1.234, timeout=20.0, timed_out=timed_out)


def test_the_summary_names_failed_checks_then_warned_ones():
    passed = Check("a", "First").set(Status.PASS, "fine")
    warned = Check("b", "Second").set(Status.WARN, "hm", "do this")
    failed = Check("c", "Third").set(Status.FAIL, "broken", "do that")
    text = render_text(_report(passed, warned, failed, timed_out="check 3 (x)"))
    assert text.splitlines()[2:] == [
        "✔ 1. First: fine",
        "⚠ 2. Second: hm",
        "     fix: do this",
        "✖ 3. Third: broken",
        "     fix: do that",
        "",
        "✖ 1 check failed (3. Third); exit 1. Took 1.2 s.",
        "  The --timeout budget of 20 s ran out during check 3 (x).",
    ]
    assert render_text(_report(passed, warned)).endswith(
        "✔ No check failed; warnings in 2. Second. Took 1.2 s."
    )
    assert _report(passed, warned).exit_code == 0 and _report(failed).exit_code == 1


def test_json_statuses_are_the_plain_strings():
    skipped = Check("a", "First", data={"n": 1}).set(Status.SKIP, "skipped: why")
    report = json.loads(render_json(_report(skipped)))
    assert report["checks"] == [
        {
            "id": "a",
            "title": "First",
            "status": "skip",
            "summary": "skipped: why",
            "details": [],
            "fix": None,
            "data": {"n": 1},
        }
    ]
    assert report["elapsed_s"] == 1.234 and report["ok"] is True


def test_scrub_masks_known_secrets_and_anything_shaped_like_one():
    secret = "an-hmac-secret-the-checks-knew-of"
    text = f"key {API_KEY}, secret {secret}, token eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl, short abc"
    scrubbed = scrub(text, {secret, "abc"})
    assert API_KEY not in scrubbed and secret not in scrubbed
    assert "secret an-…w-of," in scrubbed  # masked, still tellable apart
    assert "eyJ" not in scrubbed
    assert scrubbed.endswith("short abc")  # too short to be a secret: left alone


def test_a_report_knows_the_secrets_its_checks_met():
    item = Check("w", "W")
    item.secrets.add("ek_minted_client_secret_1234")
    check = Check("workflows", "Workflows", items=[item])
    assert _report(check).secrets == {"ek_minted_client_secret_1234"}
    assert "secrets" not in check.as_dict()
