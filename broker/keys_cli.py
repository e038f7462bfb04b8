"""``chatkit-broker keys create|list|revoke`` and ``webhooks list|redeliver``: the service keys
and webhook deliveries in the thread database (``BROKER_DATABASE_URL``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from .service_keys import ServiceKeys, parse_rate


def add_parsers(sub: Any) -> None:
    keys = sub.add_parser("keys", help="service keys for back ends calling the runs API")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--name", required=True, help="the key's name (shown in logs)")
    create.add_argument(
        "--workflows", required=True, help="comma-separated workflow names it may run"
    )
    create.add_argument(
        "--act-for-users",
        action="store_true",
        help='the key may name the user in the body ("user": "…")',
    )
    create.add_argument("--rate", help="a limit for the key, e.g. 60/minute")
    create.set_defaults(func=cmd_keys_create)
    listing = keys_sub.add_parser("list", help="name, workflows, created, last used")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_keys_list)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by name")
    revoke.add_argument("name")
    revoke.set_defaults(func=cmd_keys_revoke)

    hooks = sub.add_parser("webhooks", help="background runs' webhook deliveries")
    hooks_sub = hooks.add_subparsers(dest="webhooks_command", required=True)
    hooks_list = hooks_sub.add_parser("list", help="recent deliveries, newest first")
    hooks_list.add_argument("--run", help="only this run's deliveries")
    hooks_list.add_argument("--limit", type=int, default=50)
    hooks_list.set_defaults(func=cmd_webhooks_list)
    redeliver = hooks_sub.add_parser("redeliver", help="send a delivery again (by its msg_ id)")
    redeliver.add_argument("delivery")
    redeliver.set_defaults(func=cmd_webhooks_redeliver)


def _with_store(work: Callable[[Any], Awaitable[int]]) -> int:
    """Run ``work(store)`` on the configured thread database; 2 for a configuration problem."""
    from .backends.agent.store import SchemaTooNew, SQLStore
    from .config import load_settings, read_environment
    from .errors import StoreUnavailable
    from .settings import ConfigError

    env, _ = read_environment()
    try:
        settings = load_settings(env)
    except ConfigError as exc:
        print("chatkit-broker: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    if settings.agent is None:
        print("chatkit-broker: no agent workflows, so no thread database", file=sys.stderr)
        return 2

    from .backends.agent.options import MEMORY_URL

    if settings.agent.database_url == MEMORY_URL:
        print(
            "chatkit-broker: the thread database is in memory (BROKER_DATABASE_URL=memory, or "
            "mock mode without one): keys and deliveries would vanish; set BROKER_DATABASE_URL",
            file=sys.stderr,
        )
        return 2

    async def main() -> int:
        store = SQLStore(settings.agent.database_url)
        try:
            await store.start()
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except (StoreUnavailable, SchemaTooNew) as exc:
        print(f"chatkit-broker: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2


def cmd_keys_create(args: argparse.Namespace) -> int:
    workflows = [w.strip() for w in args.workflows.split(",") if w.strip()]
    if not workflows:
        print("chatkit-broker keys create: --workflows names none", file=sys.stderr)
        return 2
    try:
        rate = parse_rate(args.rate) if args.rate else None
    except ValueError as exc:
        print(f"chatkit-broker keys create: {exc}", file=sys.stderr)
        return 2

    async def work(store: Any) -> int:
        try:
            key = await ServiceKeys(store).create(
                args.name, workflows, act_for_users=args.act_for_users, rate_per_minute=rate
            )
        except ValueError as exc:
            print(f"chatkit-broker keys create: {exc}", file=sys.stderr)
            return 2
        print(key)
        print(
            f"(service key {args.name!r} for {', '.join(workflows)}: shown this once, "
            "stored only as a hash)",
            file=sys.stderr,
        )
        return 0

    return _with_store(work)


def cmd_keys_list(args: argparse.Namespace) -> int:
    async def work(store: Any) -> int:
        keys = [k.as_json() for k in await ServiceKeys(store).list()]
        if args.json:
            print(json.dumps(keys, indent=2))
            return 0
        for k in keys:
            flags = " act-for-users" if k["act_for_users"] else ""
            flags += f" rate={k['rate_per_minute']}/minute" if k["rate_per_minute"] else ""
            flags += " REVOKED" if k["revoked"] else ""
            print(
                f"{k['name']}\tworkflows={','.join(k['workflows'])}\tcreated={k['created_at']}"
                f"\tlast_used={k['last_used_at'] or 'never'}{flags}"
            )
        return 0

    return _with_store(work)


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    async def work(store: Any) -> int:
        if await ServiceKeys(store).revoke(args.name):
            print(f"revoked {args.name}")
            return 0
        print(f"chatkit-broker keys revoke: no live key named {args.name!r}", file=sys.stderr)
        return 1

    return _with_store(work)


def cmd_webhooks_list(args: argparse.Namespace) -> int:
    from .webhooks import Webhooks

    async def work(store: Any) -> int:
        for d in await Webhooks(store, {}).list(args.run, args.limit):
            print(
                f"{d['id']}\t{d['event']}\t{d['run']}\t{d['workflow']}\t{d['status']}"
                f"\tattempts={d['attempts']}\t{d['last_result'] or ''}"
            )
        return 0

    return _with_store(work)


def cmd_webhooks_redeliver(args: argparse.Namespace) -> int:
    from .webhooks import Webhooks

    async def work(store: Any) -> int:
        if await Webhooks(store, {}).redeliver(args.delivery):
            print(f"{args.delivery}: due again; a running broker sends it within seconds")
            return 0
        print(f"chatkit-broker webhooks redeliver: no delivery {args.delivery!r}", file=sys.stderr)
        return 1

    return _with_store(work)
