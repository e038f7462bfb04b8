"""What a model's tokens cost: a dated default table, overridable per workflow.

Prices are US dollars per million tokens, as OpenAI's pricing page lists them (input, cached
input, output; reasoning tokens are billed as output). Usage is kept in tokens; cost is
derived, so a corrected price changes reports and budgets from then on, not the record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["DEFAULT_PRICES", "PRICES_AS_OF", "Price", "cost_usd", "price_for"]

#: When the defaults below were copied from OpenAI's pricing page.
PRICES_AS_OF = "2026-11-01"


@dataclass(frozen=True)
class Price:
    """Dollars per million tokens."""

    input: float
    cached_input: float
    output: float


DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4.1": Price(2.00, 0.50, 8.00),
    "gpt-4.1-mini": Price(0.40, 0.10, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.025, 0.40),
    "gpt-4o": Price(2.50, 1.25, 10.00),
    "gpt-4o-mini": Price(0.15, 0.075, 0.60),
    "gpt-5": Price(1.25, 0.125, 10.00),
    "gpt-5-mini": Price(0.25, 0.025, 2.00),
    "gpt-5-nano": Price(0.05, 0.005, 0.40),
    "o3": Price(2.00, 0.50, 8.00),
    "o4-mini": Price(1.10, 0.275, 4.40),
}


def price_for(model: str, overrides: Mapping[str, Price] | None = None) -> Price | None:
    """The price of ``model``: an override, else the default, also for a dated snapshot
    (``gpt-4.1-2025-04-14`` is priced as ``gpt-4.1``); None when unknown."""
    tables = [overrides or {}, DEFAULT_PRICES]
    for table in tables:
        if model in table:
            return table[model]
    for table in tables:  # the longest known name the snapshot starts with
        base = max((name for name in table if model.startswith(name + "-")), key=len, default=None)
        if base is not None:
            return table[base]
    return None


def cost_usd(
    price: Price | None, input_tokens: int, cached_tokens: int, output_tokens: int
) -> float:
    """What one call cost (0 for a model with no known price: counted in tokens only)."""
    if price is None:
        return 0.0
    uncached = max(0, input_tokens - cached_tokens)
    return (
        uncached * price.input + cached_tokens * price.cached_input + output_tokens * price.output
    ) / 1_000_000
