"""A minimal, real chatkit-python server that trusts only the broker's signed identity.

Run it beside the broker (see docs/gateway.md, "Try it")::

    python -m examples.chatkit_server --port 8001 --broker http://127.0.0.1:8000
"""
