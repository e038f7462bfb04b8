"""``chatkit-broker usage``: what agent workflows used, read from the thread database.

By day, workflow and model, plus the top users, over the last ``--days`` UTC days; as text,
``--json`` or ``--csv``. It reads ``BROKER_DATABASE_URL`` (the environment and ``.env``) and
nothing else, so it runs beside a live broker without loading any agent.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from ...prices import DEFAULT_PRICES, PRICES_AS_OF

__all__ = ["add_parser", "report"]


def add_parser(sub: Any) -> None:
    """The ``usage`` subcommand (one line in cli.py registers it)."""
    p = sub.add_parser("usage", help="report token usage and cost of agent workflows")
    p.add_argument("--days", type=int, default=30, help="UTC days back, today included (30)")
    p.add_argument("--top", type=int, default=10, help="how many top users to list (10)")
    p.add_argument("--workflow", help="only this workflow")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the report as JSON")
    fmt.add_argument("--csv", action="store_true", help="print one CSV row per day/workflow/model")
    fmt.add_argument("--prices", action="store_true", help="print the shipped price table")
    p.add_argument("--database-url", help="default: BROKER_DATABASE_URL")
    p.set_defaults(func=main)


async def report(url: str, days: int, top: int, workflow: str | None = None) -> dict[str, Any]:
    """The report's data: rows by day, workflow and model; totals; the top users."""
    import sqlalchemy as sa  # here, not at import: cli.py builds its parser on every command

    from .store import SQLStore, usage
    from .usage_api import _sums, as_totals

    since = (datetime.now(UTC) - timedelta(days=days - 1)).replace(
        tzinfo=None, hour=0, minute=0, second=0, microsecond=0
    )
    store = SQLStore(url)
    try:
        await store.start()
        where = [usage.c.at >= since]
        if workflow:
            where.append(usage.c.workflow == workflow)
        day = sa.func.substr(sa.cast(usage.c.at, sa.String), 1, 10).label("day")
        async with store._connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(day, usage.c.workflow, usage.c.model, *_sums())
                    .where(*where)
                    .group_by(day, usage.c.workflow, usage.c.model)
                    .order_by(day, usage.c.workflow, usage.c.model)
                )
            ).all()
            total = (await conn.execute(sa.select(*_sums()).where(*where))).one()
            users = (
                await conn.execute(
                    sa.select(usage.c.user_id, *_sums())
                    .where(*where)
                    .group_by(usage.c.user_id)
                    .order_by(sa.func.sum(usage.c.total_tokens).desc(), usage.c.user_id)
                    .limit(top)
                )
            ).all()
    finally:
        await store.close()
    return {
        "since": since.strftime("%Y-%m-%d"),
        "total": as_totals(total),
        "rows": [
            {"day": r.day, "workflow": r.workflow, "model": r.model, **as_totals(r)} for r in rows
        ],
        "top_users": [{"user": r.user_id, **as_totals(r)} for r in users],
    }


def _text(data: dict[str, Any]) -> str:
    t = data["total"]
    lines = [
        f"Usage since {data['since']} (UTC): {t['total_tokens']} tokens in {t['calls']} model "
        f"calls ({t['unknown_calls']} without usage), ${t['cost_usd']:.4f}",
        "",
        f"{'day':<11}{'workflow':<20}{'model':<24}{'calls':>7}{'input':>11}{'cached':>9}"
        f"{'output':>10}{'reasoning':>11}{'total':>11}{'USD':>11}",
    ]
    for r in data["rows"]:
        lines.append(
            f"{r['day']:<11}{r['workflow'][:19]:<20}{r['model'][:23]:<24}{r['calls']:>7}"
            f"{r['input_tokens']:>11}{r['cached_tokens']:>9}{r['output_tokens']:>10}"
            f"{r['reasoning_tokens']:>11}{r['total_tokens']:>11}{r['cost_usd']:>11.4f}"
        )
    lines += ["", "Top users:"]
    for u in data["top_users"]:
        lines.append(f"  {u['user'][:40]:<42}{u['total_tokens']:>11} tokens  ${u['cost_usd']:.4f}")
    return "\n".join(lines)


def _csv(data: dict[str, Any]) -> str:
    out = io.StringIO()
    fields = ["day", "workflow", "model", "calls", "unknown_calls", "input_tokens"]
    fields += ["cached_tokens", "output_tokens", "reasoning_tokens", "total_tokens", "cost_usd"]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in data["rows"]:
        writer.writerow({k: r[k] for k in fields})
    return out.getvalue().rstrip("\n")


def main(args: argparse.Namespace) -> int:
    if args.prices:
        print(f"Default prices (USD per million tokens, as of {PRICES_AS_OF}):")
        for name, p in DEFAULT_PRICES.items():
            print(
                f"  {name:<16} input {p.input:<7g} cached {p.cached_input:<7g} output {p.output:g}"
            )
        return 0
    if args.days < 1 or args.top < 0:
        print("chatkit-broker usage: --days must be >= 1 and --top >= 0", file=sys.stderr)
        return 2
    from ...config import read_environment
    from ...errors import StoreUnavailable
    from .store import resolve_database_url

    raw = args.database_url
    if raw is None:
        env, _ = read_environment()
        raw = env.get("BROKER_DATABASE_URL")
    try:
        url = resolve_database_url(raw)
        data = asyncio.run(report(url, args.days, args.top, args.workflow))
    except StoreUnavailable as exc:
        print(f"chatkit-broker usage: {exc.message}", file=sys.stderr)
        return 1
    except ValueError as exc:  # DatabaseURLError, SchemaTooNew
        print(f"chatkit-broker usage: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"chatkit-broker usage: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(data, indent=2) if args.json else _csv(data) if args.csv else _text(data))
    return 0
