"""Two brokers on one S3-compatible bucket (moto's server) and one thread database: a file
uploaded through one is answered by the other, to the same user only."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx

from broker.config import load_settings

from ..support import app_client, auth
from ..support.fake_responses import FakeResponses, text

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


async def test_a_file_uploaded_through_one_broker_is_answered_by_the_other(
    base_env, token, responses: FakeResponses, s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    env = {
        **base_env,
        "OPENAI_BASE_URL": responses.base_url,
        "BROKER_WORKFLOWS": "support=examples.agent.support_agent:agent",
        "BROKER_SESSION_SECRET": "session-secret-that-is-at-least-32-bytes!",
        "BROKER_DATABASE_URL": f"sqlite:///{tmp_path / 'threads.sqlite3'}",
        "BROKER_FILES_STORAGE": f"s3://{s3_bucket}/chat",
    }
    alice = token("alice")
    async with app_client(load_settings(env)) as one, app_client(load_settings(env)) as two:
        r = await one.post(
            "/chatkit/support",
            json={
                "type": "attachments.create",
                "params": {"name": "cat.png", "size": len(PNG), "mime_type": "image/png"},
            },
            headers=auth(alice),
        )
        image = r.json()
        r = await one.post(image["upload_descriptor"]["url"], files={"file": ("cat.png", PNG)})
        assert r.status_code == 200, r.text
        # the bytes are in the bucket, not on either broker
        listing = httpx.get(f"{s3_endpoint}/{s3_bucket}?list-type=2").text
        assert f"<Key>chat/{image['id']}</Key>" in listing
        # the other broker serves the preview …
        preview = await two.get(image["preview_url"])
        assert preview.status_code == 200 and preview.content == PNG
        # … and sends the image to the model with a message
        responses.script(text("A cat."))
        r = await two.post(
            "/api/workflows/support/runs",
            json={"input": "What is it?", "attachments": [image["id"]]},
            headers=auth(alice),
        )
        assert r.status_code == 200, r.text
        sent = [
            part
            for entry in responses.requests[-1].input
            if entry.get("role") == "user"
            for part in entry["content"]
        ]
        assert sent[1]["image_url"] == "data:image/png;base64," + base64.b64encode(PNG).decode()
        # another user gets the same 404 through either broker
        for broker in (one, two):
            r = await broker.post(
                "/api/workflows/support/runs",
                json={"input": "x", "attachments": [image["id"]]},
                headers=auth(token("bob")),
            )
            assert r.status_code == 404
