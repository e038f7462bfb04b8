"""The front-end kit against a real ``chatkit-broker serve --mock`` process: mint → ``cks_``
secret → ``POST /chatkit/<name>`` through the kit's fetch, including renewal when the secret
expires and re-minting when the broker refuses a cancelled one. Runs in Chromium on the
broker's own origin, where the module is served at ``/chatkit-broker.js``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from ..support import BrokerProcess
from ..support.adversarial import broker_process
from ..support.browser import Tab

WORKFLOWS = """
[workflows.quick]
id = "wf_quick"
label = "Short-lived secrets"
expires_after = 2
"""

SCENARIO = """
async ({ mode }) => {
  const kit = await import("/chatkit-broker.js");
  const events = [];
  const api = await kit.createChatKitApi({
    workflow: "quick",
    refreshMarginMs: 500,
    onEvent: (e) => events.push({ type: e.type, reason: e.reason ?? null, status: e.status ?? null,
                                  url: e.url ?? null, sessionId: e.sessionId ?? null }),
  });
  const list = () => api.fetch(api.url, { method: "POST", headers: { "Content-Type": "application/json" },
                                          body: JSON.stringify({ type: "threads.list", params: {} }) });
  const first = await list();
  const firstSession = kit.describeApi(api).sessionId;
  if (mode === "expire") await new Promise((r) => setTimeout(r, 2200));
  else await fetch("/api/chatkit/session/cancel", { method: "POST", headers: { "Content-Type": "application/json" },
                                                    body: JSON.stringify({ session_id: firstSession }) });
  const second = await list();
  return { url: api.url, domainKey: api.domainKey, first: first.status, second: second.status,
           body: await second.json(), firstSession, events };
}
"""


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Iterator[BrokerProcess]:
    """One mock broker for both tests (a start is 1-4 s of CPU): neither creates threads, and
    each reads only the log lines written after it began."""
    tmp_path = tmp_path_factory.mktemp("kit-e2e")
    (tmp_path / "workflows.toml").write_text(WORKFLOWS)
    env = {"BROKER_LOG_FORMAT": "json", "BROKER_WORKFLOWS_FILE": str(tmp_path / "workflows.toml")}
    with broker_process(env, tmp_path, "--mock") as bp:
        yield bp


def backend_statuses(events: list[dict]) -> list[int]:
    return [
        e["status"]
        for e in events
        if e["type"] == "request" and e["url"].endswith("/chatkit/quick")
    ]


def test_an_expired_session_secret_is_renewed_before_the_next_request(tab: Tab, quick):
    tab.page.goto(quick.url + "/")
    result = tab.page.evaluate(SCENARIO, {"mode": "expire"})
    assert result["url"] == "/chatkit/quick"
    assert result["domainKey"] == "local-dev"
    assert (result["first"], result["second"]) == (200, 200)
    assert result["body"] == {"data": [], "has_more": False}
    refreshes = [e for e in result["events"] if e["type"] == "refresh"]
    assert [e["reason"] for e in refreshes] == ["the secret is about to expire"]
    assert backend_statuses(result["events"]) == [200, 200]  # never sent the stale secret


def test_a_cancelled_session_secret_gets_a_401_then_one_re_mint(tab: Tab, quick):
    seen = len(quick.logs().splitlines())
    tab.page.goto(quick.url + "/")
    result = tab.page.evaluate(SCENARIO, {"mode": "cancel"})
    assert (result["first"], result["second"]) == (200, 200)
    # the broker refused the cancelled secret; the kit minted once more and replayed
    assert backend_statuses(result["events"]) == [200, 401, 200]
    [refresh] = [e for e in result["events"] if e["type"] == "refresh"]
    assert refresh["reason"] == "the backend refused the secret (401)"
    assert refresh["sessionId"] != result["firstSession"]
    # the broker itself agrees: the first secret is dead, the new one answers
    logs = [json.loads(line) for line in quick.logs().splitlines()[seen:] if line.startswith("{")]
    statuses = [r.get("status") for r in logs if r.get("path") == "/chatkit/quick"]
    assert statuses == [200, 401, 200]
    assert httpx.get(quick.url + "/healthz").status_code == 200
