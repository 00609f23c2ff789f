"""Console sessions live in the store (SPEC §7.4 with §7.1): a restart on SQLite logs
nobody out, two instances on one PostgreSQL database accept each other's sessions (and
CSRF tokens) as a load balancer would mix them, a logout in one ends the session in the
other, a new console token logs everyone out, and a session ends when idle or too old.

Each console runs on a real aiohttp server on loopback over a real store (SQLite in a
process of its own, as the service runs it, or the session's private PostgreSQL); an
aiohttp client plays the browser, carrying only the cookie from one server to another.
Only time is played: a clock the test moves.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import pg
from billnotify.config import parse_config
from billnotify.console import Console
from billnotify.console.auth import COOKIE, SESSION_IDLE, SESSION_MAX
from billnotify.deliveries.base import DeliveryStatus
from billnotify.events import CloudEvent
from billnotify.store import NewDelivery, ProcessStore, Store
from billnotify.store.postgres import PgStore

TOKEN = "console-token-" + "Qm4vT8xLp2Rz7Wn5"
OTHER_TOKEN = "console-token-" + "Jd6Hs3Kc9Fy1Bg8N"
NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


class Clock:
    """The time every console of a test reads; the test moves it."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def _config(tmp_path: Path, token_env: str | None) -> Any:
    service: dict[str, Any] = {"name": "sessions", "state": "state.db", "http": "127.0.0.1:0"}
    if token_env is not None:
        service["console_token"] = f"env:{token_env}"
    raw = {
        "service": service,
        "mqtt": {"enabled": False},
        "sources": [
            {
                "name": "acme",
                "kind": "billing_platform",
                "base_url": "http://127.0.0.1:9",
                "api_key": "k",
            }
        ],
        "webhooks": [
            {
                "name": "ops",
                "url": "https://ops.example.com/hook",
                "secret": "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            }
        ],
        "rules": [
            {
                "name": "to-ops",
                "on": ["invoice.*"],
                "actions": [{"type": "webhook", "endpoint": "ops"}],
            }
        ],
    }
    return parse_config(raw, base_dir=tmp_path)


class Servers:
    """Consoles served on loopback, each over its own store; all stopped at the end."""

    def __init__(self, tmp_path: Path, clock: Clock) -> None:
        self.tmp_path = tmp_path
        self.clock = clock
        self.running: dict[str, tuple[web.AppRunner, Store]] = {}

    async def start(self, store: Store, token_env: str | None = "BN_TOKEN_A") -> str:
        """Open ``store`` and serve a console over it; returns its URL."""
        await store.open()
        console = Console(
            _config(self.tmp_path, token_env), store, None, clock=self.clock, live_interval=0.05
        )
        app = web.Application()
        console.mount(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}"
        self.running[url] = (runner, store)
        return url

    def store(self, url: str) -> Store:
        """The store of the console at ``url``."""
        return self.running[url][1]

    async def stop(self, url: str) -> None:
        """Stop the console at ``url`` and close its store (a restart's first half)."""
        runner, store = self.running.pop(url)
        await runner.cleanup()
        await store.close()

    async def close(self) -> None:
        for runner, store in self.running.values():
            await runner.cleanup()
            await store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def servers(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Servers]:
    monkeypatch.setenv("BN_TOKEN_A", TOKEN)
    monkeypatch.setenv("BN_TOKEN_B", OTHER_TOKEN)
    running = Servers(tmp_path, clock)
    try:
        yield running
    finally:
        await running.close()


def _browser(cookie: str | None = None) -> aiohttp.ClientSession:
    """A browser holding only ``cookie`` (none: a fresh one), whichever server it asks."""
    headers = {"Cookie": f"{COOKIE}={cookie}"} if cookie else None
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), headers=headers)


async def _login(url: str, token: str = TOKEN, name: str = "ann") -> str:
    """Log in at ``url``; returns the session cookie's value."""
    async with (
        _browser() as http,
        http.post(f"{url}/login", data={"token": token, "name": name}, allow_redirects=False) as r,
    ):
        assert (r.status, r.headers["Location"]) == (303, "/")
        return r.cookies[COOKIE].value


