"""Fake OpenAI upstreams answering `POST /v1/chatkit/sessions` with a `ChatSession`.

* nginx (Debian), zero latency: a generated config in a temp dir, run in the foreground
  (`daemon off`) with its own pid file, error log and temp paths, one worker process.
* a small aiohttp.web server with an injected delay (default 50 ms) for the slow cases:
  `python -m benchmarks.upstreams --port P --delay-ms 50`.

Both answer with the shape of `ChatSession` (chatkit-api.md §1.3): everything fixed
except `id` and `client_secret`, which are fresh per response as with the real API
(a fixed id would hide what the broker keeps per minted session).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import time
from pathlib import Path

WORKFLOW_ID = "wf_" + "68f0c0ffee" + "0" * 38  # wf_ + 48 hex
EXPIRES_AT = int(time.time()) + 3600  # fixed for a whole run (real sessions: created + 600 s)
_ID = "@@ID@@"


def chat_session_template() -> str:
    """The upstream body with `@@ID@@` where a 48-hex id goes (twice: id and secret).

    The shape is the tests' fake OpenAI's (tests/support/fake_openai.py), so there is one definition
    of a `ChatSession`; only the id, the secret and the expiry are fixed here.
    """
    from tests.support.fake_openai import chat_session

    body = chat_session("user17", {"id": WORKFLOW_ID})
    body["id"] = "cksess_" + _ID
    body["client_secret"] = "ek_" + _ID + "_a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"
    body["expires_at"] = EXPIRES_AT
    return json.dumps(body, separators=(", ", ": "))


# ------------------------------------------------------------------------- nginx


def nginx_config(workdir: Path, port: int, nofile: int) -> Path:
    """Write nginx.conf into `workdir` and return its path."""
    # ${request_id} is 32 random hex per request; pad to the real 48-hex id length.
    body = chat_session_template().replace(_ID, "${request_id}0000000000000000")
    assert "'" not in body and "$" not in body.replace("${request_id}", "")
    conf = f"""
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{
    worker_connections {max(1024, min(nofile - 64, 16384))};
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server_tokens off;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /v1/chatkit/sessions {{
            default_type application/json;
            add_header x-request-id req_${{request_id}};
            add_header openai-processing-ms 41;
            add_header openai-version 2020-10-01;
            return 200 '{body}';
        }}
        location = /healthz {{
            default_type application/json;
            return 200 '{{"status": "ok"}}';
        }}
        location / {{
            default_type application/json;
            return 404 '{{"error": {{"message": "not found", "type": "invalid_request_error", "param": null, "code": null}}}}';
        }}
    }}
}}
"""
    path = workdir / "nginx.conf"
    path.write_text(conf)
    return path


def nginx_argv(workdir: Path, conf: Path) -> list[str]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    # -e: the error log used before the config is read (default /var/log/nginx/error.log)
    return [nginx, "-p", str(workdir), "-e", str(workdir / "nginx-error.log"), "-c", str(conf)]


# ---------------------------------------------------------------- slow upstream


def _slow_app(delay: float):
    from aiohttp import web

    head, tail = chat_session_template().encode().split(_ID.encode(), 1)
    mid, end = tail.split(_ID.encode(), 1)

    async def sessions(request: web.Request) -> web.Response:
        await request.read()
        if delay:
            await asyncio.sleep(delay)
        sid = os.urandom(24).hex().encode()
        return web.Response(
            body=b"".join((head, sid, mid, sid, end)),
            content_type="application/json",
            headers={"x-request-id": "req_" + sid[:32].decode(), "openai-processing-ms": "50"},
        )

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/v1/chatkit/sessions", sessions)
    app.router.add_get("/healthz", healthz)
    return app


async def _serve(port: int, delay: float) -> None:
    from aiohttp import web

    runner = web.AppRunner(_slow_app(delay), access_log=None, handle_signals=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description="Fake ChatKit upstream with injected latency.")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, default=50.0)
    args = ap.parse_args()
    import uvloop

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_serve(args.port, args.delay_ms / 1000))


if __name__ == "__main__":
    main()
