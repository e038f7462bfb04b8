"""``chatkit-broker doctor`` end to end: the real CLI in a subprocess (exit codes, stdout, the
``.env`` of its working directory, ``--token -`` on stdin, a pipe's width, an ASCII terminal).

Everything else about the checks is tested in-process (the other files here).
"""

from __future__ import annotations

import pytest

from broker.cli import main
from tests.support import API_KEY, WF_SALES


def test_the_real_cli_passes_reading_dotenv_and_a_token_on_stdin(doctor_cli, doctor_env, token):
    # its workflows are hosted wf_ ones: they still mint here, shown as a warning (retired), exit 0
    env = {k: v for k, v in doctor_env.items() if k != "OPENAI_API_KEY"}
    tok = token("alice", aud="authenticated")
    r = doctor_cli(
        env, "--token", "-", dotenv={"OPENAI_API_KEY": API_KEY}, stdin=tok + "\n", forbidden=(tok,)
    )
    assert r.code == 0, r.out + r.err
    assert r.err == ""
    heads = [line for line in r.out.splitlines() if line[:1] in "✔⚠✖○" and line[2:3].isdigit()]
    assert [h[:4] for h in heads] == ["✔ 1.", "✔ 2.", "✔ 3.", "⚠ 4.", "✔ 5.", "✔ 6."], r.out
    assert "sk-proj-…fXYZ from OPENAI_API_KEY (.env)" in r.line("✔ 2. API key")
    assert "HMAC secret; --token verified" in r.line("✔ 5. Sign-in tokens")
    assert r.line("✔ No check failed; warnings in 4. Workflows.")
    assert max(len(line) for line in r.out.splitlines()) <= 100  # piped, no COLUMNS


def test_the_real_cli_exits_1_on_a_failure_in_ascii(doctor_cli, doctor_env, openai):
    openai.for_workflow(WF_SALES, "workflow_not_found")
    r = doctor_cli(doctor_env | {"PYTHONIOENCODING": "ascii"}, "--json")
    assert r.code == 1
    assert r.out.isascii()
    assert r.report["exit_code"] == 1
    assert r.report["checks"][1]["data"]["masked"] == "sk-proj-…fXYZ"

    r = doctor_cli(doctor_env | {"PYTHONIOENCODING": "ascii", "COLUMNS": "400"})
    assert r.code == 1
    assert r.line("+ 1. Configuration") and r.line("x 4. Workflows")
    assert "x 1 check failed (4. Workflows); exit 1." in r.out
    assert r.err == ""


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--timeout", "0"), "--timeout must be between 0 and 600 seconds"),
        (("--timeout", "nope"), "invalid float value: 'nope'"),
        (("--timeout", "601"), "--timeout must be between 0 and 600 seconds"),
        (("--bogus",), "unrecognized arguments: --bogus"),
        (("--token", ""), "--token needs a JWT (or - to read one from stdin)"),
    ],
)
def test_bad_usage_exits_2(openai, args, said, capsys):
    """Refused before anything runs: nothing reaches OpenAI (in-process: cli.main itself)."""
    try:
        code = main(["doctor", *args])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    assert code == 2
    assert said in capsys.readouterr().err
    assert openai.requests == []
