"""Serving a registry in Prometheus' text format, on aiohttp."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

if TYPE_CHECKING:
    from aiohttp import web
    from prometheus_client import CollectorRegistry

__all__ = ["metrics_app", "metrics_handler", "render"]


def render(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus' text format 0.0.4 (what every Prometheus 2.x reads)."""
    return generate_latest(registry)


def metrics_handler(
    registry: CollectorRegistry,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler serving ``registry``: ``app.router.add_get("/metrics", handler)``."""
    from aiohttp import web

    async def handle_metrics(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=render(registry), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4}
        )

    return handle_metrics


def metrics_app(registry: CollectorRegistry) -> web.Application:
    """A small aiohttp app with ``GET /metrics``, for a listener of its own (port 8080)."""
    from aiohttp import web

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry))
    return app
