"""An example agent workflow: an Agents SDK ``Agent`` the broker hosts as a ChatKit server.

Point a workflow at it with one line in the broker's workflows file::

    [workflows.support]
    agent = "examples.agent.support_agent:agent"

The broker keeps the conversation (SQLite or PostgreSQL, ``BROKER_DATABASE_URL``) and sends
the thread's history with every message, so the agent is multi-turn without any code here.
"""

from __future__ import annotations

from agents import Agent, function_tool


@function_tool
def opening_hours(day: str) -> str:
    """The support desk's opening hours on a given day of the week."""
    closed = day.strip().lower() in {"saturday", "sunday"}
    return f"Closed on {day}." if closed else f"Open 09:00-17:00 UTC on {day}."


agent = Agent(
    name="Support",
    instructions=(
        "You are the support assistant of Example Inc. Answer briefly and kindly. "
        "Use the opening_hours tool when someone asks when the desk is open."
    ),
    model="gpt-4.1-mini",
    tools=[opening_hours],
)
