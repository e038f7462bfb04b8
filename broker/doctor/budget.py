"""The one time bound of a doctor run (``--timeout``), shared by every check.

A single budget rather than one timeout per call, so that a slow OpenAI cannot make the run
take six times ``--timeout``; it remembers which check ran out of it first, for the summary.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Budget:
    """Seconds left until the run's deadline, and where it ran out first."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._deadline = clock() + seconds
        self.exhausted_by: str | None = None

    @property
    def remaining(self) -> float:
        return max(0.0, self._deadline - self._clock())

    @property
    def exhausted(self) -> bool:
        return self.remaining < 0.05

    def limit(self, cap: float) -> tuple[float, bool]:
        """How long the next call may take, and whether the budget (not ``cap``) decides it."""
        remaining = self.remaining
        return min(cap, remaining), remaining <= cap

    def ran_out(self, where: str) -> str:
        """Record that ``where`` ran out of time (the first such place is kept); say so."""
        self.exhausted_by = self.exhausted_by or where
        return f"timed out: the --timeout budget of {self.seconds:g} s ran out during {where}"

    def skipped(self) -> str:
        where = self.exhausted_by or "an earlier check"
        return f"skipped: no time left (the --timeout budget ran out during {where})"
