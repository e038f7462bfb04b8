"""The doctor's probe of a gateway workflow, against the real example server and the fake."""

from __future__ import annotations

import socket

import aiohttp
import pytest

from broker.assertion import AssertionSigner, generate_private_key_pem
from broker.backends.gateway.checks import check_keys, probe
from broker.backends.gateway.proxy import GatewayProxy, Upstream, gateway_pool
from tests.support.asgi_server import run_asgi
from tests.support.fake_backend import fake_backend
from tests.support.gateway_app import GatewayTestApp

pytest.importorskip("chatkit")
from examples.chatkit_server.app import Options, create_app


def test_an_ephemeral_key_is_a_warning_and_a_configured_one_is_named() -> None:
    (finding,) = check_keys(AssertionSigner())
    assert finding.status == "warn" and "BROKER_ASSERTION_KEY" in finding.message
    configured = AssertionSigner.from_config(generate_private_key_pem())
    (finding,) = check_keys(configured)
    assert finding.status == "ok" and configured.kid in finding.message


async def test_a_server_that_verifies_the_assertion_passes() -> None:
    signer = AssertionSigner.from_config(generate_private_key_pem())
    host = GatewayTestApp(GatewayProxy(gateway_pool()), signer, Upstream("http://unset"))
    async with run_asgi(host) as broker_url:
        app = create_app(Options(broker=broker_url, audience="support"))
        async with run_asgi(app) as example_url, aiohttp.ClientSession() as session:
            jwks_url = f"{broker_url}/.well-known/jwks.json"
            ok = await probe(
                session,
                workflow="support",
                url=f"{example_url}/chatkit",
                audience="support",
                signer=signer,
                jwks_url=jwks_url,
            )
            assert ok.status == "ok", ok.message
            wrong = await probe(
                session,
                workflow="support",
                url=f"{example_url}/chatkit",
                audience="billing",  # the server expects "support"
                signer=signer,
                jwks_url=jwks_url,
            )
            assert wrong.status == "fail"
            assert "HTTP 401" in wrong.message and "audience 'billing'" in wrong.message
            assert jwks_url in wrong.message
            lost = await probe(
                session,
                workflow="support",
                url=f"{example_url}/nowhere",
                audience="support",
                signer=signer,
                jwks_url=jwks_url,
            )
            assert lost.status == "fail" and "404" in lost.message


async def test_an_ephemeral_key_refusal_says_why() -> None:
    async with fake_backend() as backend, aiohttp.ClientSession() as session:
        finding = await probe(
            session,
            workflow="support",
            url=backend.url("/status?code=401"),
            audience="support",
            signer=AssertionSigner(),
            jwks_url="http://broker/.well-known/jwks.json",
        )
    assert finding.status == "fail"
    assert "throw-away" in finding.message


@pytest.mark.parametrize(
    "path, words",
    [
        ("/redirect", "redirect"),
        ("/status?code=200", "not ChatKit JSON"),
        ("/status?code=500", "HTTP 500"),
    ],
)
async def test_other_answers_are_explained(path: str, words: str) -> None:
    async with fake_backend() as backend, aiohttp.ClientSession() as session:
        finding = await probe(
            session,
            workflow="support",
            url=backend.url(path),
            audience="support",
            signer=AssertionSigner(),
            jwks_url="http://broker/.well-known/jwks.json",
        )
    assert finding.status == "fail"
    assert words in finding.message


async def test_an_unreachable_server_fails() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/chatkit"
        async with aiohttp.ClientSession() as session:
            finding = await probe(
                session,
                workflow="support",
                url=url,
                audience="support",
                signer=AssertionSigner(),
                jwks_url="http://broker/.well-known/jwks.json",
            )
    assert finding.status == "fail" and "cannot be reached" in finding.message
