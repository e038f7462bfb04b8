"""``python -m examples.chatkit_server --port 8001 --broker http://127.0.0.1:8000``."""

from __future__ import annotations

import argparse
import logging
import os
import warnings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m examples.chatkit_server",
        description="A ChatKit server that trusts only the broker's signed identity.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument(
        "--broker",
        default="http://127.0.0.1:8000",
        help="the broker's URL; its keys are read from <broker>/.well-known/jwks.json",
    )
    parser.add_argument(
        "--audience",
        default="example",
        help="the workflow's audience (its `audience`, else its name); default: example",
    )
    parser.add_argument(
        "--issuer",
        default=os.environ.get("BROKER_PUBLIC_URL") or "chatkit-broker",
        help="the broker's BROKER_PUBLIC_URL (default: chatkit-broker)",
    )
    parser.add_argument(
        "--secret-env",
        metavar="NAME",
        help='for assertion = "hs256": the variable holding the shared secret',
    )
    parser.add_argument("--delay", type=float, default=0.25, help="seconds between deltas")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    logging.getLogger("chatkit").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # chatkit.widgets at import
        import uvicorn

        from .app import Options, create_app

    secret = os.environ.get(args.secret_env) if args.secret_env else None
    if args.secret_env and not secret:
        parser.error(f"{args.secret_env} is not set")
    options = Options(
        broker=args.broker,
        audience=args.audience,
        issuer=args.issuer,
        secret=secret,
        delay=args.delay,
    )
    where = "a shared secret" if secret else f"{args.broker.rstrip('/')}/.well-known/jwks.json"
    logging.getLogger("example.chatkit").info(
        "verifying assertions with %s, audience %r, issuer %r",
        where,
        options.audience,
        options.issuer,
    )
    uvicorn.run(create_app(options), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
