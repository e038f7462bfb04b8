"""Helpers shared by the tests (not fixtures: those stay in ``tests/conftest.py``, apart from
the plugin ``responses_fixtures``, the fake Responses API that several directories share).

``tests.support`` re-exports the everyday ones; the fakes and kits have modules of their own:
``fake_openai`` (the sessions API), ``jwt_kit`` (keys, tokens, a tiny JWKS server),
``contract`` (answers checked against /openapi.json), ``doctor`` (runs ``doctor`` in-process
or as the CLI), ``adversarial`` and ``rawhttp``; ``mock_broker`` (mock mode under uvicorn,
and a ChatKit client that mints its secret first); for gateways ``fake_backend`` (a misbehaving
ChatKit server), ``gateway_app`` (the relay behind a fixed admission), ``asgi_server`` (uvicorn
in the test's loop) and ``aioserver`` (aiohttp).
"""

from .app import app_client
from .env import API_KEY, IN_CI, ROOT, SECRET, WF_SALES, WF_SUPPORT, auth, free_port, need
from .processes import (
    REDIS_URL,
    BrokerProcess,
    RedisServer,
    cli_command,
    redis_reachable,
    wait_until_serving,
)

__all__ = [
    "API_KEY",
    "IN_CI",
    "REDIS_URL",
    "ROOT",
    "SECRET",
    "WF_SALES",
    "WF_SUPPORT",
    "BrokerProcess",
    "RedisServer",
    "app_client",
    "auth",
    "cli_command",
    "free_port",
    "need",
    "redis_reachable",
    "wait_until_serving",
]
