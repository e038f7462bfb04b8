"""``chatkit-broker init``: a starter project in the current folder.

A first run should end in a working agent workflow with nothing to edit but the OpenAI key, so
``init`` writes what a person would otherwise assemble from the docs: a workflows file naming an
example agent, the agent's module, and a ``.env`` whose secrets are freshly generated (a copied
example secret would be the same on every machine that copied it). It never overwrites: if any
file it would write exists, it writes none and says which.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

WORKFLOWS_FILE = "workflows.toml"
AGENT_FILE = "workflows/assistant.py"
ASSERTION_KEY_FILE = "assertion-key.pem"
ENV_FILE = ".env"
HELP = "write a starter project here: workflows file, example agent, .env with fresh secrets"

WORKFLOWS_TOML = f"""\
# The broker's workflows: each [workflows.<name>] names one backend (docs/configuration.md).
# The browser asks for a workflow by its name; only the names listed here can be used.

[workflows.assistant]
agent = "{AGENT_FILE}:agent"   # an Agents SDK agent the broker hosts as a ChatKit server
label = "Assistant"

# Your own ChatKit server behind the broker (it receives a signed identity):
# [workflows.helpdesk]
# server = "http://127.0.0.1:8001/chatkit"
"""

AGENT_PY = '''\
"""The starter project's agent: an Agents SDK ``Agent`` the broker serves as a ChatKit server.

The broker keeps each user's threads (``BROKER_DATABASE_URL``, SQLite by default) and sends the
thread's history with every message, so this agent is multi-turn without any code of its own.
"""

from datetime import datetime, timezone

from agents import Agent, function_tool


@function_tool
def current_time() -> str:
    """The current date and time in UTC."""
    return datetime.now(timezone.utc).strftime("%A %Y-%m-%d %H:%M UTC")


agent = Agent(
    name="Assistant",
    instructions="You are a helpful assistant. Answer briefly. Use current_time for the date.",
    model="gpt-4.1-mini",
    tools=[current_time],
)
'''


def _env_text(jwt_secret: str, session_secret: str) -> str:
    return f"""\
# Written by `chatkit-broker init`. Secrets below are fresh: keep this file out of version control.

# Your OpenAI API key (the agent's model calls are made with it):
CHATKIT_OPENAI_API_KEY=

BROKER_WORKFLOWS_FILE={WORKFLOWS_FILE}

# Signs and verifies your users' sign-in tokens in development (`chatkit-broker token --sub me`).
# In production point BROKER_JWT_JWKS_URL at your identity provider's key set instead.
BROKER_JWT_SECRET={jwt_secret}

# Signs the session secrets (cks_...) the broker gives browsers for agent and gateway workflows.
BROKER_SESSION_SECRET={session_secret}

# Signs the identity the broker sends to gateway workflows (your own ChatKit servers).
BROKER_ASSERTION_KEY=@{ASSERTION_KEY_FILE}

# Threads of agent workflows:
BROKER_DATABASE_URL=sqlite:///./chatkit-broker.sqlite3
"""


def _assertion_key_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def starter_files() -> dict[str, str]:
    """Every file of the starter project, by path relative to the project folder."""
    return {
        WORKFLOWS_FILE: WORKFLOWS_TOML,
        AGENT_FILE: AGENT_PY,
        ENV_FILE: _env_text(secrets.token_urlsafe(48), secrets.token_urlsafe(48)),
        ASSERTION_KEY_FILE: _assertion_key_pem(),
    }


NEXT_STEPS = """\
Next:
  1. put your OpenAI API key in .env (CHATKIT_OPENAI_API_KEY=sk-...)
  2. chatkit-broker check                # validates, prints a summary without secrets
  3. chatkit-broker serve                # then open http://127.0.0.1:8000/
  4. chatkit-broker token --sub me       # a sign-in token to paste into the test page
"""


def init_project(folder: Path) -> int:
    """Write the starter project into ``folder``; 0 when written, 2 when a file is in the way."""
    files = starter_files()
    taken = [name for name in files if (folder / name).exists()]
    if taken:
        print(
            "chatkit-broker init: not overwriting "
            + ", ".join(taken)
            + f" in {folder}; run it in an empty folder (nothing was written)",
            file=sys.stderr,
        )
        return 2
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if name in (ENV_FILE, ASSERTION_KEY_FILE):
            path.chmod(0o600)  # secrets: readable by their owner only
        print(f"wrote {name}")
    print(NEXT_STEPS, end="")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    return init_project(Path.cwd())
