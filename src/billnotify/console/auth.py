"""Who may use the console: the login, sessions, CSRF tokens and the security headers.

With ``[service] console_token`` the console asks for the token once (``POST /login``,
compared in constant time) and keeps a session cookie: random, ``HttpOnly``,
``SameSite=Strict``, ``Path=/``. The cookie carries no ``Secure`` flag: the service
serves plain HTTP (put a TLS proxy in front to reach it across a network). Without a
token (served only on a loopback address) every visitor gets a session at once, so
that state-changing requests still carry a CSRF token: another site open in the same
browser cannot make it act.

Every state-changing request is a ``POST`` carrying the session's CSRF token in its
form; its ``Origin``, when the browser sends one, must be this host. The token never
appears in a URL, a log line or a page. Sessions live in this process: a restart logs
everyone out.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

logger = logging.getLogger(__name__)

COOKIE = "billnotify_console"
"""The session cookie's name."""
SESSION_IDLE = 12 * 3600.0
"""Seconds a session lasts without a request."""
_MAX_SESSIONS = 1000
"""Sessions kept at most (the oldest go first): a flood of logins cannot grow memory."""
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
    """A logged-in browser.

    Attributes:
        id: the cookie's value.
        csrf: the token its state-changing requests carry.
        who: how its actions are recorded (``console:NAME``).
        seen: monotonic time of its latest request.
        flash: what the last action did, shown once on the next page.
    """

    id: str
    csrf: str
    who: str
    seen: float = field(default_factory=time.monotonic)
    flash: str = ""


class Guard:
    """Sessions and the checks every console request goes through.

    Args:
        token: the console token (None: no login, loopback only).
        idle: seconds a session lasts without a request.
    """

    def __init__(self, token: str | None, *, idle: float = SESSION_IDLE) -> None:
        self._token = token
        self._idle = idle
        self._sessions: dict[str, Session] = {}

    @property
    def needs_login(self) -> bool:
        """Whether visitors must log in (a token is configured)."""
        return self._token is not None

    def token_matches(self, offered: str) -> bool:
        """Whether ``offered`` is the console token (constant time)."""
        if self._token is None:
            return False
        return hmac.compare_digest(offered.encode(), self._token.encode())

    def open_session(self, who: str) -> Session:
        """A new session (after a login, or at once without a token)."""
        if len(self._sessions) >= _MAX_SESSIONS:
            oldest = min(self._sessions.values(), key=lambda s: s.seen)
            del self._sessions[oldest.id]
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), who)
        self._sessions[session.id] = session
        return session

    def close_session(self, session: Session) -> None:
        """Forget a session (logout)."""
        self._sessions.pop(session.id, None)

    def session(self, request: web.Request) -> Session | None:
        """The request's live session, if its cookie names one."""
        cookie = request.cookies.get(COOKIE, "")
        session = self._sessions.get(cookie) if cookie else None
        if session is None:
            return None
        now = time.monotonic()
        if now - session.seen > self._idle:
            del self._sessions[session.id]
            return None
        session.seen = now
        return session

    def alive(self, session: Session) -> bool:
        """Whether ``session`` is still open (a live stream ends when it is not)."""
        return self._sessions.get(session.id) is session

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
