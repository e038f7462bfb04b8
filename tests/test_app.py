"""The composition root's process-wide tuning: under ``serve`` the garbage collector is set up
once startup is done (docs/performance.md); an app built inside another program leaves it be."""

from __future__ import annotations

import gc

from broker.app import GC_THRESHOLD, create_app

from .support import app_client


async def test_an_embedded_app_leaves_the_collector_alone(make_settings, openai):
    before = gc.get_threshold(), gc.get_freeze_count()
    async with app_client(make_settings()) as c:
        assert (await c.get("/healthz")).status_code == 200
    assert (gc.get_threshold(), gc.get_freeze_count()) == before


async def test_serve_freezes_the_startup_heap_and_collects_young_objects_less_often(
    make_settings, openai
):
    threshold = gc.get_threshold()
    app = create_app(make_settings(), settle_heap=True)
    try:
        async with app.router.lifespan_context(app):
            assert gc.get_threshold()[0] == GC_THRESHOLD
            assert gc.get_threshold()[1:] == threshold[1:]
            assert gc.get_freeze_count() > 1000  # the modules and the app built at startup
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
