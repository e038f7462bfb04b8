"""``broker.doctor.budget``: one deadline for the whole run, and where it ran out first."""

from __future__ import annotations

from broker.doctor import Budget


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_caps_each_call_and_remembers_where_it_ran_out_first():
    clock = Clock()
    budget = Budget(3.0, clock)
    assert budget.limit(10.0) == (3.0, True)  # the budget decides
    assert budget.limit(1.0) == (1.0, False)  # the call's own cap decides
    clock.now += 2.98
    assert budget.exhausted
    assert budget.skipped() == (
        "skipped: no time left (the --timeout budget ran out during an earlier check)"
    )
    assert budget.ran_out("check 3 (GET /models)") == (
        "timed out: the --timeout budget of 3 s ran out during check 3 (GET /models)"
    )
    budget.ran_out("check 5 (JWKS)")
    assert budget.exhausted_by == "check 3 (GET /models)"
    assert budget.skipped().endswith("ran out during check 3 (GET /models))")
    clock.now += 10
    assert budget.remaining == 0.0
