"""``doctor`` proves isolation (issue 22): against a server in the customer-support sample's
shape, unchanged, it fails and says what got through; with the backend kit's lines, it
passes; a backend that is down, slow or failing is named as such and never ✔."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.assertion import AssertionSigner, generate_private_key_pem
from broker.backends.gateway.proxy import GatewayProxy, Upstream, gateway_pool
from broker.doctor import run_doctor
from tests.support.asgi_server import bound_socket, run_asgi
from tests.support.fake_backend import fake_backend
from tests.support.gateway_app import GatewayTestApp

pytest.importorskip("chatkit")
from tests.support.sample_shaped import KitOptions, create_app

PEM = generate_private_key_pem()
CREATE = {
    "type": "threads.create",
    "params": {"input": {"content": [{"type": "input_text", "text": "my booking ABC123"}],
                         "attachments": [], "inference_options": {}}},
}  # fmt: skip


def env_for(tmp_path: Path, server: str, **options: Any) -> dict[str, str]:
    lines = [f'[workflows.support]\nserver = "{server}"']
    lines += [f"{k} = {v}" for k, v in options.items()]
    (tmp_path / "wf.toml").write_text("\n".join(lines) + "\n")
    return {
        "BROKER_WORKFLOWS_FILE": str(tmp_path / "wf.toml"),
        "BROKER_JWT_SECRET": "j" * 40,
        "BROKER_JWT_AUDIENCE": "app",
        "BROKER_SESSION_SECRET": "s" * 40,
        "BROKER_ASSERTION_KEY": PEM,
    }


async def gateway_check(env: dict[str, str]) -> dict[str, Any]:
    code, text = await asyncio.to_thread(run_doctor, env, env, {}, timeout=20, as_json=True)
    report = json.loads(text)
    check = next(c for c in report["checks"] if c["id"] == "gateway")
    check["exit_code"] = code
    return check


async def test_the_sample_unchanged_fails_and_doctor_says_what_got_through(
    tmp_path: Path,
) -> None:
    async with run_asgi(create_app()) as url:
        async with httpx.AsyncClient(base_url=url) as client:  # alice has a thread already
            assert (await client.post("/support/chatkit", json=CREATE)).status_code == 200
        check = await gateway_check(env_for(tmp_path, f"{url}/support/chatkit"))
    assert check["status"] == "fail" and check["exit_code"] == 1
    (item,) = check["data"]["workflows"]
    assert item["status"] == "fail"
    assert "this backend shows other users' threads to a new user" in item["summary"]
    assert "UserScopedStore" in item["fix"] and "AssertionMiddleware" in item["fix"]
    assert "(and 5 forged request(s) got through)" in item["summary"]
    assert sum(line.startswith("✖ ") for line in item["details"]) == 6
    # a sample with no threads yet: the new-user check passes (vacuously), the forgeries fail
    async with run_asgi(create_app()) as url:
        check = await gateway_check(env_for(tmp_path, f"{url}/support/chatkit"))
    (item,) = check["data"]["workflows"]
    assert item["status"] == "fail"
    assert "accepted a request with no assertion (HTTP 200)" in item["summary"]
    assert "and 4 more forged request(s) got through" in item["summary"]
    assert "AssertionMiddleware" in item["fix"]
    assert check["exit_code"] == 1
    assert sum(line.startswith("✖ ") for line in item["details"]) == 5


async def test_the_sample_with_the_kits_lines_passes(tmp_path: Path) -> None:
    broker_sock = bound_socket()
    broker_url = f"http://127.0.0.1:{broker_sock.getsockname()[1]}"
    broker = GatewayTestApp(
        GatewayProxy(gateway_pool()), AssertionSigner.from_config(PEM), Upstream("http://x")
    )
    kit = KitOptions(broker_url + "/.well-known/jwks.json", "support", "chatkit-broker")
    async with run_asgi(broker, sock=broker_sock), run_asgi(create_app(kit)) as url:
        broker.upstream = Upstream(f"{url}/support/chatkit")
        async with httpx.AsyncClient(base_url=broker_url, timeout=10) as browser:
            assert (await browser.post("/chatkit/support", json=CREATE)).status_code == 200
        check = await gateway_check(env_for(tmp_path, f"{url}/support/chatkit"))
    assert check["status"] == "pass", check
    (item,) = check["data"]["workflows"]
    assert "refuses 5 forged requests and shows a new user no threads" in item["summary"]
    assert check["exit_code"] == 0


@pytest.mark.parametrize(
    "path, words",
    [
        ("/status?code=500", "HTTP 500"),
        ("/hang", "did not answer a threads.list within 2 s"),
        ("/close-early", "did not answer valid HTTP"),
    ],
    ids=["500", "slow", "reset"],
)
async def test_a_failing_backend_is_named_never_passed(
    tmp_path: Path, path: str, words: str
) -> None:
    async with fake_backend() as backend:
        env = env_for(tmp_path, backend.url(path), connect_timeout=1, idle_timeout=1)
        check = await gateway_check(env)
    (item,) = check["data"]["workflows"]
    assert check["status"] == "fail" and item["status"] == "fail"
    assert words in item["summary"], item["summary"]


async def test_a_backend_that_is_down_is_named(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/chatkit"
        check = await gateway_check(env_for(tmp_path, url))
    (item,) = check["data"]["workflows"]
    assert check["status"] == "fail" and "cannot be reached" in item["summary"]


async def test_a_backend_that_answers_anything_fails_each_forgery(tmp_path: Path) -> None:
    async with fake_backend() as backend:
        check = await gateway_check(env_for(tmp_path, backend.url("/json")))
    (item,) = check["data"]["workflows"]
    assert item["status"] == "fail"
    for what in (
        "with no assertion",
        "signed by a key the broker does not publish",
        "for another audience",
        "whose assertion expired",
        "whose body is not the one the assertion was signed for",
    ):
        assert any(
            line.startswith("✖ ") and f"accepted a request {what}" in line
            for line in item["details"]
        ), what
