"""The gateway's Prometheus metrics, registered on the broker's own registry.

Proxied requests by workflow and outcome, streams open right now, bytes relayed to browsers
and the backend's time to first byte: what an operator needs to tell a slow model from a
slow network, and Stop (``client_closed``) from a backend that broke (``backend_reset``).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .proxy import Relay

FIRST_BYTE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    """Labelled children are cached, so a proxied request costs a few dict lookups."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "broker_gateway_requests",
            "Requests proxied to gateway workflows, by workflow and outcome (completed, "
            "client_closed, backend_reset, timeout, backend_garbage, or the error code).",
            ["workflow", "outcome"],
            registry=registry,
        )
        self.open_streams = Gauge(
            "broker_gateway_open_streams",
            "Event streams being relayed right now, by workflow.",
            ["workflow"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.bytes = Counter(
            "broker_gateway_relayed_bytes",
            "Response bytes relayed from gateway backends to browsers, by workflow.",
            ["workflow"],
            registry=registry,
        )
        self.first_byte = Histogram(
            "broker_gateway_first_byte_seconds",
            "Time from sending a request to a gateway backend to its answer's head, by workflow.",
            ["workflow"],
            buckets=FIRST_BYTE_BUCKETS,
            registry=registry,
        )
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def stream_opened(self, workflow: str) -> None:
        self._child(self.open_streams, workflow).inc()

    def stream_closed(self, workflow: str) -> None:
        self._child(self.open_streams, workflow).dec()

    def finished(self, workflow: str, relay: Relay) -> None:
        self._child(self.requests, workflow, str(relay.outcome)).inc()
        if relay.bytes_out:
            self._child(self.bytes, workflow).inc(relay.bytes_out)
        if relay.ttfb is not None:
            self._child(self.first_byte, workflow).observe(relay.ttfb)
