"""Prometheus metrics: what is counted, the per-request hook, ``GET /metrics``, and workers.

Each app owns a ``Metrics`` (its own ``CollectorRegistry``), so tests and benchmarks start
from zero. With several worker processes, ``serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a
fresh directory before the workers start; every process then writes its values to files there
and ``/metrics`` sums them, whichever worker answers the scrape.

The per-request cost is one dict lookup and one increment: labelled children are cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope

from .errors import BrokerError

log = logging.getLogger("broker.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UPSTREAM_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The broker's metrics. Names and labels are documented in docs/operating/metrics.md."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "broker_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.mints = Counter(
            "broker_session_mints",
            "Mint requests (POST /api/chatkit/session) by workflow and outcome: ok or the error code.",
            ["workflow", "outcome"],
            registry=r,
        )
        self.upstream = Histogram(
            "broker_upstream_request_seconds",
            "Latency of each call to the OpenAI sessions API (each attempt), by operation.",
            ["op"],
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.rate_limited = Counter(
            "broker_rate_limited",
            "Requests refused with 429, by limit: user (mints) or address.",
            ["limit"],
            registry=r,
        )
        self.rate_limit_fallbacks = Counter(
            "broker_rate_limit_fallbacks",
            "Rate-limit checks counted per process because Redis was unavailable, by limit.",
            ["limit"],
            registry=r,
        )
        self.jwks_fetches = Counter(
            "broker_jwks_fetches",
            "JWKS key-set fetches by result: ok or error.",
            ["result"],
            registry=r,
        )
        self.redis_errors = Counter(
            "broker_redis_errors",
            "Redis calls that failed or timed out, by operation: ratelimit, registry, ping.",
            ["op"],
            registry=r,
        )
        self.registry_evictions = Counter(
            "broker_registry_evictions",
            "Sessions dropped from the in-memory session registry because it was full (oldest "
            "first); they can no longer be cancelled early and simply expire.",
            registry=r,
        )
        self.tokens = Counter(
            "broker_agent_tokens",
            "Tokens agent workflows used, by workflow, model and kind: input, cached_input, "
            "output, reasoning (from each model call's usage).",
            ["workflow", "model", "kind"],
            registry=r,
        )
        self.cost = Counter(
            "broker_agent_cost_usd",
            "What agent workflows' model calls cost in US dollars (price table), by workflow "
            "and model.",
            ["workflow", "model"],
            registry=r,
        )
        self.unknown_usage = Counter(
            "broker_agent_calls_without_usage",
            "Model calls that reported no usage (recorded as unknown), by workflow and model.",
            ["workflow", "model"],
            registry=r,
        )
        self.budget_refusals = Counter(
            "broker_budget_refusals",
            "Runs or model calls refused because a budget was spent, by budget name.",
            ["budget"],
            registry=r,
        )
        self.budget_fallbacks = Counter(
            "broker_budget_fallbacks",
            "Budget checks counted per process because Redis was unavailable.",
            registry=r,
        )
        self._children: dict[tuple[Any, ...], Any] = {}
        self._request_children: dict[tuple[str, str, int], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # --- hooks --------------------------------------------------------------------------

    def request(self, route: str, method: str, status: int) -> None:
        key = (route, method, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(route, method, str(status))
        child.inc()

    def mint(self, workflow: str, outcome: str) -> None:
        self._child(self.mints, workflow, outcome).inc()

    def observe_upstream(self, op: str, seconds: float) -> None:
        self._child(self.upstream, op).observe(seconds)

    def limited(self, limit: str) -> None:
        self._child(self.rate_limited, limit).inc()

    def rate_limit_fallback(self, limit: str) -> None:
        self._child(self.rate_limit_fallbacks, limit).inc()

    def jwks_fetch(self, result: str) -> None:
        self._child(self.jwks_fetches, result).inc()

    def redis_error(self, op: str) -> None:
        self._child(self.redis_errors, op).inc()

    def usage(self, workflow: str, model: str, tokens: dict[str, int], cost: float) -> None:
        for kind, count in tokens.items():
            if count:
                self._child(self.tokens, workflow, model, kind).inc(count)
        if cost:
            self._child(self.cost, workflow, model).inc(cost)

    def usage_unknown(self, workflow: str, model: str) -> None:
        self._child(self.unknown_usage, workflow, model).inc()

    def budget_refused(self, budget: str) -> None:
        self._child(self.budget_refusals, budget).inc()

    def budget_fallback(self) -> None:
        self.budget_fallbacks.inc()

    def registry_eviction(self) -> None:
        self.registry_evictions.inc()

    # --- exposition ---------------------------------------------------------------------

    def render(self) -> bytes:
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.broker.metrics
    if metrics.multiprocess:  # reads every worker's files: keep that off the event loop
        body = await asyncio.to_thread(metrics.render)
    else:
        body = metrics.render()
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def count_mints(
    metrics: Metrics, answer: Callable[[Scope, Receive], Awaitable[bytes]]
) -> Callable[[Scope, Receive], Awaitable[bytes]]:
    """Wrap the mint (a plain endpoint, ``edge.Plain``): one ``broker_session_mints`` count per
    request, with its outcome."""

    async def counted(scope: Scope, receive: Receive) -> bytes:
        outcome = "internal_error"
        try:
            body = await answer(scope, receive)
            outcome = "ok"
            return body
        except BrokerError as exc:
            outcome = exc.code
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            metrics.mint(scope["state"].get("workflow") or "-", outcome)

    return counted


@contextlib.contextmanager
def multiprocess_dir(workers: int) -> Iterator[str | None]:
    """Set up ``PROMETHEUS_MULTIPROC_DIR`` before workers start; remove ours at exit.

    An operator's own directory is reused (its stale ``*.db`` files are wiped, as the
    Prometheus client requires between runs); otherwise, with more than one worker, a
    fresh temporary one is made and removed when ``serve`` exits.
    """
    existing = os.environ.get(MULTIPROC_ENV)
    if existing:
        Path(existing).mkdir(parents=True, exist_ok=True)
        for stale in Path(existing).glob("*.db"):
            stale.unlink(missing_ok=True)
        yield existing
        return
    if workers <= 1:
        yield None
        return
    path = tempfile.mkdtemp(prefix="chatkit-broker-metrics-")
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)
