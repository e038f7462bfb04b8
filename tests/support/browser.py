"""Browser helpers for the ``browser`` and ``tab`` fixtures (``tests/conftest.py``): Debian's
``/usr/bin/chromium`` (never a downloaded browser), a tab that records its console, requests,
uncaught errors and CSP violations, and screenshots at desktop and phone width in
``test-artifacts/`` (gitignored).

Without Chromium or the ``playwright`` package the browser tests skip, except under ``CI``,
where they fail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .env import ROOT, need

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Route

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CHATKIT_JS = "https://cdn.platform.openai.com/deployments/chatkit/chatkit.js"
STAND_IN = (ROOT / "tests" / "chatkit_stand_in.js").read_text()
ARTIFACTS = ROOT / "test-artifacts"
VIEWPORTS = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}


@dataclass
class Tab:
    """One browser tab, with what its console said."""

    page: Page
    console: list[str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def shot(self, state: str) -> None:
        """Screenshots of the current state at each width, for a person to look at."""
        ARTIFACTS.mkdir(exist_ok=True)
        for name, size in VIEWPORTS.items():
            self.page.set_viewport_size(size)
            self.page.screenshot(path=ARTIFACTS / f"{state}-{name}.png", full_page=True)
        self.page.set_viewport_size(VIEWPORTS["desktop"])

    def stand_in(self) -> dict[str, Any]:
        return self.page.evaluate("JSON.parse(JSON.stringify(window.__chatkitStandIn ?? null))")


def serve_stand_in(route: Route) -> None:
    route.fulfill(body=STAND_IN, content_type="text/javascript")


def launch(playwright: Any) -> Browser:
    """Debian's Chromium, or a skip (a failure under CI) naming what is missing."""
    need(CHROMIUM.exists(), f"{CHROMIUM} is missing (apt-get install chromium)")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def open_tab(browser: Browser) -> tuple[Any, Tab]:
    """A fresh context and its tab, recording console lines, requests and problems."""
    context = browser.new_context(viewport=VIEWPORTS["desktop"])
    t = Tab(context.new_page())
    t.page.set_default_timeout(10_000)

    def on_console(message: ConsoleMessage) -> None:
        t.console.append(message.text)
        if "Content Security Policy" in message.text:
            t.problems.append(message.text)

    t.page.on("console", on_console)
    t.page.on("request", lambda r: t.requests.append(r))
    t.page.on("pageerror", lambda e: t.problems.append(f"uncaught error: {e}"))
    return context, t
