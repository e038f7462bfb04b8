"""The agent the load tests host: its instructions name the caller and the thread, so the
fake Responses API records, for every turn, whose conversation the broker sent it — the
ground truth a misdelivered reply is checked against."""

from __future__ import annotations

from typing import Any

from agents import Agent, RunContextWrapper


def caller_of(ctx: RunContextWrapper[Any], agent: Agent[Any]) -> str:
    """``user=<user> thread=<thread id>``, from the run's chatkit context (the broker's
    ``Caller`` is its request context)."""
    chatkit = ctx.context
    return f"user={chatkit.request_context.user} thread={chatkit.thread.id}"


agent = Agent(name="Load", instructions=caller_of, model="gpt-4.1-mini")
