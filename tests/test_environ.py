"""``export_environment``: what an export's own ``AsyncOpenAI()`` will read."""

from __future__ import annotations

from broker.environ import export_environment


def test_dotenv_values_join_but_the_real_environment_wins() -> None:
    environ = {"BROKER_PORT": "9000", "PATH": "/bin"}
    export_environment({"BROKER_PORT": "8000", "SOME_SETTING": "x", "PATH": "/bin"}, environ)
    assert environ == {"BROKER_PORT": "9000", "PATH": "/bin", "SOME_SETTING": "x"}


def test_the_brokers_key_and_base_url_are_what_openai_python_reads() -> None:
    # a stray shell OPENAI_API_KEY of another project must not be what exports call with
    environ = {"OPENAI_API_KEY": "sk-stray-shell-key"}
    merged = {
        "OPENAI_API_KEY": "sk-stray-shell-key",
        "CHATKIT_OPENAI_API_KEY": "sk-broker-key",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1/",
        "OPENAI_PROJECT": "proj_x",
    }
    export_environment(merged, environ)
    assert environ["OPENAI_API_KEY"] == "sk-broker-key"
    assert environ["OPENAI_BASE_URL"] == "http://127.0.0.1:9/v1"
    assert environ["OPENAI_PROJECT_ID"] == "proj_x"


def test_no_key_sets_none() -> None:
    environ: dict[str, str] = {}
    export_environment({"BROKER_MOCK": "1"}, environ)
    assert environ == {"BROKER_MOCK": "1"}
