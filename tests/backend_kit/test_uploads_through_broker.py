"""End to end: the whole broker (uvicorn) → a server in the customer-support sample's shape
with the kit's lines (``AssertionMiddleware`` + ``UserScopedStore``), as docs/gateway.md
tells a team to run it. Files over the kit's 1 MiB body cap upload, two-phase and direct;
an assertion the broker did not sign, or one replayed, uploads nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from broker.app import create_app
from broker.assertion import ASSERTION_HEADER, AssertionSigner, generate_private_key_pem
from broker.config import load_settings
from tests.backends.gateway.test_gateway_files import (
    JWT_SECRET,
    SESSION_SECRET,
    Browser,
    Stack,
    attach,
    png,
    session,
    upload_path,
)
from tests.support.asgi_server import bound_socket, run_asgi
from tests.support.sample_shaped import KitOptions
from tests.support.sample_shaped import create_app as create_sample

pytest.importorskip("chatkit")

MAX_SIZE = 4_000_000
SIZE = 1_600_000  # over the kit's 1 MiB body cap


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    broker_sock, sample_sock = bound_socket(), bound_socket()
    broker_url = f"http://127.0.0.1:{broker_sock.getsockname()[1]}"
    sample_url = f"http://127.0.0.1:{sample_sock.getsockname()[1]}"
    (tmp_path / "workflows.toml").write_text(f"""
[workflows.support]
server = "{sample_url}/support/chatkit"
direct_upload_url = "{sample_url}/support/attachments"
idle_timeout = 10

[workflows.support.files]
accept = ["image/png"]
max_size = {MAX_SIZE}
""")
    settings = load_settings(
        {
            "BROKER_WORKFLOWS_FILE": str(tmp_path / "workflows.toml"),
            "BROKER_JWT_SECRET": JWT_SECRET,
            "BROKER_SESSION_SECRET": SESSION_SECRET,
            "BROKER_ASSERTION_KEY": generate_private_key_pem(),
            "BROKER_PUBLIC_URL": broker_url,
        }
    )
    sample = create_sample(
        KitOptions(f"{broker_url}/.well-known/jwks.json", "support", broker_url), files=True
    )
    async with (
        run_asgi(create_app(settings), sock=broker_sock, lifespan="on"),
        run_asgi(sample, sock=sample_sock),
        httpx.AsyncClient(base_url=broker_url, timeout=30) as client,
    ):
        browser = Browser(client)
        client.event_hooks["response"].append(browser.keep)
        yield Stack(broker_url, sample_url, sample.state.attachments, browser)


async def test_a_file_over_a_mebibyte_uploads_two_phase_and_direct(stack: Stack) -> None:
    minted = await session(stack)
    secret = minted["client_secret"]
    image = png(SIZE)
    assert len(image) > 1024 * 1024

    attachment = await attach(stack, secret, size=len(image))
    uploaded = await stack.browser.client.post(
        upload_path(attachment["upload_descriptor"]["url"]),
        files={"file": ("big.png", image, "image/png")},
    )
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["id"] == attachment["id"]
    assert stack.files.files[attachment["id"]] == image
    preview = await stack.browser.client.get(upload_path(attachment["preview_url"]))
    assert preview.status_code == 200 and preview.content == image

    direct = await stack.browser.client.post(
        minted["backend"]["upload_strategy"]["uploadUrl"],
        files={"file": ("big.png", image, "image/png")},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert direct.status_code == 200, direct.text
    assert stack.files.files[direct.json()["id"]] == image
    assert stack.leaked() == []


async def test_a_forged_or_replayed_upload_assertion_uploads_nothing(stack: Stack) -> None:
    secret = (await session(stack))["client_secret"]
    image = png(SIZE)
    first = await attach(stack, secret, size=len(image))
    second = await attach(stack, secret, size=len(image))
    sent = await stack.browser.client.post(
        upload_path(first["upload_descriptor"]["url"]),
        files={"file": ("big.png", image, "image/png")},
    )
    assert sent.status_code == 200, sent.text
    captured = stack.files.uploads[-1].headers[ASSERTION_HEADER.lower()]
    path = f"/support/attachments/{first['id']}/upload"
    other = f"/support/attachments/{second['id']}/upload"
    # a key the broker does not publish, with every claim right
    forged = AssertionSigner(issuer=stack.broker).sign(
        "alice",
        audience="support",
        workflow="support",
        extra={"htm": "POST", "htu": f"{stack.sample}{other}"},
    )
    async with httpx.AsyncClient(base_url=stack.sample, timeout=30) as attacker:
        attempts = {
            "replayed": await attacker.post(
                path, content=image, headers={ASSERTION_HEADER: captured}
            ),
            "replayed elsewhere": await attacker.post(
                other, content=image, headers={ASSERTION_HEADER: captured}
            ),
            "forged": await attacker.post(other, content=image, headers={ASSERTION_HEADER: forged}),
            "none": await attacker.post(other, content=image),
        }
    for why, answer in attempts.items():
        assert answer.status_code == 401, why
    assert second["id"] not in stack.files.files
    assert len(stack.files.uploads) == 1  # no refused request reached the sample's route
