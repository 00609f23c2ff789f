"""The operator's HTTP endpoint: /healthz, /readyz, /metrics, inbound hooks, the console."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiohttp import web

from billnotify.hooks import MAX_BODY, HookAuth
from billnotify.metrics import Metrics

logger = logging.getLogger(__name__)

Readiness = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
HeldLeases = Callable[[], Sequence[str]]
"""The names of the leases this process holds now (``poll:acme/invoices``, ``publish``)."""

_LINGER = 2.0
"""Seconds the server still reads (and drops) of a refused body, so the client sees the
413 instead of a reset; then the connection closes."""
_REPORT_EVERY = 60.0
"""Seconds between two log lines about refused hooks of one source (a flood is one line)."""


class HealthServer:
    """An aiohttp server for liveness, readiness, metrics and inbound platform hooks.

    Args:
        host: listen address.
        port: listen port (0 picks a free one; see :attr:`port` after start).
        readiness: returns (ready, details per check).
        metrics: the registry to export.
        refresh: called before each scrape to update gauges from the store.
        hooks: the sources that accept ``POST /hooks/{source}`` (a platform webhook as
            a hint to poll at once), each with its check; any other source answers 404.
        on_hook: called with the source of each accepted hook.
        hook_read_timeout: seconds a hook's body may take to arrive (a body trickled in
            byte by byte must not hold a connection for long): 408 after that.
        instance: this process's name, which ``/readyz`` reports (SPEC §7.1).
        leases: the leases this process holds, which ``/readyz`` lists.
        console: adds the operator console's routes (SPEC §7.4) to the application.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        readiness: Readiness,
        metrics: Metrics,
        refresh: Callable[[], Awaitable[None]] | None = None,
        hooks: Mapping[str, HookAuth] | None = None,
        on_hook: Callable[[str], None] | None = None,
        hook_read_timeout: float = 10.0,
        instance: str | None = None,
        leases: HeldLeases | None = None,
        console: Callable[[web.Application], None] | None = None,
    ) -> None:
        self._console = console
        self.instance = instance
        self._leases = leases
        self.host = host
        self.port = port
        self._readiness = readiness
        self._metrics = metrics
        self._refresh = refresh
        self._hooks = dict(hooks or {})
        self._on_hook = on_hook
        self._hook_read_timeout = hook_read_timeout
        self._refused: dict[str, tuple[float, int]] = {}
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_handler)
        app.router.add_post("/hooks/{source}", self._hook)
        if self._console is not None:
            self._console(app)
        return app

    async def start(self) -> None:
        """Listen."""
        self._runner = web.AppRunner(self.app(), access_log=None, lingering_time=_LINGER)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets: Any = getattr(site._server, "sockets", None)
        if sockets:
            self.port = sockets[0].getsockname()[1]
        logger.info("health and metrics on http://%s:%d/", self.host, self.port)
        if self._console is not None:
            logger.info("operator console on http://%s:%d/", self.host, self.port)

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
        body: dict[str, Any] = {"status": "ready" if ready else "not ready"}
        if self.instance is not None:
            body["instance"] = self.instance
            body["leases"] = sorted(self._leases()) if self._leases is not None else []
        body["checks"] = checks
        return web.json_response(body, status=200 if ready else 503)

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
        # Unknown sources and sources without a hook_secret look the same from outside.
        source = request.match_info["source"]
        auth = self._hooks.get(source)
        if auth is None or self._on_hook is None:
            return web.json_response({"error": "not found"}, status=404)
        length = request.content_length
        if length is not None and length > MAX_BODY:
            return _too_large()
        if not auth.needs_body and (reason := auth.refusal(request.headers, b"")):
            return self._refuse(source, reason)
        try:
            async with asyncio.timeout(self._hook_read_timeout):
                body = await _read_capped(request, MAX_BODY)
        except TimeoutError:
            return _closing(408, "the body took too long")
        if body is None:
            return _too_large()
        if auth.needs_body and (reason := auth.refusal(request.headers, body)):
            return self._refuse(source, reason)
        self._on_hook(source)
        return web.json_response({"status": "poll scheduled"}, status=202)

    def _refuse(self, source: str, reason: str) -> web.Response:
        now = time.monotonic()
        previous = self._refused.get(source)
        if previous is None or now - previous[0] >= _REPORT_EVERY:
            logger.warning(
                "refused a hook for source %s: %s (%d others refused since the last report)",
                source,
                reason,
                previous[1] if previous else 0,
            )
            self._refused[source] = (now, 0)
        else:
            self._refused[source] = (previous[0], previous[1] + 1)
        return web.json_response({"error": "unauthorized"}, status=401)


async def _read_capped(request: web.Request, limit: int) -> bytes | None:
    """The body, or None once it grows past ``limit`` (nothing more is read)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(limit + 1 - size):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large() -> web.Response:
    return _closing(413, f"body larger than {MAX_BODY} bytes")


def _closing(status: int, error: str) -> web.Response:
    """An error answer after which the connection closes (its body was not all read)."""
    response = web.json_response({"error": error}, status=status)
    response.force_close()
    return response
