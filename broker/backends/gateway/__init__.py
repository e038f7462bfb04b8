"""Gateway workflows: the broker in front of the user's own ChatKit server.

``proxy`` relays requests and streams; ``headers`` decides which request headers pass;
``broker.assertion`` signs who is calling.
"""
