"""Agent Builder exports of this project's own writing, in the exact shape the exporter
("Code → Agents SDK → Python") produces, one per node kind. Read by the tests as files, the
way a team drops its export next to the broker; never imported as a package."""
