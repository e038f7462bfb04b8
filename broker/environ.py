"""The broker's configuration, put into the process environment for the code it imports.

An Agent Builder export builds its own ``AsyncOpenAI()`` at import time (every export with
guardrails or file search does), and the Agents SDK's default client reads the environment
too: neither sees the mapping the broker's settings are read from. So before any agent module
is imported, the values of ``.env`` join ``os.environ`` (what the real environment already has
wins), and the key and base URL the broker itself uses become ``OPENAI_API_KEY`` and
``OPENAI_BASE_URL``, so an export calls the same project through the same endpoint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

from .settings import api_key_in_effect

__all__ = ["export_environment"]

# the variable the broker reads -> the one openai-python reads
_OPENAI_NAMES = {"OPENAI_ORGANIZATION": "OPENAI_ORG_ID", "OPENAI_PROJECT": "OPENAI_PROJECT_ID"}


def export_environment(
    env: Mapping[str, str], environ: MutableMapping[str, str] | None = None
) -> None:
    """Put ``env`` (the real environment over ``.env``) into ``environ`` (``os.environ``).

    Variables already set keep their value, except ``OPENAI_API_KEY``: it becomes the key
    the broker uses (``CHATKIT_OPENAI_API_KEY`` wins over a shell ``OPENAI_API_KEY``, as it
    does for the broker), so an export never calls OpenAI with another project's key.
    """
    target = os.environ if environ is None else environ
    for name, value in env.items():
        target.setdefault(name, value)
    _, key = api_key_in_effect(env)
    if key:
        target["OPENAI_API_KEY"] = key
    base_url = (env.get("OPENAI_BASE_URL") or "").strip()
    if base_url:
        target["OPENAI_BASE_URL"] = base_url.rstrip("/")
    for ours, theirs in _OPENAI_NAMES.items():
        value = (env.get(ours) or "").strip()
        if value:
            target.setdefault(theirs, value)
