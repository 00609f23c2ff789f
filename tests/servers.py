"""Real servers on loopback for the tests (an SMTP sink, a webhook receiver) and helpers.

``SmtpSink`` is aiosmtpd's threaded controller with a handler that records every
accepted message and can refuse recipients, answer DATA with a chosen reply, or stall
before answering DATA (a server that took the message and never said so).

``serving(app)`` serves any aiohttp app on a free loopback port for a ``with`` block.

``WebhookReceiver`` is an aiohttp app with one behaviour per path:

    /ok                 200 and records the request
    /status/{code}      that status (``Retry-After`` from ``?retry_after=``)
    /redirect           302 to /ok
    /drip               200, then one byte per second for ever
    /flaky              503 (Retry-After: 1) the first time, 200 afterwards

Configs: ``sim_source(sim)`` is a billing-platform source polling a simulator;
``toml_config(raw)`` writes a config dict as TOML; ``PYTHON`` runs ``billnotify``.

Helpers: ``free_port()``; ``running(service)`` runs ``service.run()`` for a ``with``
block; ``wait_for(predicate)`` waits on a condition with a deadline;
``Sleeps`` is an injected ``sleep`` that records the delays instead of waiting; ``Clock``
is an injected ``now()`` that a test moves by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import sys
import threading
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from yarl import URL

from billnotify.simulator import Simulator

VENV_PYTHON = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
"""The interpreter of the project's venv (where ``billnotify`` is installed)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Return once ``predicate()`` is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(
    service: Any, *, connected: float | None = None
) -> AsyncIterator[asyncio.Task[Any]]:
    """Run ``service.run()`` in a task for the block; cancel it (a clean stop) on exit.

    Args:
        service: anything with ``async def run()`` (a publisher, a worker).
        connected: first wait up to this many seconds for ``service.wait_connected``.
    """
    task = asyncio.create_task(service.run())
    try:
        if connected is not None:
            await service.wait_connected(connected)
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Sleeps(list[float]):
    """An injected ``sleep`` that records the delays instead of waiting."""

    async def __call__(self, delay: float) -> None:
        self.append(delay)


class Clock:
    """An injected ``now()`` that only moves when the test moves it.

    Args:
        now: the time it starts at; ``clock.now += timedelta(...)`` or
            ``clock.advance(seconds)`` moves it.
    """

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward."""
        self.now += timedelta(seconds=seconds)


# -- configs -----------------------------------------------------------------------------


def sim_source(sim: Simulator, name: str = "acme", **fields: Any) -> dict[str, Any]:
    """A ``billing_platform`` source polling ``sim`` with its key (``fields`` added)."""
    return {
        "name": name,
        "kind": "billing_platform",
        "base_url": sim.billing_base_url,
        "api_key": sim.api_key,
        **fields,
    }


def toml_config(raw: dict[str, Any]) -> str:
    """A config as TOML, for tests that start ``billnotify run`` with a file.

    A small writer: tables, arrays of tables one level deep (``[[rules.actions]]``),
    inline tables and arrays of values; it checks its output reads back as ``raw``.
    """

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return str(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        raise TypeError(v)

    lines: list[str] = []
    for table, body in raw.items():
        rows = body if isinstance(body, list) else [body]
        for row in rows:
            lines.append(f"[[{table}]]" if isinstance(body, list) else f"[{table}]")
            nested = {
                k: v for k, v in row.items() if isinstance(v, list) and v and isinstance(v[0], dict)
            }
            for key, v in row.items():
                if key not in nested:
                    lines.append(f"{key} = {value(v)}")
            for key, items in nested.items():
                for item in items:
                    lines.append(f"[[{table}.{key}]]")
                    lines += [f"{k} = {value(x)}" for k, x in item.items()]
            lines.append("")
    text = "\n".join(lines)
    assert tomllib.loads(text) == raw, text  # the writer is only as good as this check
    return text


# -- SMTP --------------------------------------------------------------------------------


@dataclass
class Received:
    """One message the sink accepted."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str]
    peer: Any = None
    """The client's (address, port): the same port means a reused connection."""

    @property
    def message(self) -> EmailMessage:
        """The parsed message."""
        parsed = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class _Handler:
    messages: list[Received] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    """recipient -> reply (e.g. ``"550 no such user"``)."""
    data_reply: str | None = None
    data_stall: float = 0.0
    """Seconds to wait (after storing the message) before answering DATA."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.refuse.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply:
            return self.data_reply
        content = envelope.original_content or b""
        with self.lock:
            self.messages.append(
                Received(
                    str(envelope.mail_from),
                    list(envelope.rcpt_tos),
                    bytes(content),
                    list(envelope.mail_options),
                    session.peer,
                )
            )
        if self.data_stall:
            await asyncio.sleep(self.data_stall)  # the server's behaviour, not a test wait
        return f"250 2.0.0 queued as Q{len(self.messages)}"


class SmtpSink:
    """An aiosmtpd server on 127.0.0.1 recording accepted messages.

    Args:
        tls: a server SSL context for implicit TLS.
        starttls: a server SSL context offered through STARTTLS (required).
        credentials: (username, password) required through AUTH (after STARTTLS when
            ``starttls`` is given).
        port: the port (a free one by default).
    """

    def __init__(
        self,
        *,
        tls: ssl.SSLContext | None = None,
        starttls: ssl.SSLContext | None = None,
        credentials: tuple[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.handler = _Handler()
        self.port = port or free_port()
        self._running = False
        self.host = "127.0.0.1"
        self.logins: list[str] = []
        kwargs: dict[str, Any] = {}
        if starttls is not None:
            kwargs.update(tls_context=starttls, require_starttls=True)
        if credentials is not None:
            kwargs.update(
                authenticator=self._authenticator(credentials),
                auth_required=True,
                auth_require_tls=starttls is not None,
            )
        self.controller = Controller(
            self.handler,
            hostname=self.host,
            port=self.port,
            ssl_context=tls,
            server_hostname="localhost",
            ready_timeout=5.0,
            **kwargs,
        )

    def _authenticator(self, credentials: tuple[str, str]) -> Any:
        def authenticate(
            server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
        ) -> AuthResult:
            if isinstance(data, LoginPassword):
                user, password = data.login.decode(), data.password.decode()
                if (user, password) == credentials:
                    self.logins.append(user)
                    return AuthResult(success=True)
            return AuthResult(success=False, handled=False)

        return authenticate

    @property
    def messages(self) -> list[Received]:
        """Messages accepted so far."""
        with self.handler.lock:
            return list(self.handler.messages)

    def start(self) -> SmtpSink:
        """Start serving."""
        self.controller.start()
        self._running = True
        return self

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._running:
            self._running = False
            self.controller.stop(no_assert=True)


# -- HTTP --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(app: web.Application, **runner_options: Any) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port; yields ``http://127.0.0.1:PORT``.

    Args:
        app: the application.
        **runner_options: further arguments of :class:`aiohttp.web.AppRunner`.
    """
    runner = web.AppRunner(app, access_log=None, **runner_options)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


