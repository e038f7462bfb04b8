"""``/chatkit-broker.js`` is served from the package with cache headers tied to the version."""

from __future__ import annotations

from broker import __version__
from broker.kit import PINNED, UNPINNED

from ..support import ROOT, app_client

KIT = (ROOT / "broker" / "static" / "chatkit-broker.js").read_bytes()


async def test_the_kit_is_served_with_a_short_cache_and_cors(make_settings):
    async with app_client(make_settings()) as c:
        r = await c.get("/chatkit-broker.js")
    assert r.status_code == 200
    assert r.content == KIT
    assert r.headers["content-type"].startswith("text/javascript")
    assert r.headers["cache-control"] == UNPINNED
    assert r.headers["x-chatkit-broker-version"] == __version__
    # a page on another origin imports it as a module script, which is fetched with CORS
    assert r.headers["access-control-allow-origin"] == "*"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "etag" in r.headers


async def test_the_versioned_url_may_be_cached_for_good(make_settings):
    async with app_client(make_settings()) as c:
        pinned = await c.get(f"/chatkit-broker.js?v={__version__}")
        stale = await c.get("/chatkit-broker.js?v=0.0.0-old")
        revalidated = await c.get(
            "/chatkit-broker.js", headers={"If-None-Match": pinned.headers["etag"]}
        )
    assert pinned.headers["cache-control"] == PINNED
    assert "immutable" in PINNED
    # another version's URL must not be pinned to this version's bytes
    assert stale.headers["cache-control"] == UNPINNED
    assert revalidated.status_code == 304


async def test_only_the_kit_gets_the_kit_headers(make_settings):
    async with app_client(make_settings()) as c:
        page = await c.get("/app.js")
        protocol = await c.get("/chatkit-protocol.js")
    assert page.status_code == protocol.status_code == 200
    for r in (page, protocol):
        assert "access-control-allow-origin" not in r.headers
        assert "x-chatkit-broker-version" not in r.headers


async def test_with_the_test_page_off_only_the_kit_is_served(make_settings):
    async with app_client(make_settings(BROKER_TEST_PAGE="0")) as c:
        kit = await c.get("/chatkit-broker.js")
        page = await c.get("/")
        app_js = await c.get("/app.js")
        post = await c.post("/chatkit-broker.js")
    assert kit.status_code == 200
    assert kit.content == KIT
    assert page.status_code == app_js.status_code == 404
    assert page.json()["error"]["code"] == "not_found"
    assert post.status_code == 405
