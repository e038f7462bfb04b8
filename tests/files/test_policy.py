"""The per-workflow file policy as the workflow file states it, and content sniffing."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import ConfigError, load_settings
from broker.files.policy import FilesPolicy, sniff


def settings_with(tmp_path: Path, base_env: dict[str, str], files: str):
    path = tmp_path / "workflows.toml"
    path.write_text(
        '[workflows.support]\nagent = "examples.agent.support_agent:agent"\n'
        f"[workflows.support.files]\n{files}\n"
    )
    env = {
        **base_env,
        "BROKER_WORKFLOWS": "",
        "BROKER_WORKFLOWS_FILE": str(path),
        "BROKER_SESSION_SECRET": "session-secret-that-is-at-least-32-bytes!",
    }
    return load_settings(env)


def test_defaults_are_images_and_pdfs_up_to_20_mb() -> None:
    policy = FilesPolicy()
    assert policy.enabled and policy.max_size == 20 * 1024 * 1024
    assert set(policy.accept) == {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "application/pdf",
    }


def test_the_workflow_file_sets_the_policy(tmp_path: Path, base_env) -> None:
    s = settings_with(
        tmp_path, base_env, 'max_size = 1000\naccept = ["text/plain"]\nmax_per_message = 1'
    )
    policy = s.workflow_named("support").files
    assert (policy.max_size, policy.accept, policy.max_per_message) == (1000, ("text/plain",), 1)


@pytest.mark.parametrize(
    ("files", "named"),
    [
        ('accept = ["application/x-msdownload"]', "application/x-msdownload"),
        ("max_size = 0", "max_size"),
        ('max_size = "20MB"', "max_size"),
        ("enabled = 1", "enabled"),
        ("max_per_messages = 2", "max_per_messages"),
    ],
)
def test_a_bad_policy_is_a_configuration_error_naming_it(
    tmp_path: Path, base_env, files, named
) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_with(tmp_path, base_env, files)
    assert named in str(caught.value)


@pytest.mark.parametrize(
    ("head", "declared", "found"),
    [
        (b"\x89PNG\r\n\x1a\n....", "", "image/png"),
        (b"\xff\xd8\xff\xe0....", "", "image/jpeg"),
        (b"GIF89a....", "", "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "", "image/webp"),
        (b"%PDF-1.7\n", "image/png", "application/pdf"),
        (b"# Title\nsome text", "text/markdown", "text/markdown"),
        (b"a,b\n1,2\n", "image/png", "text/plain"),
        (b"MZ\x90\x00\x03", "text/plain", None),
        ("caf\u00e9".encode()[:-1], "", "text/plain"),  # a character cut by the window
        (b"\xc3", "", None),  # …but not at the end of the whole file
        (b"", "", None),
    ],
)
def test_sniffing_by_content(head: bytes, declared: str, found: str | None) -> None:
    complete = head == b"\xc3"
    assert sniff(head, complete=complete, declared=declared) == found
