"""The operator console (SPEC §7.4): its routes, gates, login and live updates.

Mounted on the service's HTTP server (``health.py``) beside ``/healthz`` and the hooks.
Every page goes through :meth:`Console._page` (a session or the login page; security
headers), every action through :meth:`Console._action` (a session, this origin, the
session's CSRF token). What the pages show and do is in ``pages.py``; the actions are
the CLI's own functions (``cli/commands.py``), so a retry or a resolution is one code
path and one record whichever way an operator takes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from billnotify.config.models import Config
from billnotify.console.auth import (
    Guard,
    Session,
    clear_cookie,
    refused_login,
    secured,
    set_cookie,
)
from billnotify.console.overview import Running, read_overview
from billnotify.events import format_time
from billnotify.store.base import Store

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
LOCAL = "console:local"
"""Who actions are recorded as without a console token (loopback only)."""
_NAME = re.compile(r"[^A-Za-z0-9._@-]+")
_ALIVE_EVERY = 5.0
"""Seconds between two looks at whether a live stream's session is still open."""
_STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}

PageHandler = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]
ActionHandler = Callable[[web.Request, Session, Mapping[str, str]], Awaitable[tuple[str, str]]]
"""An action: (where to go next, what happened) from the request, session and form."""


def operator_name(raw: str) -> str:
    """``console:NAME`` from what a person typed at login (``console`` when nothing)."""
    name = _NAME.sub("-", raw.strip())[:40].strip("-")
    return f"console:{name}" if name else "console"