async def _who(url: str, cookie: str) -> str | None:
    """Who the console at ``url`` takes ``cookie`` for (None: sent to the login)."""
    async with _browser(cookie) as http, http.get(f"{url}/", allow_redirects=False) as r:
        if r.status == 303:
            assert r.headers["Location"] == "/login"
            return None
        assert r.status == 200
        found = re.search(r"console:[A-Za-z0-9._@-]+", await r.text())
        assert found, "the page names no operator"
        return found.group(0)


async def _csrf(url: str, cookie: str, path: str = "/") -> str:
    async with _browser(cookie) as http, http.get(url + path) as r:
        found = re.search(r'name="csrf" value="([^"]+)"', await r.text())
    assert found, "the page holds no CSRF token"
    return found.group(1)


async def _logout(url: str, cookie: str) -> None:
    csrf = await _csrf(url, cookie)
    form = {"csrf": csrf}
    async with (
        _browser(cookie) as http,
        http.post(f"{url}/logout", data=form, allow_redirects=False) as r,
    ):
        assert (r.status, r.headers["Location"]) == (303, "/login")


def _key(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


async def _uncertain(store: Store) -> str:
    """An event and an uncertain delivery of it in ``store``; returns the delivery id."""
    event = CloudEvent(
        id="evt_sessions_1",
        source="billnotify://acme",
        type="invoice.status_changed",
        subject="invoices/42",
        time="2026-11-21T10:00:00Z",
        data={"object": {"id": "42"}},
    )
    (stored,) = await store.commit("acme", [], [event])
    new = NewDelivery("to-ops", 0, "webhook", event.id, stored.seq, True, target="ops")
    await store.record_deliveries([new], "rules", stored.seq, NOW)
    await store.set_delivery_status(new.id, DeliveryStatus.UNCERTAIN, now=NOW, error="lost")
    return new.id


# -- SQLite: a restart logs nobody out ----------------------------------------------------
async def test_a_session_survives_a_restart_and_the_store_never_holds_its_cookie(
    servers: Servers, tmp_path: Path
) -> None:
    state = tmp_path / "state.db"
    url = await servers.start(ProcessStore(state, "one"))
    cookie = await _login(url)
    csrf = await _csrf(url, cookie)
    await servers.stop(url)

    url = await servers.start(ProcessStore(state, "one"))
    assert await _who(url, cookie) == "console:ann"
    assert await _csrf(url, cookie) == csrf  # the same session, the same token
    assert await _who(url, "not-" + cookie) is None

    with sqlite3.connect(state) as db:
        rows = db.execute("SELECT * FROM console_sessions").fetchall()
    assert [row[0] for row in rows] == [_key(cookie)]
    assert not any(cookie in str(v) or csrf in str(v) or TOKEN in str(v) for v in rows[0])


async def test_a_flash_is_shown_once_even_after_a_restart(servers: Servers, tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    url = await servers.start(ProcessStore(state, "one"))
    await _uncertain(servers.store(url))
    cookie = await _login(url)
    csrf = await _csrf(url, cookie, "/endpoints")
    async with (
        _browser(cookie) as http,
        http.post(f"{url}/endpoints/ops/enable", data={"csrf": csrf}, allow_redirects=False) as r,
    ):
        assert r.status == 303
    await servers.stop(url)
    url = await servers.start(ProcessStore(state, "one"))
    async with _browser(cookie) as http:
        async with http.get(f"{url}/endpoints") as r:
            assert "ops: is not disabled" in await r.text()
        async with http.get(f"{url}/endpoints") as r:
            assert "ops: is not disabled" not in await r.text()


# -- PostgreSQL: two instances, one set of sessions ----------------------------------------
@pytest.fixture
def database() -> str:
    return pg.shared().database()


async def test_two_instances_on_postgres_share_sessions_csrf_and_logout(
    servers: Servers, database: str
) -> None:
    a = await servers.start(PgStore(database, instance="a"))
    b = await servers.start(PgStore(database, instance="b"))
    delivery_id = await _uncertain(servers.store(a))

    cookie = await _login(a)
    assert await _who(b, cookie) == "console:ann"
    # a form from one instance's page is accepted by the other (behind a load balancer)
    csrf = await _csrf(a, cookie, f"/deliveries/{delivery_id}")
    form = {"csrf": csrf, "outcome": "sent", "reason": "customer confirmed"}
    async with _browser(cookie) as http:
        async with http.post(
            f"{b}/deliveries/{delivery_id}/resolve", data=form, allow_redirects=False
        ) as r:
            assert (r.status, r.headers["Location"]) == (303, f"/deliveries/{delivery_id}")
        async with http.get(f"{a}/deliveries/{delivery_id}") as r:
            page = await r.text()
        assert "resolve: uncertain -&gt; succeeded" in page  # b's flash, shown by a
    store = servers.store(b)
    (action,) = await store.operator_actions(delivery_id)
    assert (action.who, action.action) == ("console:ann", "resolve_sent")

    other = await _login(b, name="bob")
    async with _browser(other) as http, http.get(f"{a}/live") as stream:
        assert stream.status == 200
        await _logout(a, other)  # on the instance that serves the stream
        async with asyncio.timeout(15):
            await stream.content.read()  # the stream ends once its session has
    assert await _who(b, other) is None

    await _logout(b, cookie)
    assert await _who(a, cookie) is None
    assert await _who(b, cookie) is None
    async with (
        _browser(cookie) as http,
        http.post(f"{a}/endpoints/ops/enable", data={"csrf": csrf}) as r,
    ):
        assert r.status == 401


# -- the token -------------------------------------------------------------------------
async def test_a_new_console_token_logs_everyone_out(servers: Servers, tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    url = await servers.start(ProcessStore(state, "one"), "BN_TOKEN_A")
    ann, bob = await _login(url), await _login(url, name="bob")
    await servers.stop(url)

    url = await servers.start(ProcessStore(state, "one"), "BN_TOKEN_B")
    assert await _who(url, ann) is None
    assert await _who(url, bob) is None
    store = servers.store(url)
    assert await store.get_console_session(_key(ann)) is None  # dropped when it showed up
    carol = await _login(url, OTHER_TOKEN, "carol")
    assert await _who(url, carol) == "console:carol"
    await servers.stop(url)

    # back to the old token: the sessions opened under the new one end too
    url = await servers.start(ProcessStore(state, "one"), "BN_TOKEN_A")
    assert await _who(url, carol) is None
    assert await _who(url, bob) is None  # dropped above, not revived


async def test_without_a_token_a_session_opened_with_one_is_not_taken(
    servers: Servers, tmp_path: Path
) -> None:
    state = tmp_path / "state.db"
    url = await servers.start(ProcessStore(state, "one"))
    ann = await _login(url)
    await servers.stop(url)
    url = await servers.start(ProcessStore(state, "one"), None)  # loopback, no login
    assert await _who(url, ann) == "console:local"  # a fresh local session, not ann's


# -- time ------------------------------------------------------------------------------
async def test_a_session_ends_when_idle_and_when_too_old(
    servers: Servers, clock: Clock, tmp_path: Path
) -> None:
    url = await servers.start(ProcessStore(tmp_path / "state.db", "one"))
    store = servers.store(url)

    idle = await _login(url)
    clock.now += SESSION_IDLE - timedelta(minutes=1)
    assert await _who(url, idle) == "console:ann"  # a request keeps it going
    clock.now += SESSION_IDLE - timedelta(minutes=1)
    assert await _who(url, idle) == "console:ann"
    clock.now += SESSION_IDLE
    assert await _who(url, idle) is None
    assert await store.get_console_session(_key(idle)) is None

    busy = await _login(url)
    opened = clock.now
    while clock.now - opened < SESSION_MAX - timedelta(hours=6):
        clock.now += timedelta(hours=6)
        assert await _who(url, busy) == "console:ann", clock.now - opened
    clock.now = opened + SESSION_MAX
    assert await _who(url, busy) is None  # however busy, 7 days after its login


async def test_ended_sessions_are_pruned_at_the_next_login(
    servers: Servers, clock: Clock, tmp_path: Path
) -> None:
    url = await servers.start(ProcessStore(tmp_path / "state.db", "one"))
    store = servers.store(url)
    old = [await _login(url, name=f"op{n}") for n in range(3)]
    clock.now += timedelta(hours=2)
    kept = await _login(url, name="kept")
    clock.now += SESSION_IDLE - timedelta(hours=1)  # the first three are idle too long
    await _login(url, name="new")
    for cookie in old:
        assert await store.get_console_session(_key(cookie)) is None
    assert await _who(url, kept) == "console:kept"
