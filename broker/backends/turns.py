"""The ChatKit request types that start a model turn: what ``max_messages_per_minute`` counts.

One list for every kind that counts messages (gateway, agent). It is chatkit-python's
``StreamingReq`` union written out by its ``type`` values, because the gateway must not
import chatkit (seconds at startup) to read a request's type; tests/backends/test_turns.py
derives the set from ``chatkit.types`` and fails when a chatkit release adds one.
"""

from __future__ import annotations

TURN_TYPES = frozenset(
    {
        "threads.create",
        "threads.add_user_message",
        "threads.add_client_tool_output",
        "threads.add_structured_input",
        "threads.retry_after_item",
        "threads.custom_action",
    }
)


def starts_a_turn(request_type: str) -> bool:
    """Whether a request of this ``type`` runs the model (and so counts as a message)."""
    return request_type in TURN_TYPES