# -- webhooks ----------------------------------------------------------------------------


@dataclass
class Hit:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    peer: tuple[str, int] | None = None
    """The client's address and port (the same port means a reused connection)."""


class WebhookReceiver:
    """An aiohttp webhook receiver on 127.0.0.1 (see the module docstring for paths)."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.drips = 0
        self._flaky_seen = False
        self._serving: contextlib.AsyncExitStack | None = None
        self.port = 0
        app = web.Application()
        app.router.add_post("/ok", self._ok)
        app.router.add_post("/status/{code}", self._status)
        app.router.add_post("/redirect", self._redirect)
        app.router.add_post("/drip", self._drip)
        app.router.add_post("/flaky", self._flaky)
        self.app = app

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        """``http://host:port/path``."""
        return f"http://{host}:{self.port}{path}"

    async def start(self) -> WebhookReceiver:
        """Start serving on a free port."""
        self._serving = contextlib.AsyncExitStack()
        base = await self._serving.enter_async_context(serving(self.app, handler_cancellation=True))
        self.port = int(URL(base).port or 0)
        return self

    async def stop(self) -> None:
        """Stop serving."""
        if self._serving is not None:
            await self._serving.aclose()
            self._serving = None

    async def _record(self, request: web.Request) -> None:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.hits.append(
            Hit(request.path, dict(request.headers), body, tuple(peer[:2]) if peer else None)
        )

    async def _ok(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"received": True})

    async def _status(self, request: web.Request) -> web.Response:
        await self._record(request)
        headers = {}
        if "retry_after" in request.query:
            headers["Retry-After"] = request.query["retry_after"]
        return web.Response(status=int(request.match_info["code"]), text="nope", headers=headers)

    async def _redirect(self, request: web.Request) -> web.Response:
        await self._record(request)
        raise web.HTTPFound("/ok")

    async def _drip(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        response = web.StreamResponse(status=200)
        response.content_type = "text/plain"
        await response.prepare(request)
        for _ in range(120):
            await response.write(b".")
            self.drips += 1
            await asyncio.sleep(1.0)  # the slow server's behaviour, not a test wait
        return response

    async def _flaky(self, request: web.Request) -> web.Response:
        await self._record(request)
        if not self._flaky_seen:
            self._flaky_seen = True
            return web.Response(status=503, headers={"Retry-After": "1"})
        return web.json_response({"ok": True})
