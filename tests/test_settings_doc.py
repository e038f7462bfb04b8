"""The generated configuration files are current, and say what a new user needs first."""

from broker import settings_doc


def test_generated_files_are_current():
    """Fails when a setting or workflow key changed without ``python -m broker.settings_doc``."""
    for path, text in settings_doc.generated().items():
        assert path.read_text() == text, f"{path.name} is stale: run python -m broker.settings_doc"


def test_env_example_leads_with_an_agent_workflow_and_shows_hosted_last_as_retired():
    text = settings_doc.env_example()
    first = next(line for line in text.splitlines() if line.startswith("BROKER_WORKFLOWS="))
    assert first.endswith(":agent")  # an agent workflow, live in the example
    kinds = [line for line in text.splitlines() if "wf_" in line]
    assert kinds and all("retired" in line.lower() or "RETIRED" in line for line in kinds)
    assert text.index("package.module:attr") < text.index("https://host/path") < text.index("wf_")


def test_reference_lists_every_kinds_keys_and_no_secret_default():
    from broker.backends import KINDS

    text = settings_doc.reference()
    for spec in KINDS.values():
        assert spec.workflow is not None
        assert f"### {spec.kind}" in text
        assert f"`{spec.workflow.target_key}`" in text
    assert "| `BROKER_SESSION_SECRET` | — | yes |" in text


def test_check_mode_reports_stale(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(settings_doc, "ENV_EXAMPLE", tmp_path / ".env.example")
    monkeypatch.setattr(settings_doc, "REFERENCE", tmp_path / "configuration.md")
    monkeypatch.setattr(settings_doc, "ROOT", tmp_path)
    assert settings_doc.main(["--check"]) == 1
    assert "stale: .env.example" in capsys.readouterr().out
    assert settings_doc.main([]) == 0
    assert settings_doc.main(["--check"]) == 0
