"""The docs site stays true to the code: its generated pages (CLI, HTTP API, error codes) and the
Grafana dashboard are what their builders produce now, and every query of the dashboard names a
metric a running broker exports."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import httpx
import pytest

from broker import dashboard, reference
from broker.app import create_app
from broker.cli import build_parser
from broker.config import load_settings

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_generated_reference_pages_are_current():
    assert reference.stale() == [], "run: python -m broker.reference"


def test_a_stale_reference_page_is_caught(tmp_path):
    copy = tmp_path / "docs"
    shutil.copytree(DOCS / "reference", copy / "reference")
    page = copy / "reference" / "errors.md"
    page.write_text(page.read_text().replace("`rate_limited`", "`slow_down`"))
    assert reference.stale(copy) == ["reference/errors.md"]


def test_cli_page_names_every_command_and_option():
    page = (DOCS / "reference" / "cli.md").read_text()
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, command in commands.items():
        assert f"## `{name}`" in page, name
        for action in command._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in page, (name, flag)


def test_errors_page_lists_every_code_of_the_tree():
    from broker.errors import error_classes

    page = (DOCS / "reference" / "errors.md").read_text()
    for cls in error_classes():
        assert f"| {cls.status} | `{cls.code}` |" in page, cls.__name__


def test_the_committed_dashboard_is_what_the_builder_makes():
    assert (DOCS / "operating" / "grafana-dashboard.json").read_text() == dashboard.render(), (
        "run: python -m broker.dashboard"
    )


def _queries(board: dict) -> list[str]:
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


async def _exported_series() -> tuple[set[str], set[str]]:
    """The sample names a broker with every kind of workflow exports, from its own /metrics
    (families with no sample yet still declare ``# TYPE``; their sample names follow the type)."""
    app = create_app(load_settings(dict(reference.REFERENCE_ENV)))
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
        text = (await c.get("/metrics")).text
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
    }
    families, series = set(), set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        if kind == "counter":
            name = name.removesuffix("_total")  # the text format may declare either spelling
        families.add(name)
        series.update(name + s for s in suffixes.get(kind, ("",)))
    return families, series


async def test_every_dashboard_query_names_an_exported_metric_and_every_metric_is_shown():
    board = dashboard.build()
    families, series = await _exported_series()
    assert "broker_gateway_requests" in families  # the gateway's metrics are on the registry
    shown = set()
    for expr in _queries(board):
        names = set(re.findall(r"\b(broker_[a-z_]+)\b", expr))
        assert names, expr
        unknown = names - series
        assert not unknown, f"{expr!r} names {sorted(unknown)}, not exported"
        shown |= names
    # ``*_created`` (a counter's start time, a family of its own when unlabelled) is no metric
    broker_families = {
        f for f in families if f.startswith("broker_") and not f.endswith("_created")
    }
    unshown = {f for f in broker_families if not any(s.startswith(f) for s in shown)}
    assert not unshown, f"metrics on no panel: {sorted(unshown)}"


def test_a_misspelt_metric_would_be_caught():
    """The check above is only as good as its parsing: a query with a typo must not pass."""
    board = dashboard.build()
    board["panels"][1]["targets"][0]["expr"] = "sum(rate(broker_http_request_total[5m]))"
    names = set(re.findall(r"\b(broker_[a-z_]+)\b", _queries(board)[0]))
    assert names == {"broker_http_request_total"}


def test_dashboard_json_is_grafana_shaped():
    board = json.loads((DOCS / "operating" / "grafana-dashboard.json").read_text())
    assert board["uid"] == "chatkit-broker" and board["schemaVersion"] >= 39
    ids = [p["gridPos"] for p in board["panels"]]
    assert all({"h", "w", "x", "y"} <= set(g) for g in ids)
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]


@pytest.mark.parametrize(
    "page", ["reference/cli.md", "reference/http-api.md", "reference/errors.md"]
)
def test_generated_pages_say_how_they_are_made(page):
    assert (DOCS / page).read_text().startswith("<!-- generated by `python -m broker.reference`")


def test_readme_links_to_files_that_exist():
    """The README points into docs/ (and examples/) for what moved there: no dead pointer."""
    readme = (DOCS.parent / "README.md").read_text()
    targets = re.findall(r"\]\((?!https?://|#|mailto:)([^)#\s]+)", readme)
    assert any(t.startswith("docs/") for t in targets)
    missing = [t for t in targets if not (DOCS.parent / t).exists()]
    assert missing == []


def _anchors(markdown: str) -> set[str]:
    """The ids the docs site (and GitHub, for these plain headings) gives a page's headings."""
    from markdown.extensions.toc import slugify

    text = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)  # no headings in code
    return {slugify(h.replace("`", ""), "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_readme_anchors_exist():
    """A section that moved into docs/ leaves no link to its old anchor behind, in the README or
    into a page (``docs/x.md#part``)."""
    root = DOCS.parent
    readme = (root / "README.md").read_text()
    links = re.findall(r"\]\((?!https?://|mailto:)([^)#\s]*)#([^)\s]+)\)", readme)
    dead = [
        f"{page}#{anchor}"
        for page, anchor in links
        if anchor not in _anchors((root / page).read_text() if page else readme)
    ]
    assert dead == []


def test_a_dead_anchor_would_be_caught():
    assert "gateway-workflows" in _anchors((DOCS / "gateway.md").read_text())
    assert "metrics" not in _anchors((DOCS / "gateway.md").read_text())
