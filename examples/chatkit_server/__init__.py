"""A minimal, real chatkit-python server that trusts only the broker's signed identity.

Run it beside the broker (see the README's "Gateway workflows")::

    python -m examples.chatkit_server --port 8001 --broker http://127.0.0.1:8000
"""
