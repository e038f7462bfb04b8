"""The suite's log audit (tests/support/log_audit.py) can fail: tiny pytest sessions, each in
its own process with the plugin loaded, log a secret the way a careless line would — in an
access-log record (not redacted, as in the broker), in a subprocess's log file, a session
secret the redaction does not know — and the run exits 1 naming the pattern and the test,
never printing the secret; a session that only feeds secrets to the redaction passes."""

from __future__ import annotations

import pytest

from tests.support import ROOT, SECRET

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJtYWxsb3J5IiwiZXhwIjo5OTk5OTk5OTk5fQ"
    ".c2lnbmF0dXJlLW9mLWEtZmFrZS10b2tlbg"
)
SESSION = "cks_" + "A" * 30 + "." + "b" * 20


def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile(test_inner=source)
    return pytester.runpytest_subprocess(
        "-p", "tests.support.log_audit", "-q", "-p", "no:cacheprovider"
    )


def test_a_jwt_in_an_access_line_fails_the_run(pytester, monkeypatch) -> None:
    result = run(
        pytester,
        monkeypatch,
        f"""
import logging

def test_logs_a_token():
    logging.getLogger("broker.access").info("GET /x token=%s", {JWT!r})
""",
    )
    assert result.ret == 1
    result.assert_outcomes(passed=1)  # the test itself passed: the audit failed the run
    out = result.stdout.str()
    assert "a JWT (eyJh…) in the log of test_inner.py::test_logs_a_token" in out, out
    assert JWT not in out and JWT[:20] not in out


def test_a_secret_in_a_subprocess_log_and_a_session_secret_fail_the_run(
    pytester, monkeypatch
) -> None:
    result = run(
        pytester,
        monkeypatch,
        f"""
import logging
from tests.support import log_audit

def test_a_backend_logged_the_jwt_secret(tmp_path):
    log_audit.add_secret("a-jwt-secret-no-pattern-knows")
    (tmp_path / "backend.log").write_text("started with a-jwt-secret-no-pattern-knows\\n")
    log_audit.collect_file(tmp_path / "backend.log")

def test_a_session_secret_in_a_warning():
    logging.getLogger("broker.gateway").warning("refused %s", {SESSION!r})
""",
    )
    assert result.ret == 1
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert (
        "a secret value (a-jw…) in the log of "
        "test_inner.py::test_a_backend_logged_the_jwt_secret [backend.log]"
    ) in out, out
    assert "a session secret (cks_…) in the log of test_inner.py::test_a_session_secret" in out
    assert "no-pattern-knows" not in out and SESSION[:10] not in out


def test_secrets_fed_to_the_redaction_pass(pytester, monkeypatch) -> None:
    result = run(
        pytester,
        monkeypatch,
        f"""
import logging

def test_redaction_scrubs_a_bearer_token(caplog):
    logging.getLogger("broker.auth").warning("Authorization: Bearer %s", {JWT!r})
    assert {JWT!r} in caplog.text  # the test still sees its record unchanged

def test_the_api_key_is_scrubbed():
    logging.getLogger("openai").error("key sk-proj-TESTKEYtestkey0123456789abcdefXYZ")
""",
    )
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=2)
    assert "hold no secret" in result.stdout.str()


def test_the_constants_of_test_modules_are_watched(pytester, monkeypatch) -> None:
    result = run(
        pytester,
        monkeypatch,
        """
import logging

WEBHOOK_SECRET = "whsec-this-is-a-module-constant"

def test_logs_it():
    logging.getLogger("example").warning("signing with " + WEBHOOK_SECRET)
""",
    )
    assert result.ret == 1
    assert "a secret value (whse…) in the log of test_inner.py::test_logs_it" in result.stdout.str()
    assert SECRET not in result.stdout.str()
