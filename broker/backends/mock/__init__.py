"""Mock mode's backend: every workflow served locally with canned replies, no OpenAI at all.

Mock mode runs the agent engine (backends/agent: store, streaming, stop, retry, ownership)
with one canned agent for every workflow: ``backend.py`` puts it together, ``canned.py`` is
the Agents SDK model that streams the replies, ``replies.py`` their words. This package
depends on the agent engine, never the reverse, and imports it only from ``backend.py``
(chatkit and the Agents SDK load when mock mode starts, not when the broker is imported).
"""

from __future__ import annotations

__all__ = ["MOCK_USER"]

#: who a request without a token is in mock mode
MOCK_USER = "mock-user"
