"""The life of a gateway workflow's upload URLs, through real HTTP (browser → broker →
sample-shaped server): what spends a two-phase URL and what gives it back, the signed direct
``uploadUrl`` against the workflow's request limit and sign-out, and attachment ids with
``/`` in them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from broker.app import create_app
from tests.support.asgi_server import bound_socket, run_asgi
from tests.support.sample_shaped import create_app as create_sample

from .test_gateway_files import (
    Browser,
    Stack,
    attach,
    broker_settings,
    png,
    running_stack,
    session,
    token,
    upload_path,
)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path) as running:
        yield running


async def test_a_failed_upload_leaves_the_url_for_a_retry_and_a_good_one_spends_it(
    stack: Stack,
) -> None:
    secret = (await session(stack))["client_secret"]
    attachment = await attach(stack, secret)
    url = upload_path(attachment["upload_descriptor"]["url"])
    stack.files.fail_uploads = 1  # the server's storage fails once
    failed = await stack.browser.client.post(url, content=png())
    assert failed.status_code == 502, failed.text
    assert failed.json()["error"]["code"] == "backend_error"
    retried = await stack.browser.client.post(url, content=png())
    assert retried.status_code == 200, retried.text
    assert stack.files.files[attachment["id"]] == png()
    replayed = await stack.browser.client.post(url, content=png())
    assert replayed.status_code == 403
    assert "already been used" in replayed.json()["error"]["message"]
    assert len(stack.files.uploads) == 2  # the replay never reached the server


async def test_one_use_at_a_time_and_a_failed_one_is_given_back(stack: Stack) -> None:
    secret = (await session(stack))["client_secret"]
    attachment = await attach(stack, secret)
    url = upload_path(attachment["upload_descriptor"]["url"])
    stack.files.fail_uploads = 1
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield png()[:100]
        await release.wait()
        yield png()[100:]

    first = asyncio.create_task(stack.browser.client.post(url, content=slow()))
    for _ in range(500):
        if stack.files.uploads:
            break
        await asyncio.sleep(0.01)
    meanwhile = await stack.browser.client.post(url, content=png())
    assert meanwhile.status_code == 403, meanwhile.text
    assert "under way" in meanwhile.json()["error"]["message"]
    release.set()
    assert (await first).status_code == 502  # the one in flight failed at the server
    after = await stack.browser.client.post(url, content=png())
    assert after.status_code == 200, after.text
    assert len(stack.files.uploads) == 2  # the refused one never reached the server


async def test_a_signed_direct_upload_counts_against_the_workflows_request_limit(
    tmp_path: Path,
) -> None:
    async with running_stack(tmp_path, options="max_requests_per_minute = 3") as stack:
        minted = await session(stack)
        await attach(stack, minted["client_secret"])  # one ChatKit request
        signed = minted["backend"]["upload_strategy"]["uploadUrl"]
        answers = [
            await stack.browser.client.post(signed, files={"file": ("a.png", png(), "image/png")})
            for _ in range(3)
        ]
        assert [a.status_code for a in answers] == [200, 200, 429]
        error = answers[-1].json()["error"]
        assert error["code"] == "rate_limited" and error["request_id"]
        assert "Retry-After" in answers[-1].headers
        assert len(stack.files.uploads) == 2
        # the same count as other requests: the session secret's requests are refused too
        refused = await stack.browser.client.post(
            "/chatkit/support",
            json={"type": "threads.list", "params": {}},
            headers={"Authorization": f"Bearer {minted['client_secret']}"},
        )
        assert refused.status_code == 429


async def sign_out(client: httpx.AsyncClient, user: str = "alice") -> None:
    answer = await client.post(
        "/api/chatkit/session/cancel",
        json={"all": True},
        headers={"Authorization": f"Bearer {token(user)}"},
    )
    assert answer.status_code == 200, answer.text


async def test_signing_out_ends_the_signed_direct_upload_url(stack: Stack) -> None:
    client = stack.browser.client
    first = await session(stack)
    signed = first["backend"]["upload_strategy"]["uploadUrl"]
    # the kit renews the session (naming the previous one, which is cancelled); ChatKit
    # keeps the uploadUrl it was mounted with, so the URL outlives its own session
    renewed = await client.post(
        "/api/chatkit/session",
        json={"workflow": "support", "previous_session_id": first["session_id"]},
        headers={"Authorization": f"Bearer {token()}"},
    )
    assert renewed.status_code == 200, renewed.text
    kept = await client.post(signed, files={"file": ("a.png", png(), "image/png")})
    assert kept.status_code == 200, kept.text
    await sign_out(client)
    ended = await client.post(signed, files={"file": ("a.png", png(), "image/png")})
    assert ended.status_code == 403, ended.text
    assert "signed out" in ended.json()["error"]["message"]
    assert len(stack.files.uploads) == 1  # the signed-out post never reached the server


async def test_across_brokers_on_redis_a_retry_and_a_sign_out_hold(
    tmp_path: Path, redis_env: dict[str, str]
) -> None:
    """Two instances on one Redis: a use that failed at one is retried at the other; the
    URL then is spent at both; a sign-out at one ends the direct URL at the other."""
    one_sock, two_sock, sample_sock = bound_socket(), bound_socket(), bound_socket()
    one_url = f"http://127.0.0.1:{one_sock.getsockname()[1]}"
    sample_url = f"http://127.0.0.1:{sample_sock.getsockname()[1]}"
    settings = broker_settings(tmp_path, sample_url, one_url, **redis_env)
    sample: Starlette = create_sample(files=True)
    async with (
        run_asgi(create_app(settings), sock=one_sock, lifespan="on"),
        run_asgi(create_app(settings), sock=two_sock, lifespan="on") as two_url,
        run_asgi(sample, sock=sample_sock),
        httpx.AsyncClient(base_url=one_url, timeout=10) as one,
        httpx.AsyncClient(base_url=two_url, timeout=10) as two,
    ):
        stack = Stack(one_url, sample_url, sample.state.attachments, Browser(one))
        minted = await session(stack)
        attachment = await attach(stack, minted["client_secret"])
        url = upload_path(attachment["upload_descriptor"]["url"])
        stack.files.fail_uploads = 1
        assert (await one.post(url, content=png())).status_code == 502
        assert (await two.post(url, content=png())).status_code == 200
        assert (await one.post(url, content=png())).status_code == 403
        assert (await two.post(url, content=png())).status_code == 403

        signed = minted["backend"]["upload_strategy"]["uploadUrl"]
        await sign_out(two)
        ended = await one.post(signed, files={"file": ("a.png", png(), "image/png")})
        assert ended.status_code == 403, ended.text
        assert len(stack.files.uploads) == 2


async def test_attachment_ids_with_a_slash_are_relayed(stack: Stack) -> None:
    """A server may name files by a path (``u/7/atc_…``); the broker's URLs carry the id
    percent-encoded and route it whole."""
    stack.files.id_prefix = "u/7/"
    secret = (await session(stack))["client_secret"]
    attachment = await attach(stack, secret)
    assert attachment["id"].startswith("u/7/atc_")
    descriptor_url = attachment["upload_descriptor"]["url"]
    assert "/support/u%2F7%2Fatc_" in descriptor_url
    image = png(3000)
    uploaded = await stack.browser.client.post(
        upload_path(descriptor_url), files={"file": ("a.png", image, "image/png")}
    )
    assert uploaded.status_code == 200, uploaded.text
    assert stack.files.files[attachment["id"]] == image
    preview = await stack.browser.client.get(upload_path(attachment["preview_url"]))
    assert preview.status_code == 200 and preview.content == image
    # the path still names the file the token was issued for
    other = upload_path(attachment["preview_url"]).replace("u%2F7%2F", "u%2F8%2F")
    assert (await stack.browser.client.get(other)).status_code == 403
    assert stack.leaked() == []


async def test_with_redis_down_uses_are_claimed_and_given_back_per_process(
    tmp_path: Path, own_redis
) -> None:
    """Claims fall back to this process while Redis is down, and a failed use's claim is given
    back there; the direct URL is accepted unchecked for sign-out (as session secrets are)."""
    env = {"BROKER_REDIS_URL": own_redis.url, "BROKER_REDIS_PREFIX": "files-down:"}
    async with running_stack(tmp_path, **env) as stack:
        minted = await session(stack)
        attachment = await attach(stack, minted["client_secret"])
        url = upload_path(attachment["upload_descriptor"]["url"])
        own_redis.kill()
        client = stack.browser.client
        stack.files.fail_uploads = 1
        assert (await client.post(url, content=png())).status_code == 502
        assert (await client.post(url, content=png())).status_code == 200
        assert (await client.post(url, content=png())).status_code == 403
        signed = minted["backend"]["upload_strategy"]["uploadUrl"]
        direct = await client.post(signed, files={"file": ("a.png", png(), "image/png")})
        assert direct.status_code == 200, direct.text
