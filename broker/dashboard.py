"""The Grafana dashboard for the broker's Prometheus metrics, built with grafana-foundation-sdk.

``python -m broker.dashboard`` writes ``docs/operating/grafana-dashboard.json``. The typed
builder, not hand-written JSON, is what keeps the file importable: a panel or query of the wrong
shape fails here, in Python, rather than in someone's Grafana. The queries name only metrics the
broker exports; tests/test_dashboard.py checks that against a running app's ``/metrics``.

The SDK is in the ``docs`` extra (``pip install -e '.[docs]'``), not a runtime dependency.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "operating" / "grafana-dashboard.json"
UID = "chatkit-broker"
RATE = "[$__rate_interval]"


def _ds() -> Any:
    from grafana_foundation_sdk.models.dashboard import DataSourceRef

    return DataSourceRef(type_val="prometheus", uid="${datasource}")


def _query(expr: str, legend: str, ref: str = "A") -> Any:
    from grafana_foundation_sdk.builders import prometheus

    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(_ds())


def _series(title: str, description: str, unit: str, *queries: tuple[str, str]) -> Any:
    from grafana_foundation_sdk.builders import timeseries

    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(_ds())
        .height(8)
        .span(12)
    )
    for i, (expr, legend) in enumerate(queries):
        panel = panel.with_target(_query(expr, legend, chr(ord("A") + i)))
    return panel


def _stat(title: str, description: str, unit: str, expr: str) -> Any:
    from grafana_foundation_sdk.builders import common, stat
    from grafana_foundation_sdk.models.common import BigValueGraphMode

    return (
        stat.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(_ds())
        .graph_mode(BigValueGraphMode.AREA)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .height(4)
        .span(6)
        .with_target(_query(expr, title))
    )


def _m(name: str, labels: str = "") -> str:
    """A metric selector restricted to the chosen jobs (plus any extra label matchers)."""
    inner = 'job=~"$job"' + (f",{labels}" if labels else "")
    return f"{name}{{{inner}}}"


def build() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (a dict, ready for ``json.dumps``)."""
    from grafana_foundation_sdk.builders import dashboard
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    failed_mints = _m("broker_session_mints_total", 'outcome!~"ok|rate_limited"')
    server_errors = _m("broker_http_requests_total", 'status=~"5.."')
    board = (
        dashboard.Dashboard("chatkit-broker")
        .uid(UID)
        .description("Mints, requests, upstream latency, limits, Redis and gateway streams.")
        .tags(["chatkit-broker"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
        )
        .with_variable(
            dashboard.QueryVariable("job")
            .label("Job")
            .datasource(_ds())
            .query("label_values(broker_http_requests_total, job)")
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
        .with_row(dashboard.Row("Overview"))
        .with_panel(
            _stat(
                "Requests per second",
                "Every HTTP request answered, all routes.",
                "reqps",
                f"sum(rate({_m('broker_http_requests_total')}{RATE}))",
            )
        )
        .with_panel(
            _stat(
                "5xx share",
                "Share of answers with a 5xx status.",
                "percentunit",
                f"sum(rate({server_errors}{RATE})) / "
                f"sum(rate({_m('broker_http_requests_total')}{RATE}))",
            )
        )
        .with_panel(
            _stat(
                "Failed mints per second",
                "Mints that ended in an upstream or configuration error (alert on this).",
                "reqps",
                f"sum(rate({failed_mints}{RATE}))",
            )
        )
        .with_panel(
            _stat(
                "Open gateway streams",
                "Event streams being relayed to browsers right now.",
                "short",
                f"sum({_m('broker_gateway_open_streams')})",
            )
        )
        .with_row(dashboard.Row("Requests and mints"))
        .with_panel(
            _series(
                "Requests by status",
                "HTTP requests answered, by status code.",
                "reqps",
                (
                    f"sum by (status) (rate({_m('broker_http_requests_total')}{RATE}))",
                    "{{status}}",
                ),
            )
        )
        .with_panel(
            _series(
                "Requests by route",
                "By route template (`unmatched` for 404s), never the raw path.",
                "reqps",
                (
                    f"sum by (route) (rate({_m('broker_http_requests_total')}{RATE}))",
                    "{{route}}",
                ),
            )
        )
        .with_panel(
            _series(
                "Mints by outcome",
                "POST /api/chatkit/session by outcome: ok or the error code.",
                "reqps",
                (
                    f"sum by (outcome) (rate({_m('broker_session_mints_total')}{RATE}))",
                    "{{outcome}}",
                ),
            )
        )
        .with_panel(
            _series(
                "Mints by workflow",
                "Mint requests per allowlisted workflow (`-` before the workflow was known).",
                "reqps",
                (
                    f"sum by (workflow) (rate({_m('broker_session_mints_total')}{RATE}))",
                    "{{workflow}}",
                ),
            )
        )
        .with_row(dashboard.Row("OpenAI"))
        .with_panel(
            _series(
                "Sessions API latency",
                "Each call to OpenAI's sessions API (each attempt), by quantile and operation.",
                "s",
                *(
                    (
                        f"histogram_quantile({q}, sum by (le, op) "
                        f"(rate({_m('broker_upstream_request_seconds_bucket')}{RATE})))",
                        f"p{int(q * 100)} {{{{op}}}}",
                    )
                    for q in (0.5, 0.95, 0.99)
                ),
            )
        )
        .with_panel(
            _series(
                "JWKS fetches",
                "Key-set fetches of the sign-in JWKS, by result (JWKS mode only).",
                "ops",
                (
                    f"sum by (result) (rate({_m('broker_jwks_fetches_total')}{RATE}))",
                    "{{result}}",
                ),
            )
        )
        .with_row(dashboard.Row("Limits and stores"))
        .with_panel(
            _series(
                "Rate-limited requests",
                "429s sent, by limit (user mints, or per address).",
                "reqps",
                (
                    f"sum by (limit) (rate({_m('broker_rate_limited_total')}{RATE}))",
                    "{{limit}}",
                ),
            )
        )
        .with_panel(
            _series(
                "Redis errors and fallbacks",
                "Redis calls that failed, and limit checks counted per process meanwhile.",
                "ops",
                (
                    f"sum by (op) (rate({_m('broker_redis_errors_total')}{RATE}))",
                    "error {{op}}",
                ),
                (
                    f"sum by (limit) (rate({_m('broker_rate_limit_fallbacks_total')}{RATE}))",
                    "fallback {{limit}}",
                ),
            )
        )
        .with_panel(
            _series(
                "Session registry evictions",
                "Sessions dropped from the in-memory registry because it was full (use Redis).",
                "ops",
                (f"sum(rate({_m('broker_registry_evictions_total')}{RATE}))", "evicted"),
            )
        )
        .with_row(dashboard.Row("Gateway workflows"))
        .with_panel(
            _series(
                "Proxied requests by outcome",
                "completed, client_closed (Stop), backend_reset, timeout, … per second.",
                "reqps",
                (
                    f"sum by (outcome) (rate({_m('broker_gateway_requests_total')}{RATE}))",
                    "{{outcome}}",
                ),
            )
        )
        .with_panel(
            _series(
                "Backend time to first byte",
                "From sending a request to a gateway backend to its answer's head.",
                "s",
                *(
                    (
                        f"histogram_quantile({q}, sum by (le, workflow) "
                        f"(rate({_m('broker_gateway_first_byte_seconds_bucket')}{RATE})))",
                        f"p{int(q * 100)} {{{{workflow}}}}",
                    )
                    for q in (0.5, 0.95)
                ),
            )
        )
        .with_panel(
            _series(
                "Open streams",
                "Event streams being relayed right now, by workflow.",
                "short",
                (f"sum by (workflow) ({_m('broker_gateway_open_streams')})", "{{workflow}}"),
            )
        )
        .with_panel(
            _series(
                "Relayed bytes",
                "Response bytes relayed from gateway backends to browsers.",
                "Bps",
                (
                    f"sum by (workflow) (rate({_m('broker_gateway_relayed_bytes_total')}{RATE}))",
                    "{{workflow}}",
                ),
            )
        )
        .with_row(dashboard.Row("Agent usage and budgets"))
        .with_panel(
            _series(
                "Tokens by workflow and model",
                "Tokens the agent workflows' model calls used, by kind (input, cached input, "
                "output, reasoning).",
                "short",
                (
                    f"sum by (workflow, model, kind) "
                    f"(rate({_m('broker_agent_tokens_total')}{RATE}))",
                    "{{workflow}} {{model}} {{kind}}",
                ),
            )
        )
        .with_panel(
            _series(
                "Cost by workflow and model",
                "USD per second from the price table (tokens x price per model).",
                "currencyUSD",
                (
                    f"sum by (workflow, model) (rate({_m('broker_agent_cost_usd_total')}{RATE}))",
                    "{{workflow}} {{model}}",
                ),
            )
        )
        .with_panel(
            _series(
                "Budget refusals, calls without usage, local counting",
                "Messages refused for a spent budget; model calls that reported no usage; "
                "budget checks counted in-process because Redis was down.",
                "ops",
                (f"sum(rate({_m('broker_budget_refusals_total')}{RATE}))", "refused"),
                (
                    f"sum(rate({_m('broker_agent_calls_without_usage_total')}{RATE}))",
                    "no usage",
                ),
                (f"sum(rate({_m('broker_budget_fallbacks_total')}{RATE}))", "Redis down"),
            )
        )
    )
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m broker.dashboard", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.is_file() else ""
        if current != text:
            print(f"stale: {OUTPUT} (run python -m broker.dashboard)", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
