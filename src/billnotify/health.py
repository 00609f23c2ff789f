"""The operator's HTTP endpoint: /healthz, /readyz, /metrics (and inbound hooks)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from billnotify.metrics import Metrics

logger = logging.getLogger(__name__)

Readiness = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


class HealthServer:
    """An aiohttp server for liveness, readiness and metrics.

    Args:
        host: listen address.
        port: listen port (0 picks a free one; see :attr:`port` after start).
        readiness: returns (ready, details per check).
        metrics: the registry to export.
        refresh: called before each scrape to update gauges from the store.
        on_hook: ``POST /hooks/{source}`` (a platform webhook as a hint to poll at
            once); returns False for an unknown source.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        readiness: Readiness,
        metrics: Metrics,
        refresh: Callable[[], Awaitable[None]] | None = None,
        on_hook: Callable[[str], bool] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._readiness = readiness
        self._metrics = metrics
        self._refresh = refresh
        self._on_hook = on_hook
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_handler)
        app.router.add_post("/hooks/{source}", self._hook)
        return app

    async def start(self) -> None:
        """Listen."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets: Any = getattr(site._server, "sockets", None)
        if sockets:
            self.port = sockets[0].getsockname()[1]
        logger.info("health and metrics on http://%s:%d/", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        ready, checks = await self._readiness()
        self._metrics.ready.set(1 if ready else 0)
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status=200 if ready else 503,
        )

    async def _metrics_handler(self, _: web.Request) -> web.Response:
        if self._refresh is not None:
            try:
                await self._refresh()
            except Exception:  # a scrape must still answer with what it has
                logger.exception("refreshing metrics failed")
        return web.Response(
            body=self._metrics.render(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def _hook(self, request: web.Request) -> web.Response:
        source = request.match_info["source"]
        if self._on_hook is None or not self._on_hook(source):
            return web.json_response({"error": f"unknown source {source!r}"}, status=404)
        return web.json_response({"status": "poll scheduled"}, status=202)
