"""Who may use the console: the login, sessions, CSRF tokens and the security headers.

With ``[service] console_token`` the console asks for the token once (``POST /login``,
compared in constant time) and keeps a session cookie: random, ``HttpOnly``,
``SameSite=Strict``, ``Path=/``. The cookie carries no ``Secure`` flag: the service
serves plain HTTP (put a TLS proxy in front to reach it across a network). Without a
token (served only on a loopback address) every visitor gets a session at once, so
that state-changing requests still carry a CSRF token: another site open in the same
browser cannot make it act.

Sessions live in the store (:class:`~billnotify.store.base.ConsoleSessions`), so a
restart logs nobody out and every instance on one PostgreSQL database accepts a session
another one opened. The store holds the SHA-256 of the cookie, never the cookie; the
CSRF token is an HMAC of the cookie (nothing to store); and a *mark*, an HMAC of the
cookie keyed by the console token, ties the session to the token it was opened under:
change the token and every session is refused (and dropped when it next shows up). A
session ends after :data:`SESSION_IDLE` without a request or :data:`SESSION_MAX` after
its login, whichever comes first; ended ones are pruned at each login.

Every state-changing request is a ``POST`` carrying the session's CSRF token in its
form; its ``Origin``, when the browser sends one, must be this host. The token never
appears in a URL, a log line or a page.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from aiohttp import web

from billnotify.store.base import ConsoleSessions
from billnotify.store.records import ConsoleSession

logger = logging.getLogger(__name__)

COOKIE = "billnotify_console"
"""The session cookie's name."""
SESSION_IDLE = timedelta(hours=12)
"""How long a session lasts without a request."""
SESSION_MAX = timedelta(days=7)
"""How long a session lasts after its login, however busy."""
_SEEN_EVERY = timedelta(minutes=1)
"""A request marks its session seen only when the last mark is older than this: pages
read the store, and write to it about once a minute per session."""
_MAX_SESSIONS = 1000
"""Sessions kept at most (the least recently seen go first): a flood of logins cannot
grow the store."""
_FAILED_LOGIN_DELAY = 0.5
"""Seconds a refused login waits before answering (slows down guessing)."""

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""The console's Content-Security-Policy: its own files only, no inline script or style."""
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # not "no-referrer": with it, browsers send "Origin: null" on form posts
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
"""Headers on every console response."""
NO_STORE = {"Cache-Control": "no-store"}
"""Headers on every console response that holds data (all but the static files)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Session:
    """A logged-in browser, as one request sees it.

    Attributes:
        id: the cookie's value (only the browser and this request hold it).
        csrf: the token its state-changing requests carry.
        who: how its actions are recorded (``console:NAME``).
        flash: what the last action did, shown once on the next page.
        shown: the flash this request read from the store (cleared there once shown).
    """

    id: str
    csrf: str
    who: str
    flash: str = ""
    shown: str = ""

    @property
    def key(self) -> str:
        """What the store keeps it under."""
        return session_key(self.id)


def session_key(session_id: str) -> str:
    """The SHA-256 (hex) of a session id: the store's key, which opens nothing."""
    return hashlib.sha256(session_id.encode()).hexdigest()


