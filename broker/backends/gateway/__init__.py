"""Gateway workflows: the broker in front of the user's own ChatKit server.

``backend`` is the ``Backend`` the seam mounts (limits, assertion, relay, observability);
``proxy`` relays requests and streams; ``headers`` decides which request headers pass;
``metrics`` and ``checks`` (for ``doctor``) observe it; ``broker.assertion`` signs who is
calling.
"""
