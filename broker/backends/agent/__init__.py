"""Agent workflows: the broker hosts an Agents SDK agent (or an Agent Builder export) as a
ChatKit server, with its threads in SQLite or PostgreSQL."""
