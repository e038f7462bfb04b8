"""The fake Responses API as pytest fixtures, for every test that runs an agent workflow (the
agent backend, files, the test page's console): one server for the session, emptied per test.
A plugin of the root ``tests/conftest.py`` (``pytest_plugins``), so no conftest copies it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .fake_responses import FakeResponses, FakeResponsesServer


@pytest.fixture(scope="session")
def responses_server() -> Iterator[FakeResponses]:
    server = FakeResponsesServer()
    fake = server.start()
    yield fake
    server.stop()


@pytest.fixture
def responses(responses_server: FakeResponses) -> Iterator[FakeResponses]:
    """The fake Responses API, emptied for this test."""
    responses_server.reset()
    yield responses_server
    responses_server.release()
