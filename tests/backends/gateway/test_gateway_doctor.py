"""``doctor`` on a gateway workflow: the signed probe, in-process against the example server."""

from __future__ import annotations

import json

import pytest

from broker.assertion import AssertionSigner, generate_private_key_pem
from broker.backends.gateway.proxy import GatewayProxy, Upstream, gateway_pool
from broker.doctor import run_doctor
from tests.support.asgi_server import run_asgi
from tests.support.gateway_app import GatewayTestApp

pytest.importorskip("chatkit")
from examples.chatkit_server.app import Options, create_app


async def _report(env: dict[str, str]) -> dict:
    import asyncio

    code, text = await asyncio.to_thread(run_doctor, env, env, {}, timeout=10, as_json=True)
    report = json.loads(text)
    assert report["exit_code"] == code
    return report


async def test_doctor_probes_a_gateway_workflow_and_needs_no_openai_key() -> None:
    pem = generate_private_key_pem()
    broker = GatewayTestApp(
        GatewayProxy(gateway_pool()), AssertionSigner.from_config(pem), Upstream("http://unset")
    )
    async with run_asgi(broker) as broker_url:
        example = create_app(Options(broker=broker_url, audience="example"))
        async with run_asgi(example) as example_url:
            env = {
                "BROKER_WORKFLOWS": f"example={example_url}/chatkit",
                "BROKER_JWT_SECRET": "j" * 40,
                "BROKER_JWT_AUDIENCE": "app",
                "BROKER_SESSION_SECRET": "s" * 40,
                "BROKER_ASSERTION_KEY": pem,
                "BROKER_PUBLIC_URL": broker_url,
            }
            # the example checks issuer "chatkit-broker": BROKER_PUBLIC_URL makes it differ
            refused = await _report(env)
            ok = await _report({k: v for k, v in env.items() if k != "BROKER_PUBLIC_URL"})
    checks = {c["id"]: c for c in ok["checks"]}
    assert checks["key"]["status"] == "skip" and checks["key_works"]["status"] == "skip"
    assert checks["gateway"]["status"] == "pass", checks["gateway"]
    assert checks["gateway"]["data"]["workflows"][0]["status"] == "pass"
    assert ok["exit_code"] == 0
    bad = {c["id"]: c for c in refused["checks"]}["gateway"]
    assert bad["status"] == "fail"
    assert f"issuer {broker_url!r}" in bad["details"][0]
    assert refused["exit_code"] == 1


async def test_doctor_warns_about_an_ephemeral_key_and_explains_the_refusal() -> None:
    broker = GatewayTestApp(GatewayProxy(gateway_pool()), AssertionSigner(), Upstream("http://x"))
    async with run_asgi(broker) as broker_url:
        example = create_app(Options(broker=broker_url, audience="example"))
        async with run_asgi(example) as example_url:
            report = await _report(
                {
                    "BROKER_WORKFLOWS": f"example={example_url}/chatkit",
                    "BROKER_JWT_SECRET": "j" * 40,
                    "BROKER_JWT_AUDIENCE": "app",
                    "BROKER_SESSION_SECRET": "s" * 40,
                }
            )
    gateway = {c["id"]: c for c in report["checks"]}["gateway"]
    assert gateway["status"] == "fail"
    assert "throw-away key" in " ".join(gateway["details"])
    assert "BROKER_ASSERTION_KEY" in gateway["fix"]
