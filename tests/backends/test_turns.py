"""The list of turn-starting request types is chatkit-python's own ``StreamingReq`` union."""

from __future__ import annotations

import typing

from chatkit import types

from broker.backends.turns import TURN_TYPES


def test_the_turn_types_are_chatkits_streaming_request_types() -> None:
    derived = {model.model_fields["type"].default for model in typing.get_args(types.StreamingReq)}
    assert "threads.add_client_tool_output" in derived  # the union is what we think it is
    assert derived == TURN_TYPES


def test_no_non_streaming_request_type_counts() -> None:
    others = {
        model.model_fields["type"].default for model in typing.get_args(types.NonStreamingReq)
    }
    assert "threads.list" in others
    assert not TURN_TYPES & others