def csrf_token(session_id: str) -> str:
    """A session's CSRF token: an HMAC of its id (so no process needs to store it)."""
    mac = hmac.new(session_id.encode(), b"billnotify console csrf", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def token_mark(token: str | None, session_id: str) -> str:
    """What ties a session to the console token it was opened under (empty without a
    token). Keyed by the session id too, so the store's rows test no token guess."""
    if token is None:
        return ""
    mac = hmac.new(token.encode(), b"session:" + session_id.encode(), hashlib.sha256)
    return mac.hexdigest()[:32]


class Guard:
    """Sessions and the checks every console request goes through.

    Args:
        token: the console token (None: no login, loopback only).
        store: where the sessions live.
        clock: the current UTC time (shared by every process on the store).
        idle: how long a session lasts without a request.
        lasts: how long a session lasts after its login.
    """

    def __init__(
        self,
        token: str | None,
        store: ConsoleSessions,
        clock: Callable[[], datetime],
        *,
        idle: timedelta = SESSION_IDLE,
        lasts: timedelta = SESSION_MAX,
    ) -> None:
        self._token = token
        self._store = store
        self._clock = clock
        self._idle = idle
        self._lasts = lasts

    @property
    def needs_login(self) -> bool:
        """Whether visitors must log in (a token is configured)."""
        return self._token is not None

    def token_matches(self, offered: str) -> bool:
        """Whether ``offered`` is the console token (constant time)."""
        if self._token is None:
            return False
        return hmac.compare_digest(offered.encode(), self._token.encode())

    async def open_session(self, who: str) -> Session:
        """A new session (after a login, or at once without a token), kept in the store
        after the ended ones are pruned."""
        now = self._clock()
        await self._store.prune_console_sessions(now, now - self._idle, _MAX_SESSIONS - 1)
        session_id = secrets.token_urlsafe(32)
        mark = token_mark(self._token, session_id)
        kept = ConsoleSession(session_key(session_id), who, mark, now, now, now + self._lasts)
        await self._store.add_console_session(kept)
        return Session(session_id, csrf_token(session_id), who)

    async def close_session(self, session: Session) -> None:
        """End a session (logout), for every process on the store."""
        await self._store.drop_console_session(session.key)

    async def session(self, request: web.Request) -> Session | None:
        """The request's live session, if its cookie names one (marked seen)."""
        cookie = request.cookies.get(COOKIE, "")
        if not cookie:
            return None
        now = self._clock()
        kept = await self._live(cookie, now)
        if kept is None:
            return None
        if now - kept.seen_at >= _SEEN_EVERY:
            await self._store.touch_console_session(kept.key, now)
        return Session(cookie, csrf_token(cookie), kept.who, kept.flash, kept.flash)

    async def alive(self, session: Session) -> bool:
        """Whether ``session`` is still open (a live stream ends when it is not)."""
        return await self._live(session.id, self._clock()) is not None

    async def keep_flash(self, session: Session) -> None:
        """Keep what the session's last action did for its next page, or forget a flash
        that this request showed."""
        if session.flash:
            await self._store.touch_console_session(session.key, self._clock(), session.flash)
        elif session.shown:
            await self._store.touch_console_session(session.key, self._clock(), "")

    async def _live(self, session_id: str, now: datetime) -> ConsoleSession | None:
        """The stored session of ``session_id`` if it has not ended; one that ended (idle,
        too old, opened under another token) is dropped."""
        kept = await self._store.get_console_session(session_key(session_id))
        if kept is None:
            return None
        mark = token_mark(self._token, session_id)
        if (
            now >= kept.expires_at
            or now - kept.seen_at >= self._idle
            or not hmac.compare_digest(kept.mark.encode(), mark.encode())
        ):
            await self._store.drop_console_session(kept.key)
            return None
        return kept

    @staticmethod
    def csrf_ok(session: Session, offered: str) -> bool:
        """Whether a form's CSRF token is the session's (constant time)."""
        return bool(offered) and hmac.compare_digest(offered.encode(), session.csrf.encode())

    @staticmethod
    def same_origin(request: web.Request) -> bool:
        """No ``Origin`` header, or this host's own (``http://HOST:PORT``)."""
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        return origin in (f"http://{request.host}", f"https://{request.host}")


def set_cookie(response: web.StreamResponse, session: Session) -> None:
    """Give the browser the session cookie (``HttpOnly``, ``SameSite=Strict``)."""
    response.set_cookie(COOKIE, session.id, httponly=True, samesite="Strict", path="/")


def clear_cookie(response: web.StreamResponse) -> None:
    """Make the browser forget the session cookie."""
    response.del_cookie(COOKIE, path="/")


async def refused_login() -> None:
    """Wait a little before saying a login was refused."""
    await asyncio.sleep(_FAILED_LOGIN_DELAY)


def secured(response: web.StreamResponse, *, data: bool = True) -> web.StreamResponse:
    """``response`` with the console's security headers (and no-store when ``data``)."""
    response.headers.update(SECURITY_HEADERS)
    if data:
        response.headers.update(NO_STORE)
    return response