class Console:
    """The console's routes on an aiohttp application.

    Args:
        config: the configuration (rules, webhooks, ``[service]``).
        store: the state store.
        running: the running service's parts (pollers, publisher, rule handler).
        clock: the current UTC time.
        live_interval: seconds between two live updates of one stream.
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        running: Running | None,
        *,
        clock: Callable[[], datetime],
        live_interval: float = 1.0,
    ) -> None:
        self.config = config
        self.store = store
        self.running = running
        self.clock = clock
        self.live_interval = live_interval
        token = config.service.console_token
        self.guard = Guard(token.reveal() if token else None, store, clock)
        self.closing = asyncio.Event()
        """Set when the server shuts down: live streams end at once."""
        self._shared: tuple[float, dict[str, str]] | None = None
        self._reading = asyncio.Lock()
        self._logins = asyncio.Lock()
        self._env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._env.filters["time"] = lambda value: format_time(value) if value else ""

    def mount(self, app: web.Application) -> None:
        """Add the console's routes (and its shutdown hook) to ``app``."""
        from billnotify.console import pages

        views = pages.Pages(self)
        get, post = app.router.add_get, app.router.add_post
        get("/", self._page(views.overview))
        get("/events", self._page(views.events))
        get("/events/{id}", self._page(views.event))
        post("/events/{id}/replay", self._action(views.replay))
        get("/deliveries", self._page(views.deliveries))
        get("/deliveries/{id}", self._page(views.delivery))
        post("/deliveries/{id}/retry", self._action(views.retry))
        post("/deliveries/{id}/resolve", self._action(views.resolve))
        get("/endpoints", self._page(views.endpoints))
        post("/endpoints/{name}/enable", self._action(views.enable))
        get("/rules", self._page(views.rules))
        get("/live", self._live)
        get("/login", self._login_page)
        post("/login", self._login)
        post("/logout", self._action(self._logout))
        get("/static/{name}", self._static)
        get("/favicon.ico", self._no_icon)
        app.on_shutdown.append(self._shutdown)

    async def _shutdown(self, _app: web.Application) -> None:
        self.closing.set()

    # -- rendering -------------------------------------------------------------------
    def render(
        self, template: str, session: Session | None, status: int = 200, **context: Any
    ) -> web.Response:
        """A page from ``templates/`` with the common context (session, CSRF token)."""
        flash = ""
        if session is not None:
            flash, session.flash = session.flash, ""
        html = self._env.get_template(template).render(
            session=session,
            csrf=session.csrf if session else "",
            who=session.who if session else "",
            needs_login=self.guard.needs_login,
            service=self.config.service.name,
            flash=flash,
            **context,
        )
        return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")

    # -- gates -----------------------------------------------------------------------
    def _page(self, handler: PageHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def page(request: web.Request) -> web.StreamResponse:
            session = await self.guard.session(request)
            fresh = None
            if session is None:
                if self.guard.needs_login:
                    return secured(web.Response(status=303, headers={"Location": "/login"}))
                session = fresh = await self.guard.open_session(LOCAL)
            response = await handler(request, session)
            await self.guard.keep_flash(session)
            if fresh is not None:
                set_cookie(response, fresh)
            return secured(response)

        return page

    def _action(
        self, handler: ActionHandler
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def action(request: web.Request) -> web.StreamResponse:
            session = await self.guard.session(request)
            if session is None:
                return _refused(401, "log in first")
            if not self.guard.same_origin(request):
                logger.warning("console: refused a %s from another origin", request.path)
                return _refused(403, "request from another origin")
            form = await request.post()
            fields = {key: str(value) for key, value in form.items() if isinstance(value, str)}
            if not self.guard.csrf_ok(session, fields.get("csrf", "")):
                logger.warning("console: refused a %s without a valid CSRF token", request.path)
                return _refused(403, "missing or wrong CSRF token: reload the page")
            location, message = await handler(request, session, fields)
            session.flash = message
            await self.guard.keep_flash(session)
            response = web.Response(status=303, headers={"Location": location})
            if location == "/login":
                clear_cookie(response)
            return secured(response)

        return action

    # -- login -----------------------------------------------------------------------
    async def _login_page(self, request: web.Request) -> web.StreamResponse:
        if not self.guard.needs_login or await self.guard.session(request) is not None:
            return secured(web.Response(status=303, headers={"Location": "/"}))
        return secured(self.render("login.html.j2", None, error=""))

    async def _login(self, request: web.Request) -> web.StreamResponse:
        if not self.guard.needs_login:
            return secured(web.Response(status=303, headers={"Location": "/"}))
        if not self.guard.same_origin(request):
            return _refused(403, "request from another origin")
        form = await request.post()
        offered, name = form.get("token", ""), form.get("name", "")
        async with self._logins:  # one guess at a time, each refusal slowed: ~2 a second
            if not isinstance(offered, str) or not self.guard.token_matches(offered):
                logger.warning("console: refused a login from %s", request.remote)
                await refused_login()
                error = "That is not the console token."
                return secured(self.render("login.html.j2", None, 401, error=error))
        who = operator_name(name if isinstance(name, str) else "")
        session = await self.guard.open_session(who)
        logger.info("console: %s logged in from %s", session.who, request.remote)
        response = web.Response(status=303, headers={"Location": "/"})
        set_cookie(response, session)
        return secured(response)

    async def _logout(
        self, _request: web.Request, session: Session, _form: Mapping[str, str]
    ) -> tuple[str, str]:
        await self.guard.close_session(session)
        return ("/login" if self.guard.needs_login else "/"), "logged out"

    # -- static files and live updates -----------------------------------------------
    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = STATIC / name
        if "/" in name or path.suffix not in _STATIC_TYPES or not path.is_file():
            raise web.HTTPNotFound()
        response = web.Response(
            body=path.read_bytes(),
            content_type=_STATIC_TYPES[path.suffix],
            headers={"Cache-Control": "no-cache"},
        )
        return secured(response, data=False)

    async def _no_icon(self, _request: web.Request) -> web.StreamResponse:
        return secured(web.Response(status=204), data=False)

    async def _live(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: the overview's values, and the events logged since
        ``?after=SEQ``, whenever they change (a comment line keeps the stream alive)."""
        session = await self.guard.session(request)
        if session is None:
            return _refused(401, "log in first")
        after = _int(request.query.get("after"))
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
        )
        secured(response)
        await response.prepare(request)
        sent: dict[str, str] = {}
        checked = time.monotonic()
        try:
            while not self.closing.is_set():
                if time.monotonic() - checked >= _ALIVE_EVERY:
                    # logged out (here or by another instance) or ended: the stream ends
                    if not await self.guard.alive(session):
                        break
                    checked = time.monotonic()
                chunk = await self._live_chunk(sent, after)
                if after is not None and chunk[1] is not None:
                    after = chunk[1]
                await response.write(chunk[0] or b": still here\n\n")
                await self._pause(events=after is not None)
        except ConnectionError:
            pass  # the browser went away
        return response

    async def _pause(self, *, events: bool) -> None:
        """One live interval, cut short by the server stopping or (for a stream that
        follows the log) by events appended."""
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self.closing.wait())]
        if events:
            waits.append(asyncio.ensure_future(_appended(self.store)))
        try:
            await asyncio.wait(waits, timeout=self.live_interval, return_when="FIRST_COMPLETED")
        finally:
            for waiting in waits:
                waiting.cancel()

    async def _live_values(self) -> dict[str, str]:
        """The overview's live values, read at most once per interval for all streams
        together (a read counts the whole ledger: ``docs/performance.md``)."""
        async with self._reading:
            now = time.monotonic()
            if self._shared is None or now - self._shared[0] >= self.live_interval * 0.9:
                ttl = self.config.service.lease_ttl
                overview = await read_overview(self.store, self.running, self.clock(), ttl)
                self._shared = (now, overview.live())
            return self._shared[1]

    async def _live_chunk(
        self, sent: dict[str, str], after: int | None
    ) -> tuple[bytes, int | None]:
        """What changed since ``sent`` (updated), and the events after ``after``."""
        values = await self._live_values()
        changed = {k: v for k, v in values.items() if sent.get(k) != v}
        sent.update(changed)
        out = b""
        if changed:
            out += b"event: overview\ndata: " + json.dumps(changed).encode() + b"\n\n"
        newest = None
        if after is not None:
            events = await self.store.read_events(after, 50)
            if events:
                newest = events[-1].seq
                rows = [
                    {
                        "seq": s.seq,
                        "id": s.event.id,
                        "time": s.event.time,
                        "type": s.event.type,
                        "source": s.event.source_name,
                        "subject": s.event.subject,
                    }
                    for s in events
                ]
                out += b"event: events\ndata: " + json.dumps(rows).encode() + b"\n\n"
        return out, newest


async def _appended(store: Store) -> None:
    async with store.appended:
        await store.appended.wait()


def _int(value: str | None) -> int | None:
    try:
        return None if value is None else max(0, int(value))
    except ValueError:
        return None


def _refused(status: int, why: str) -> web.StreamResponse:
    """A refusal that shows no data."""
    return secured(web.Response(status=status, text=f"{why}\n", content_type="text/plain"))
