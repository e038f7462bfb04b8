"""ChatKit request bodies as a client sends them, written once: a user message's input and
the ``threads.create`` request that starts a thread with it."""

from __future__ import annotations

from typing import Any


def user_input(text: str) -> dict[str, Any]:
    """A user message's ``input``: one text part, no attachments, default inference options."""
    return {
        "content": [{"type": "input_text", "text": text}],
        "attachments": [],
        "inference_options": {},
    }


def create(text: str) -> dict[str, Any]:
    """``threads.create`` with a first user message of ``text``."""
    return {"type": "threads.create", "params": {"input": user_input(text)}}
