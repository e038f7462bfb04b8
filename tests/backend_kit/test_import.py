"""The kit needs only PyJWT and cryptography: imported here with the broker's server
packages made unimportable, it still verifies (and the middleware still refuses)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import asyncio, importlib.abc, sys

BLOCKED = {"starlette", "aiohttp", "uvicorn", "redis", "sqlalchemy", "agents", "openai",
           "chatkit", "dotenv", "itsdangerous", "prometheus_client", "httpx", "pydantic"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked: {name}")
        return None

sys.meta_path.insert(0, Block())

import broker.backend_kit as kit
from broker.assertion import AssertionSigner  # the signer needs no server package either

signer = AssertionSigner(issuer="https://broker.example")
body = b'{"type":"threads.list","params":{}}'
token = signer.sign("alice", audience="support", workflow="support", body=body)
key = signer.jwks()["keys"][0]
print(kit.verify_with_key(token, key=key, audience="support",
                          issuer="https://broker.example", body=body).user)

async def app(scope, receive, send):
    raise AssertionError("the app must not run without an assertion")

async def main():
    middleware = kit.AssertionMiddleware(app, secret="s" * 32, audience="support")
    sent = []
    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}
    async def send(message):
        sent.append(message)
    await middleware({"type": "http", "method": "POST", "path": "/chatkit", "headers": []},
                     receive, send)
    print(sent[0]["status"])

asyncio.run(main())
print(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
"""


def test_the_kit_imports_and_works_without_the_servers_dependencies() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["alice", "401", "[]"]
